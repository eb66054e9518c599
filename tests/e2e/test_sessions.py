"""Sessions as a person meets them: revoking another browser from /account/sessions, signing out
(and the Back button afterwards), and the friendly page when a session ends elsewhere."""

import pytest

from tests.conftest import random_name
from tests.e2e.browser import PHONE, REQUIRES_CHROMIUM
from tests.e2e.product import at_provider_form, sign_in
from tests.support.live import COOKIE

pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]


def session_cookie(browser, product):
    cookies = browser.driver.execute_cdp_cmd("Network.getCookies", {"urls": [product.url + "/"]})["cookies"]
    return [c for c in cookies if c["name"] == COOKIE]


def test_revoking_a_session_signs_the_other_browser_out_on_its_next_request(product, open_browser):
    name = random_name("grace")
    laptop = open_browser()
    sign_in(laptop, product, name)
    phone = open_browser(size=PHONE)
    sign_in(phone, product, name)
    phone.wait(lambda d: phone.find(".note-form").is_displayed())

    laptop.click_link("Sessions", within="nav.main-nav")
    assert laptop.heading() == "Where you are signed in"
    cards = laptop.find_all("[data-testid=session]")
    assert len(cards) == 2
    assert ["This device" in card.text for card in cards].count(True) == 1
    laptop.screenshot("flow-sessions-two-devices")
    other = next(card for card in cards if "This device" not in card.text)
    laptop.navigate_by(other.find_element("css selector", "button").click)
    assert laptop.text("[data-testid=flash]") == "That session was signed out."
    assert len(laptop.find_all("[data-testid=session]")) == 1
    assert laptop.text("[data-testid=user-name]") == name.title(), "this browser is still signed in"

    # The phone's next request: the signed-out page, which says why and brings the person back.
    phone.click_link("Posts", within="nav.main-nav")
    assert phone.path_qs == "/signed-out?reason=revoked&next=%2Fposts"
    assert phone.heading() == "You have been signed out"
    assert phone.text("[data-testid=signed-out-reason]") == "This session was signed out from your list of sessions."
    assert not phone.find_all("[data-testid=user-name]")
    assert session_cookie(phone, product) == []
    phone.screenshot("flow-signed-out-after-revocation-phone")
    phone.click_link("Sign in again", within="main")
    phone.wait(lambda d: product.owns(d.current_url) and phone.path == "/posts")
    phone.settle()
    assert phone.heading() == "Posts"
    assert phone.text("[data-testid=user-name]") == name.title()

    # "Sign out everywhere else": the phone's open dashboard finds out at its script's next call.
    phone.click_link("Dashboard", within="nav.main-nav")
    phone.wait(lambda d: phone.find(".note-form").is_displayed())
    laptop.get(product.url + "/account/sessions")
    assert len(laptop.find_all("[data-testid=session]")) == 2
    laptop.find("details.confirm summary").click()  # it asks first
    laptop.click_button("Sign them out")
    assert laptop.text("[data-testid=flash]") == "You were signed out everywhere else."
    assert len(laptop.find_all("[data-testid=session]")) == 1
    phone.type_into("#note-text", "Anyone there?")
    phone.button("Add note", within="#notes").click()
    phone.wait(lambda d: "Your session has ended." in phone.text("[data-status]"))
    assert phone.find("[data-status] a").text == "Sign in again"
    assert not phone.find(".note-form").is_displayed()
    assert session_cookie(phone, product) == []


def test_sign_out_returns_to_the_landing_page_and_back_shows_nothing_private(product, open_browser):
    browser = open_browser()
    name = random_name("heidi")
    sign_in(browser, product, name)
    browser.click_link("Sessions", within="nav.main-nav")
    assert browser.heading() == "Where you are signed in"
    revocations = product.stats()["revocations"]

    browser.click_button("Sign out", within="header")
    browser.wait(lambda d: product.owns(d.current_url) and browser.path == "/")
    browser.settle()
    assert browser.heading() == "Sign in once. Work safely."
    assert not browser.find_all("[data-testid=user-name]")
    assert session_cookie(browser, product) == []
    assert product.stats()["revocations"] == revocations + 1, "the refresh token was revoked at the provider"

    # Back asks the server again (private pages are no-store, never kept by the browser), which
    # sends a signed-out browser to sign in: the sessions page is not shown again.
    browser.back()
    at_provider_form(browser)
    source = browser.source
    assert name.title() not in source and "Where you are signed in" not in source


def test_a_session_ended_at_the_provider_or_by_time_says_why(product, open_browser):
    at_provider = open_browser()
    sign_in(at_provider, product, random_name("ivan"))
    sent = product.stats()["backchannel_logouts_sent"]
    at_provider.get(product.idp + "/_dev/idp/")
    at_provider.click_button("Sign out", within="form")
    assert product.stats()["backchannel_logouts_sent"] == sent + 1
    at_provider.get(product.url + "/account/sessions")
    assert at_provider.path == "/signed-out"
    assert at_provider.heading() == "You have been signed out"
    assert at_provider.text("[data-testid=signed-out-reason]") == (
        "You signed out at your identity provider, so you were signed out here too."
    )
    at_provider.screenshot("flow-signed-out-at-provider")

    timed_out = open_browser()
    name = random_name("judy")
    sign_in(timed_out, product, name)
    product.end_sessions_by_time(name)
    timed_out.get(product.url + "/")
    assert timed_out.heading() == "Sign in once. Work safely."
    assert timed_out.text("[data-testid=session-ended]").startswith("Your session reached its time limit")
    assert not timed_out.find_all("[data-testid=user-name]")
    assert session_cookie(timed_out, product) == []
