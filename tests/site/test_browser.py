"""Open every page of the built documentation site in headless Chromium, at a
1280x900 window, and check what a reader sees.

Run with: pytest tests/site --site docs/_build/html   (or: tox -e docs)

Each page is loaded once (with every collapsed solution opened) and fails on:
raw TeX outside typeset math, a literal backslash or dollar sign a reader would
see (in the prose, or printed inside typeset math, as ``\\_`` in ``\\text{}``
is), a code block or a page that scrolls sideways, an
image that does not load, a resource fetched from anywhere but the site, a
console error, or an internal link to nothing.
"""
import html.parser
import os
import re
import urllib.error
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
import urllib.request

import pytest
from selenium.webdriver.support.ui import WebDriverWait

MATH_TIMEOUT = 20

# Raw TeX left in the reader-visible text means MathJax did not typeset it:
# delimiters, a dollar before a backslash, or a control word.
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\$\\|\\begin\{|"
                     r"\\(?:frac|partial|sum|sqrt|hat|bar|text|mathrm|cdot|left|right|"
                     r"epsilon|sigma|gamma|beta|mu|delta|boxed|quad)(?![a-z])")

# Visible text minus code and typeset math: a clone of the body with those removed
# (a detached clone has no layout, so innerText falls back to the text content).
PROSE_JS = """
const body = document.body.cloneNode(true);
body.querySelectorAll('pre, code, mjx-container, script, style, .highlight')
    .forEach(n => n.remove());
return body.innerText;
"""

# A backslash or dollar sign the reader sees: in the prose (code and math
# removed), or inside typeset math, where MathJax prints what it did not
# interpret (``\_`` inside ``\text{}`` shows as a backslash and an underscore).
LITERAL_JS = PROSE_JS.replace("return body.innerText;", """
const found = [];
for (const m of body.innerText.matchAll(/.{0,30}[\\\\$].{0,30}/g)) found.push('prose: ' + m[0]);
document.querySelectorAll('mjx-container').forEach(c => {
    if (c.textContent.includes('\\\\')) found.push('math: ' + c.textContent.slice(0, 80));
});
return found;""")

# Resolves once MathJax's first typeset pass is over (pages without math have no MathJax).
MATHJAX_DONE_JS = """
const done = arguments[arguments.length - 1];
if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) { done('no MathJax'); return; }
MathJax.startup.promise.then(() => done('ok'), e => done('MathJax failed: ' + e));
"""

# Collapsed solutions (<details>) are opened, so their code is measured too.
OPEN_DETAILS_JS = "document.querySelectorAll('details').forEach(d => { d.open = true; });"

IMAGES_JS = """
const imgs = [...document.images];
imgs.forEach(i => { i.loading = 'eager'; });   // lazy images below the fold load too
return imgs.map(i => [i.src, i.complete && i.naturalWidth > 0]);
"""

# Boxes that scroll sideways: a code block wider than its box, and the page itself.
OVERFLOW_JS = """
const wide = [...document.querySelectorAll('pre')]
    .filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => p.scrollWidth + 'px in ' + p.clientWidth + 'px: '
              + p.textContent.split('\\n').reduce((a, b) => a.length >= b.length ? a : b));
const page = document.documentElement.scrollWidth - document.documentElement.clientWidth;
return [wide, page];
"""

# Every math element Sphinx wrote must hold MathJax's output.
UNTYPESET_JS = """
return [...document.querySelectorAll('.math')]
    .filter(m => !m.querySelector('mjx-container'))
    .map(m => m.textContent.slice(0, 80));
"""


def site_pages(site):
    """Every HTML page of the built site, relative to its root (sorted)."""
    skip = {"_static", "_sources", "_images"}
    pages = []
    for root, dirs, files in os.walk(site):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        pages += [os.path.relpath(os.path.join(root, f), site) for f in files
                  if f.endswith(".html")]
    return sorted(pages)


def pytest_generate_tests(metafunc):
    if "page_name" in metafunc.fixturenames:
        site = os.path.abspath(metafunc.config.getoption("--site"))
        pages = site_pages(site) if os.path.isdir(site) else []
        # no pages: one case, so that the site_dir fixture reports the missing site
        metafunc.parametrize("page_name", pages or ["index.html"], scope="session")


def fetch(url):
    """(status, body) of url from the local server."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, ""


def open_page(driver, url):
    """Load url with an empty console log; wait until it, its math and its images are done."""
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
    driver.execute_script(OPEN_DETAILS_JS)
    driver.execute_script(IMAGES_JS)
    WebDriverWait(driver, MATH_TIMEOUT).until(
        lambda d: d.execute_script("return [...document.images].every(i => i.complete)"),
        message=f"images still loading on {url}")


class Findings:
    """What one visit of a page saw, gathered once and asserted by the tests."""

    def __init__(self, driver, url, site_url):
        open_page(driver, url)
        self.url = url
        self.console = [e["message"] for e in driver.get_log("browser")
                        if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
        self.raw_tex = sorted({m.group() for m in
                               RAW_TEX.finditer(driver.execute_script(PROSE_JS))})
        self.untypeset = driver.execute_script(UNTYPESET_JS)
        self.literal = driver.execute_script(LITERAL_JS)
        self.scripts = driver.execute_script("return [...document.scripts].map(s => s.src)")
        self.math = driver.execute_script("return document.querySelectorAll('.math').length")
        self.images = driver.execute_script(IMAGES_JS)
        self.wide_code, self.page_overflow = driver.execute_script(OVERFLOW_JS)
        self.fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(r => r.name)")
        self.foreign = [u for u in self.fetched if not u.startswith(site_url)]
        self.hrefs = driver.execute_script(
            "return [...document.querySelectorAll('a[href]')].map(a => a.href)")
        self.ids = set(driver.execute_script(
            "return [...document.querySelectorAll('[id]')].map(e => e.id)"))
        self.uncopyable = driver.execute_script(
            "return [...document.querySelectorAll('div.highlight')]"
            ".filter(d => !d.querySelector('button.copybtn')).length")
        self.headings = driver.execute_script(
            "return [...document.querySelectorAll('h2')].map(h => h.textContent)")


_seen = {}


@pytest.fixture
def seen(driver, site_url, page_name):
    if page_name not in _seen:
        _seen[page_name] = Findings(driver, urljoin(site_url, page_name), site_url)
    return _seen[page_name]


def test_window_is_1280_wide(driver, site_url):
    open_page(driver, urljoin(site_url, "index.html"))
    assert driver.execute_script("return window.innerWidth") == 1280


def test_every_page_is_visited(site_dir):
    pages = site_pages(site_dir)
    chapters = [p for p in pages if p not in ("genindex.html", "search.html",
                                              "py-modindex.html")]
    assert len(chapters) >= 15, f"too few pages built: {pages}"
    # the Markdown that pages include is not a page of its own
    assert not [p for p in pages if p.startswith("_generated")], pages


def test_math_is_typeset_by_local_mathjax(seen):
    assert not seen.raw_tex, f"raw TeX visible on {seen.url}: {seen.raw_tex}"
    assert not seen.untypeset, f"math left untypeset on {seen.url}: {seen.untypeset}"
    if seen.math:
        # MathJax comes from the site itself (sphinx-mathjax-offline), never a CDN
        assert any("_static/mathjax" in s for s in seen.scripts), \
            f"no local MathJax on {seen.url}: {seen.scripts}"


def test_no_literal_backslash_or_dollar(seen):
    assert not seen.literal, f"a literal backslash or $ on {seen.url}:\n" + "\n".join(seen.literal)


def test_every_code_block_has_a_copy_button(seen):
    assert seen.uncopyable == 0, \
        f"{seen.uncopyable} code blocks without a copy button on {seen.url}"


def test_nothing_fetched_from_the_network(seen):
    assert seen.fetched, f"no resources recorded on {seen.url}"
    assert not seen.foreign, f"{seen.url} fetched resources from elsewhere: {seen.foreign}"


def test_images_load(seen):
    broken = [src for src, ok in seen.images if not ok]
    assert not broken, f"images that did not load on {seen.url}: {broken}"


def test_no_code_block_scrolls_sideways(seen):
    assert not seen.wide_code, \
        f"code blocks wider than their box on {seen.url}:\n" + "\n".join(seen.wide_code)


def test_page_does_not_scroll_sideways(seen):
    assert seen.page_overflow <= 0, \
        f"{seen.url} is {seen.page_overflow}px wider than the window"


def test_no_console_errors(seen):
    assert not seen.console, f"console errors on {seen.url}:\n" + "\n".join(seen.console)


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


def test_internal_links_resolve(seen, site_url):
    # a.href is already resolved against the page by the browser.
    host = urlsplit(site_url).netloc
    targets = {}   # target URL without fragment -> fragments linked on it
    for href in seen.hrefs:
        parts = urlsplit(href)
        if parts.scheme not in ("http", "https") or parts.netloc != host:
            continue   # mailto:, javascript:, other sites: not ours to check here
        target, frag = urldefrag(href)
        targets.setdefault(target, set()).update([unquote(frag)] if frag else [])
    assert targets, f"no internal links at all on {seen.url}"

    problems = []
    for target, frags in sorted(targets.items()):
        if target == seen.url:   # same page: the browser's DOM is the truth
            problems += [f"#{f}: no such id on this page" for f in sorted(frags - seen.ids)]
            continue
        status, body = fetch(target)
        if status != 200:
            problems.append(f"{target}: HTTP {status}")
        elif frags and target.endswith((".html", "/")):
            ids = _Ids(body).ids
            problems += [f"{target}#{f}: no such id" for f in sorted(frags - ids)]
    assert not problems, f"broken internal links on {seen.url}:\n" + "\n".join(problems)


# Sphinx copies figures from docs/_generated/ into _images/ of the built site.
FIGURES = [
    ("forward.html", "graph"), ("why.html", "digits"), ("backward.html", "circuit"),
    ("walkthrough.html", "circuit"), ("fused.html", "fused"), ("spatial.html", "spatial"),
    ("stability.html", "stability"), ("train_eval.html", "running"),
    ("performance.html", "perf"), ("normalizations.html", "norm_axes"),
    ("normalizations.html", "circuit_layer"),
]


@pytest.mark.parametrize("name, prefix", FIGURES)
def test_generated_figure_present(driver, site_url, name, prefix):
    url = urljoin(site_url, name)
    open_page(driver, url)
    imgs = driver.execute_script(IMAGES_JS)
    figures = [(src, ok) for src, ok in imgs
               if "/_images/" in src and os.path.basename(src).startswith(prefix)]
    assert figures, f"no generated figure {prefix}* on {url}; images found: {imgs}"
    assert all(ok for _, ok in figures), f"figure did not load on {url}: {figures}"


def test_chapters_end_with_exercises(driver, site_url, site_dir):
    with_exercises = []
    for name in site_pages(site_dir):
        status, body = fetch(urljoin(site_url, name))
        if re.search(r'<section id="exercises">', body):
            # each solution is collapsed (a <details> dropdown) and holds code
            solutions = re.findall(r"<details.*?</details>", body, re.S)
            assert solutions and all("highlight" in s for s in solutions), \
                f"{name}: exercises without collapsible solutions holding code"
            with_exercises.append(name)
    assert len(with_exercises) >= 8, f"chapters with an Exercises section: {with_exercises}"


def test_copying_a_doctest_gives_what_to_type(driver, site_url):
    # the copy button of a doctest block copies its input lines without the
    # prompts and without the expected output: the button is clicked, and the
    # text clipboard.js hands to the browser's copy command is caught
    open_page(driver, urljoin(site_url, "walkthrough.html"))
    blocks = driver.execute_script("""
        const caught = [];
        document.execCommand = (cmd) => {
            const a = document.activeElement;
            caught.push(a && a.value !== undefined ? a.value : String(window.getSelection()));
            return true;
        };
        const out = [];
        for (const d of document.querySelectorAll('div.highlight')) {
            if (!d.textContent.includes('>>> ')) continue;
            const before = caught.length;
            d.querySelector('button.copybtn').click();
            out.push([d.querySelector('pre').textContent,
                      caught.length > before ? caught[caught.length - 1] : null]);
        }
        return out;""")
    assert blocks, "no doctest block on walkthrough.html"
    for shown, copied in blocks:
        assert copied is not None, f"the copy button copied nothing: {shown[:80]}"
        typed = [line[4:] for line in shown.splitlines() if line.startswith((">>> ", "... "))]
        assert copied.splitlines() == typed, (shown, copied)


def _chapters(site_dir):
    return [p for p in site_pages(site_dir) if p not in ("genindex.html", "search.html",
                                                         "py-modindex.html")]


def test_the_column_is_the_same_on_every_page(driver, site_url, site_dir):
    # the reading column and the sidebar do not move from page to page
    where = {}
    for page in _chapters(site_dir):
        open_page(driver, urljoin(site_url, page))
        where[page] = tuple(driver.execute_script(
            "const r = document.querySelector('article').getBoundingClientRect();"
            "return [Math.round(r.left), Math.round(r.width)];"))
    assert len(set(where.values())) == 1, f"the column moves between pages: {where}"


PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}


def test_no_page_scrolls_sideways_on_a_phone(driver, site_url, site_dir):
    # at a phone's 390 x 844 a code block may scroll inside its own box, the page may not
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        wide = {}
        for page in _chapters(site_dir):
            open_page(driver, urljoin(site_url, page))
            assert driver.execute_script("return window.innerWidth") == PHONE["width"]
            over = driver.execute_script(
                "return document.documentElement.scrollWidth"
                " - document.documentElement.clientWidth")
            if over > 0:
                wide[page] = over
        assert not wide, f"pages wider than a 390-px phone screen (px too wide): {wide}"
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_circuit_keeps_its_size_on_a_phone(driver, site_url):
    # at 390 px the whole circuit scrolls inside its own box at the size it has at
    # 1280 px (labels of 12 px and more) instead of shrinking to a third of it
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        for page in ("backward.html", "walkthrough.html"):
            open_page(driver, urljoin(site_url, page))
            width = driver.execute_script(
                "const i = [...document.images].find(i => i.src.endsWith('/circuit.svg'));"
                "return i ? i.getBoundingClientRect().width : null;")
            assert width is not None and width >= 928, f"{page}: the circuit is {width} px wide"
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
