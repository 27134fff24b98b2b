"""Fixtures for the browser test of the built documentation site.

The site is served over HTTP (not file://) so that the browser sees it the way
a reader does: relative links, MathJax's dynamic loading of its components and
fonts, and images all go through a real server. Chromium runs headless with no
network; selenium-manager is never asked to download a driver or a browser.
"""
import functools
import http.server
import os
import shutil
import threading
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def pytest_addoption(parser):
    parser.addoption(
        "--site", metavar="DIR",
        default=os.environ.get("CYBATCHNORM_SITE") or os.path.join(REPO, "docs", "_build", "html"),
        help="the built HTML site to test (default: $CYBATCHNORM_SITE, else docs/_build/html)")


def _in_ci():
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _find_browser():
    binary = next(filter(None, map(shutil.which, BROWSERS)), None)
    return binary, shutil.which("chromedriver")


def pytest_report_header(config):
    binary, driver = _find_browser()
    return (f"site: {os.path.abspath(config.getoption('--site'))}; "
            f"browser: {binary or 'MISSING'}; chromedriver: {driver or 'MISSING'}")


@pytest.fixture(scope="session")
def site_dir(pytestconfig):
    site = os.path.abspath(pytestconfig.getoption("--site"))
    if not os.path.isfile(os.path.join(site, "index.html")):
        # A missing site is a broken setup, never a reason to skip.
        pytest.fail(f"no built site at {site} (index.html missing): build it first with "
                    f"`tox -e docs` or `sphinx-build -b html docs docs/_build/html`, "
                    f"or point --site / CYBATCHNORM_SITE at a built site", pytrace=False)
    return site


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):   # keep the test output free of access logs
        pass


@pytest.fixture(scope="session")
def site_url(site_dir):
    """Base URL (ending in '/') of the site, served from a background thread."""
    handler = functools.partial(_QuietHandler, directory=site_dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


_SKIPPED = []     # why the browser test did not run, for the summary's banner


def pytest_terminal_summary(terminalreporter):
    # a banner at the end of the run, where it cannot be missed, as the
    # memcheck and mpi envs print theirs
    if _SKIPPED:
        terminalreporter.write_sep("!", "SKIPPED: the browser test of the site did not run")
        terminalreporter.write_line(_SKIPPED[0])
        terminalreporter.write_line("nothing was checked in a browser; install the packages and "
                                    "run tox -e docs again")
        terminalreporter.write_sep("!", "")


@pytest.fixture(scope="session")
def driver():
    """One headless Chromium for the session (starting it costs about a second)."""
    binary, chromedriver = _find_browser()
    if not (binary and chromedriver):
        missing = " and ".join(n for n, p in (("chromium", binary), ("chromedriver", chromedriver))
                               if not p)
        msg = (f"{missing} not found on PATH: the browser test of the site cannot run. "
               f"Install the Debian packages `chromium chromium-driver` "
               f"(apt-get install chromium chromium-driver).")
        if _in_ci():   # in CI a missing browser must not pass silently as a skip
            pytest.fail(f"CI is set: {msg}", pytrace=False)
        warnings.warn(f"SKIPPING the browser test of the site: {msg}", stacklevel=1)
        _SKIPPED.append(msg)
        pytest.skip(msg)

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        options.add_argument(arg)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given explicitly: selenium-manager (which downloads) is bypassed.
    drv = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    drv.set_page_load_timeout(30)
    drv.set_script_timeout(25)
    yield drv
    drv.quit()
