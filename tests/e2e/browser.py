"""Debian's Chromium driven through its chromedriver with Selenium: no browser download, ever.

``MISSING`` says why the end-to-end tests cannot run here (None when they can); ``Browser`` is
one headless Chromium with its own profile (one person), which also records what the network
showed it, so tests can look for tokens in everything the browser received.
"""

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = Path(os.environ.get("MYAPP_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("MYAPP_E2E_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP = (1280, 860)
PHONE = (390, 844)
# A phone-sized browser also says it is a phone, as the sessions page then shows.
PHONE_USER_AGENT = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Mobile Safari/537.36"
)
# Without the background-networking flags Chromium keeps calling Google's hosts, which a closed
# network refuses; a fresh profile per browser keeps tests from sharing cookies or storage.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--force-color-profile=srgb",
    "--lang=en-US",
]


def _missing() -> str | None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return (
            f"end-to-end tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); "
            "`make e2e` installs them"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "end-to-end tests need Selenium (the e2e extra); `make e2e` installs it"
    return None


MISSING = _missing()
# Every end-to-end test module: ``pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]``.
REQUIRES_CHROMIUM = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

# Runs in every new document before its first byte is parsed: records the page header's text at
# every DOM change and at each paint, so a test can tell what a person could ever have seen.
HEADER_PROBE = """
(function () {
  var states = window.__myappHeaderStates = [];
  function look(when) {
    var header = document.querySelector("header.site-header");
    var main = document.querySelector("main");
    states.push({when: when, header: header ? header.innerText : null, main: main ? main.innerText.slice(0, 300) : null});
  }
  new MutationObserver(function () { look("mutation"); })
    .observe(document, {childList: true, subtree: true, characterData: true});
  new PerformanceObserver(function (list) { list.getEntries().forEach(function (e) { look(e.name); }); })
    .observe({type: "paint", buffered: true});
})();
"""

if MISSING is None:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.wait import WebDriverWait


class Browser:
    """One person's headless Chromium. ``network`` collects every response it received."""

    def __init__(self, *, size=DESKTOP, javascript=True, page_load_strategy="normal"):
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        # "none": a DevTools command (Page.stopLoading: Stop) does not wait for a navigation on its way.
        options.page_load_strategy = page_load_strategy
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={size[0]},{size[1]}")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        if not javascript:
            options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
        # An explicit driver path: Selenium Manager never looks for (or downloads) one.
        service = Service(str(CHROMEDRIVER), log_output=os.devnull)
        # chromedriver makes the fresh profile and removes it on quit. With one made here
        # (--user-data-dir), browsers took 1.7 times as long to start and three times as long to
        # settle each page of the app, and the tests 30% longer; why was not found (docs/ui.md).
        self.driver = webdriver.Chrome(service=service, options=options)
        self.profile = self.driver.capabilities.get("chrome", {}).get("userDataDir")
        # Chromium's one-instance socket lives in a directory of its own in /tmp, linked from the
        # profile. With chromedriver's profile it is left behind when the browser quits (one per
        # browser, every run): removed by close().
        singleton = Path(self.profile) / "SingletonSocket" if self.profile else None
        self.singleton = Path(os.readlink(singleton)).parent if singleton and singleton.is_symlink() else None
        try:
            self.driver.set_page_load_timeout(30)
            self.driver.execute_cdp_cmd("Network.enable", {"maxTotalBufferSize": 64 * 1024 * 1024})
            self.network = NetworkRecord(self.driver)
            if size[0] < 600:
                self.driver.execute_cdp_cmd("Emulation.setUserAgentOverride", {"userAgent": PHONE_USER_AGENT})
            self.set_size(size)
        except BaseException:
            self.close()
            raise

    def close(self):
        try:
            self.driver.quit()
        finally:
            # The profile is gone after a quit that worked, left behind when chromedriver had
            # already died; the socket's directory is left behind either way.
            for left in (self.profile, self.singleton):
                if left and Path(left).name.startswith("org.chromium.Chromium."):
                    shutil.rmtree(left, ignore_errors=True)

    def get(self, url: str):
        self.driver.get(url)
        self.settle()

    def settle(self):
        """Wait for the page and its script's first calls, then record what the network brought."""
        self.wait(lambda d: d.execute_script("return document.readyState") == "complete")
        self.wait(lambda d: not d.execute_script(
            "var c = document.getElementById('notes'); return c !== null && c.getAttribute('aria-busy') === 'true';"
        ))
        self.network.collect()

    def wait(self, condition, timeout: float = 15):
        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition)

    def wait_for_path(self, path: str, timeout: float = 15):
        self.wait(lambda d: self.path == path, timeout)
        self.settle()

    @property
    def path(self) -> str:
        return self.driver.execute_script("return location.pathname")

    @property
    def path_qs(self) -> str:
        return self.driver.execute_script("return location.pathname + location.search")

    @property
    def source(self) -> str:
        return self.driver.page_source

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str):
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str = "body") -> str:
        return self.find(css).text

    def heading(self) -> str:
        return self.text("h1")

    def click(self, css: str):
        self.navigate_by(self.find(css).click)

    def navigate_by(self, action):
        """Do ``action`` (a click, a key) and wait until the page it leads to has loaded."""
        self.driver.execute_script("window.__myappLeaving = true;")
        action()
        self.wait(lambda d: not d.execute_script("return window.__myappLeaving === true;"))
        self.settle()

    def click_button(self, label: str, within: str = "main"):
        """Click the button a person would: the one whose visible label is ``label``."""
        self.navigate_by(self.button(label, within).click)

    def button(self, label: str, within: str = "main"):
        matches = [b for b in self.find_all(f"{within} button") if b.text.strip() == label and b.is_displayed()]
        assert matches, f"no button labelled {label!r} in {within}; page: {self.heading()!r}"
        return matches[0]

    def click_link(self, label: str, within: str = "body"):
        matches = [a for a in self.find_all(f"{within} a") if a.text.strip() == label and a.is_displayed()]
        assert matches, f"no link labelled {label!r} in {within}; page: {self.heading()!r}"
        self.navigate_by(matches[0].click)

    def type_into(self, css: str, text: str, *, clear: bool = True):
        field = self.find(css)
        if clear:
            field.clear()
        field.send_keys(text)
        return field

    def press(self, key: str):
        self.driver.switch_to.active_element.send_keys(getattr(Keys, key.upper()))

    def focused(self):
        """What has the keyboard focus: tag, id, text and classes."""
        return self.driver.execute_script(
            "var e = document.activeElement;"
            "return {tag: e.tagName.toLowerCase(), id: e.id, text: (e.innerText || e.value || '').trim(),"
            " cls: e.className, href: e.getAttribute('href')};"
        )

    def watch_header(self):
        """From the next page on, record the header at every DOM change and paint (HEADER_PROBE)."""
        return self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HEADER_PROBE})

    def header_states(self) -> list[dict]:
        self.wait(lambda d: any(s["when"] == "first-contentful-paint" for s in d.execute_script(
            "return window.__myappHeaderStates || []")))
        return self.driver.execute_script("return window.__myappHeaderStates")

    def back(self):
        self.driver.back()
        self.settle()

    def js_storage(self) -> dict:
        return self.driver.execute_script(
            "function dump(s) { var o = {}; for (var i = 0; i < s.length; i++) { var k = s.key(i); o[k] = s.getItem(k); } return o; }"
            "return {cookie: document.cookie, local: dump(window.localStorage), session: dump(window.sessionStorage)};"
        )

    def fetch_json(self, path: str) -> dict:
        """What the page's own JavaScript would get from one of this site's JSON routes."""
        return self.driver.execute_async_script(
            "var done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {credentials: 'same-origin', headers: {'X-CSRF': '1'}})"
            ".then(function (r) { return r.text().then(function (t) { done({status: r.status, body: t}); }); })"
            ".catch(function (e) { done({status: 0, body: String(e)}); });",
            path,
        )

    def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        """Save the page as ``test-artifacts/screenshots/<name>.png`` (the whole page by default)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if full_page:
            metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            width = self.driver.execute_script("return window.innerWidth")
            shot = self.driver.execute_cdp_cmd(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": max(size["height"], 1), "scale": 1},
                },
            )
            path.write_bytes(base64.b64decode(shot["data"]))
        else:
            self.driver.save_screenshot(str(path))
        return path

    def set_size(self, size):
        self.driver.set_window_size(*size)
        # The window size includes no browser chrome in headless mode; make the viewport exact.
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": size[0] < 600},
        )


class NetworkRecord:
    """Every response the browser received: URL, status, headers and (when it had one) body."""

    def __init__(self, driver):
        self.driver = driver
        self.responses: dict[str, dict] = {}
        self.redirects: list[dict] = []

    def collect(self):
        pending = {}
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            method, params = message.get("method"), message.get("params", {})
            if method == "Network.requestWillBeSent" and "redirectResponse" in params:
                redirect = params["redirectResponse"]
                self.redirects.append({"url": redirect["url"], "status": redirect["status"], "headers": redirect["headers"]})
            elif method == "Network.responseReceived":
                response = params["response"]
                pending[params["requestId"]] = {
                    "url": response["url"],
                    "status": response["status"],
                    "headers": response["headers"],
                    "type": params.get("type"),
                    "body": None,
                }
            elif method == "Network.loadingFinished" and params["requestId"] in pending:
                pending[params["requestId"]]["finished"] = True
        for request_id, record in pending.items():
            if record.pop("finished", False):
                try:
                    body = self.driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": request_id})
                except WebDriverException:
                    body = None  # evicted by a later navigation; the page source is checked instead
                if body is not None:
                    record["body"] = base64.b64decode(body["body"]).decode("utf-8", "replace") if body.get(
                        "base64Encoded"
                    ) else body["body"]
            self.responses[f"{request_id}:{record['url']}"] = record

    def everything(self) -> list[tuple[str, str]]:
        """(where, text) for every URL, header and body seen."""
        seen = []
        for record in [*self.responses.values(), *self.redirects]:
            seen.append((f"URL {record['url']}", record["url"]))
            for name, value in record["headers"].items():
                seen.append((f"header {name} of {record['url']}", str(value)))
            if record.get("body"):
                seen.append((f"body of {record['url']}", record["body"]))
        return seen

    def urls(self) -> list[str]:
        return [r["url"] for r in self.responses.values()]

    def bodies_of(self, url_part: str) -> list[str]:
        return [r["body"] for r in self.responses.values() if url_part in r["url"] and r.get("body")]
