"""Signing in, in a real Chromium: through the development provider's form, with the mouse and
with the keyboard alone, onto a dashboard that the server has already rendered for this person."""

import pytest

from tests.conftest import random_name
from tests.e2e.browser import REQUIRES_CHROMIUM
from tests.e2e.product import at_provider_form, sign_in

pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]


def test_sign_in_by_typing_a_name_at_the_provider_lands_on_the_dashboard(product, open_browser):
    browser = open_browser()
    browser.get(product.url + "/")
    assert browser.heading() == "Sign in once. Work safely."
    assert not browser.find_all("[data-testid=user-name]")
    browser.screenshot("flow-landing")

    name = random_name("alice")
    sign_in(browser, product, name, screenshot="flow-provider-sign-in")

    assert browser.path == "/"
    assert browser.heading() == f"Welcome, {name.title()}"
    assert browser.text("[data-testid=user-name]") == name.title()
    assert browser.button("Sign out", within="header").is_displayed()
    assert browser.find("nav.main-nav a[aria-current=page]").text == "Dashboard"
    browser.wait(lambda d: browser.find(".note-form").is_displayed())
    browser.screenshot("flow-dashboard-first-sign-in")


def test_no_flash_of_the_signed_out_page(product, open_browser):
    """The first HTML response already names the person, and no state of the page that could
    have been painted ever showed the signed-out header or the landing page."""
    browser = open_browser()
    name = random_name("carol")
    sign_in(browser, product, name)
    display = name.title()

    browser.watch_header()
    browser.get(product.url + "/")

    documents = [r for r in browser.network.responses.values() if r["url"] == product.url + "/" and r["type"] == "Document"]
    first = documents[-1]
    assert first["status"] == 200
    assert f'data-testid="dashboard-user">{display}<' in first["body"]
    assert display in first["body"].split("</header>")[0] and "Sign out" in first["body"].split("</header>")[0]
    assert "Sign in once" not in first["body"]
    assert first["headers"].get("Cache-Control", first["headers"].get("cache-control")) == "no-store"
    # The page learnt who is signed in from the server, not by asking from JavaScript.
    assert not [r for r in browser.network.responses.values() if "/auth/user" in r["url"]]

    states = browser.header_states()
    painted = [s for s in states if s["when"] in ("first-paint", "first-contentful-paint")]
    assert painted and all(display in s["header"] and "Sign out" in s["header"] for s in painted), painted
    for state in states:
        assert "Sign in" not in (state["header"] or ""), state
        assert "Sign in once" not in (state["main"] or ""), state

    # And without JavaScript at all, the same signed-in page.
    browser.driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    browser.get(product.url + "/")
    assert browser.heading() == f"Welcome, {display}"
    assert browser.text("[data-testid=user-name]") == display


def test_keyboard_alone_signs_in_and_publishes_a_post(product, open_browser):
    browser = open_browser()
    browser.get(product.url + "/")

    browser.press("tab")
    skip = browser.focused()
    assert skip["text"] == "Skip to content"
    assert browser.driver.execute_script(
        "var r = document.activeElement.getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight && r.width > 20;"
    ), "the skip link is visible when focused"
    browser.screenshot("flow-keyboard-skip-link", full_page=False)

    for _ in range(6):
        browser.press("tab")
        if browser.focused()["text"] == "Sign in":
            break
    assert browser.focused()["text"] == "Sign in"
    browser.press("enter")
    at_provider_form(browser)
    name = random_name("dave")
    browser.driver.switch_to.active_element.send_keys(name)  # the name field has the focus
    browser.press("enter")
    browser.wait(lambda d: product.owns(d.current_url))
    browser.wait_for_path("/")
    assert browser.heading() == f"Welcome, {name.title()}"

    # Skip link, then straight into the page: its first control is the call to action.
    browser.press("tab")
    assert browser.focused()["text"] == "Skip to content"
    browser.press("enter")
    assert browser.focused()["id"] == "main"
    browser.press("tab")
    assert browser.focused()["text"] == "Write a post"
    browser.press("enter")
    browser.wait_for_path("/posts/new")

    assert browser.focused()["id"] == "title"
    browser.driver.switch_to.active_element.send_keys("Written without a mouse")
    browser.press("tab")
    assert browser.focused()["id"] == "body"
    browser.driver.switch_to.active_element.send_keys("Tab, type, tab, enter.")
    browser.press("tab")
    assert browser.focused()["text"] == "Publish"
    browser.press("enter")
    browser.wait(lambda d: browser.path.startswith("/posts/") and browser.path != "/posts/new")
    browser.settle()
    assert browser.text("[data-testid=flash]") == "Your post was published."
    assert browser.heading() == "Written without a mouse"
