"""What people do that software should forgive (issue 10): long names at every width, a double
click on Publish, a session that ends mid-edit, Back after signing in, times in their own zone."""

import pytest

from tests.e2e.browser import DESKTOP, PHONE, REQUIRES_CHROMIUM
from tests.e2e.product import sign_in

pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]

TABLET = (720, 900)
LONG = "admin-" + "x" * 58  # 64 characters without a space; the prefix makes an administrator


def widest(browser) -> int:
    """How far the page reaches to the right, and whether anything sticks out of its card."""
    return browser.driver.execute_script(
        """
        const doc = document.documentElement;
        let overflow = 0;
        for (const card of document.querySelectorAll('.card')) {
          const right = card.getBoundingClientRect().right;
          for (const el of card.querySelectorAll('*')) {
            const r = el.getBoundingClientRect();
            if (r.width && r.right > right + 1) { overflow = Math.max(overflow, r.right - right); }
          }
        }
        return Math.max(doc.scrollWidth - doc.clientWidth, Math.ceil(overflow));
        """
    )


@pytest.mark.parametrize("size", [PHONE, TABLET, DESKTOP], ids=["390", "720", "1280"])
def test_a_64_character_name_fits_every_page_at_every_width(product, open_browser, size):
    browser = open_browser(size=size)
    sign_in(browser, product, LONG)
    browser.get(product.url + "/posts/new")
    browser.type_into("#title", "y" * 200)
    browser.click_button("Publish")
    for path in ("/", "/posts", "/account/sessions", "/admin/users", "/admin/audit", browser.path):
        browser.get(product.url + path)
        assert widest(browser) == 0, f"{path} at {size[0]} px is wider than the window or its cards"
    if size == PHONE:
        browser.get(product.url + "/admin/audit")
        assert browser.driver.execute_script("return getComputedStyle(document.querySelector('.table-stack tr')).display") == "block"


def test_double_click_on_publish_makes_one_post(product, open_browser):
    browser = open_browser()
    sign_in(browser, product, "dora")
    browser.get(product.url + "/posts/new")
    browser.type_into("#title", "Only once")
    button = browser.button("Publish")
    browser.driver.execute_script("arguments[0].click(); arguments[0].click();", button)
    browser.wait(lambda d: "/posts/" in d.current_url and "/new" not in d.current_url)
    browser.get(product.url + "/posts")
    assert [e.text for e in browser.find_all(".post-item h2")] == ["Only once"]


def test_a_session_that_ends_mid_edit_loses_nothing(product, open_browser):
    browser = open_browser()
    sign_in(browser, product, "erin")
    browser.get(product.url + "/posts/new")
    browser.type_into("#title", "Written before the session ended")
    browser.type_into("#body", "Every word of it.")
    product.end_sessions_by_time("erin")
    browser.click_button("Publish")
    # Signed out: the browser is offered to sign in again and comes back to the filled form.
    browser.wait(lambda d: "/signed-out" in d.current_url or "/_dev/idp/" in d.current_url)
    if "/signed-out" in browser.driver.current_url:
        browser.click_link("Sign in again", within="main")
    # The provider may still know erin (then it sends her straight back) or ask her name again.
    browser.wait(lambda d: d.current_url.endswith("/posts/new") or d.find_elements("css selector", "input[name=name]"))
    if not browser.driver.current_url.endswith("/posts/new"):
        browser.type_into("input[name=name]", "erin")
        browser.click_button("Sign in", within="form")
    browser.wait(lambda d: d.current_url.endswith("/posts/new"))
    browser.settle()
    assert browser.find("#title").get_attribute("value") == "Written before the session ended"
    assert browser.find("#body").get_attribute("value") == "Every word of it."
    assert browser.find("[data-draft-restored]").is_displayed()
    storage = browser.js_storage()
    assert not any("token" in key.lower() for key in storage)
    browser.click_button("Publish")
    assert browser.text("[data-testid=flash]") == "Your post was published."
    browser.get(product.url + "/posts/new")
    assert browser.find("#title").get_attribute("value") == "", "publishing clears the draft"


def test_back_after_signing_in_shows_no_error(product, open_browser):
    browser = open_browser()
    sign_in(browser, product, "finn", start="/posts")
    assert browser.path == "/posts"
    browser.back()
    browser.settle()
    assert "Sign-in did not work" not in browser.text(), (browser.driver.current_url, browser.text())


def test_signing_out_says_so_and_destructive_actions_ask_first(product, open_browser):
    first, second = open_browser(), open_browser()
    sign_in(first, product, "gail")
    sign_in(second, product, "gail")
    first.get(product.url + "/account/sessions")
    first.find("details.confirm summary").click()
    first.find("details.confirm [data-confirm-cancel]").click()
    assert not first.find("details.confirm").get_attribute("open")
    assert len(first.find_all("[data-testid=session]")) == 2
    first.find("details.confirm summary").click()
    first.click_button("Sign them out")
    assert first.text("[data-testid=flash]") == "You were signed out everywhere else."
    first.click_button("Sign out", within="header")
    first.wait(lambda d: product.owns(d.current_url) and d.find_elements("css selector", "[data-testid=session-ended]"))
    assert first.text("[data-testid=session-ended]") == "You have signed out."


def test_times_are_shown_in_the_readers_time_zone(product, open_browser):
    browser = open_browser()
    browser.driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Tokyo"})
    sign_in(browser, product, "hana")
    browser.get(product.url + "/account/sessions")
    element = browser.find("time[data-localised]")
    assert element.get_attribute("title").endswith("UTC")
    assert "GMT+9" in element.text or "JST" in element.text
    no_script = open_browser(javascript=False)
    sign_in(no_script, product, "hana")
    no_script.get(product.url + "/account/sessions")
    assert no_script.find("time").text.endswith("UTC")
