"""Open the built documentation site in headless Chromium and check what a reader sees.

Run with: pytest tests/site --site docs/_build/html   (or: tox -e docs)
"""
import html.parser
import re
import urllib.error
import urllib.request
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import pytest
from selenium.webdriver.support.ui import WebDriverWait

PAGES = ["index.html", "backward.html"]
MATH_TIMEOUT = 20

# Raw TeX left in the reader-visible text means MathJax did not typeset it.
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\frac|\\partial|\\sum|\\begin\{")

# Visible text minus code and typeset math: a clone of the body with those removed
# (a detached clone has no layout, so innerText falls back to the text content).
PROSE_JS = """
const body = document.body.cloneNode(true);
body.querySelectorAll('pre, code, mjx-container, script, style, .highlight')
    .forEach(n => n.remove());
return body.innerText;
"""

# Resolves once MathJax's first typeset pass is over (pages without math have no MathJax).
MATHJAX_DONE_JS = """
const done = arguments[arguments.length - 1];
if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) { done('no MathJax'); return; }
MathJax.startup.promise.then(() => done('ok'), e => done('MathJax failed: ' + e));
"""


def fetch(url):
    """(status, body) of url from the local server."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, ""


def open_page(driver, url):
    """Load url with an empty console log; wait until it and its math are done."""
    status, _ = fetch(url)   # the browser would happily render a 404 page
    assert status == 200, f"{url}: HTTP {status}"
    driver.get_log("browser")   # reading the log drains it: start each page from empty
    driver.get(url)
    # readyState 'complete' comes after the deferred MathJax script has run.
    WebDriverWait(driver, MATH_TIMEOUT).until(
        lambda d: d.execute_script("return document.readyState === 'complete'"),
        message=f"{url} never finished loading")
    state = driver.execute_async_script(MATHJAX_DONE_JS)
    assert state in ("ok", "no MathJax"), f"{url}: {state}"


@pytest.fixture(params=PAGES)
def page(request, driver, site_url):
    url = urljoin(site_url, request.param)
    open_page(driver, url)
    return url


def test_math_is_typeset_by_local_mathjax(driver, page, site_url):
    WebDriverWait(driver, MATH_TIMEOUT).until(
        lambda d: d.execute_script("return document.querySelectorAll('mjx-container').length > 0"),
        message=f"no typeset math (mjx-container) on {page}")
    raw = sorted({m.group() for m in RAW_TEX.finditer(driver.execute_script(PROSE_JS))})
    assert not raw, f"raw TeX visible on {page}: {raw}"
    # MathJax comes from the site itself (sphinx-mathjax-offline), never a CDN,
    # and nothing else the page fetched (fonts, components) left the server either.
    scripts = driver.execute_script("return [...document.scripts].map(s => s.src)")
    assert any("_static/mathjax" in s for s in scripts), f"no local MathJax on {page}: {scripts}"
    fetched = driver.execute_script(
        "return performance.getEntriesByType('resource').map(r => r.name)")
    foreign = [u for u in fetched if not u.startswith(site_url)]
    assert not foreign, f"{page} fetched resources from elsewhere: {foreign}"


BROKEN_IMAGES_JS = """
const imgs = [...document.images];
imgs.forEach(i => { i.loading = 'eager'; });   // lazy images below the fold load too
return imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);
"""


def test_images_load(driver, page):
    WebDriverWait(driver, MATH_TIMEOUT).until(
        lambda d: d.execute_script("return [...document.images].every(i => i.complete)"),
        message=f"images still loading on {page}")
    broken = driver.execute_script(BROKEN_IMAGES_JS)
    assert not broken, f"images that did not load on {page}: {broken}"


# Sphinx copies figures from docs/_generated/ into _images/ of the built site; an
# <img> pointing at _generated/ directly (raw HTML, html_extra_path) counts as well.
FIGURE_DIRS = ("_generated/", "_images/")


@pytest.mark.parametrize("name", ["forward.html", "why.html"])
def test_generated_figure_present(driver, site_url, name):
    url = urljoin(site_url, name)
    open_page(driver, url)
    imgs = driver.execute_script(
        "return [...document.images].map(i => [i.src, i.complete && i.naturalWidth > 0])")
    figures = [(src, ok) for src, ok in imgs if any(d in src for d in FIGURE_DIRS)]
    assert figures, f"no generated figure on {url}; images found: {imgs}"
    assert all(ok for _, ok in figures), f"figure did not load on {url}: {figures}"


class _Ids(html.parser.HTMLParser):
    """Every id (and legacy <a name>) of an HTML page: the valid fragment targets."""

    def __init__(self, text):
        super().__init__()
        self.ids = set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if value and (key == "id" or (tag == "a" and key == "name")):
                self.ids.add(value)


def test_internal_links_resolve(driver, page, site_url):
    # a.href is already resolved against the page by the browser.
    hrefs = driver.execute_script(
        "return [...document.querySelectorAll('a[href]')].map(a => a.href)")
    host = urlsplit(site_url).netloc
    targets = {}   # target URL without fragment -> fragments linked on it
    for href in hrefs:
        parts = urlsplit(href)
        if parts.scheme not in ("http", "https") or parts.netloc != host:
            continue   # mailto:, javascript:, other sites: not ours to check here
        target, frag = urldefrag(href)
        targets.setdefault(target, set()).update([unquote(frag)] if frag else [])
    assert targets, f"no internal links at all on {page}"

    problems = []
    for target, frags in sorted(targets.items()):
        if target == page:   # same page: the browser's DOM is the truth
            missing = [f for f in sorted(frags) if not driver.execute_script(
                "return !!document.getElementById(arguments[0])", f)]
            problems += [f"{page}#{f}: no such id on this page" for f in missing]
            continue
        status, body = fetch(target)
        if status != 200:
            problems.append(f"{target}: HTTP {status}")
        elif frags and target.endswith((".html", "/")):
            ids = _Ids(body).ids
            problems += [f"{target}#{f}: no such id" for f in sorted(frags - ids)]
    assert not problems, f"broken internal links on {page}:\n" + "\n".join(problems)


def test_no_console_errors(driver, page):
    # open_page drained the log before loading, so these entries are this page's own.
    errors = [e for e in driver.get_log("browser")
              if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
    assert not errors, f"console errors on {page}:\n" + "\n".join(e["message"] for e in errors)
