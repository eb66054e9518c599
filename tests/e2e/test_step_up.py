"""Step-up in a real browser (issue 12): an administrator opens the audit log, is asked to
confirm with a second factor at the development provider, and comes back to the page."""

import pytest

from tests.e2e.browser import REQUIRES_CHROMIUM
from tests.e2e.product import running_product, sign_in

pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]


@pytest.fixture(scope="module")
def product(committed_database_url, committed_engine):
    from tests.e2e.browser import MISSING

    if MISSING:
        pytest.skip(MISSING)
    with running_product(committed_database_url, committed_engine, **{"myapp.stepup.rules": "/admin = acr=urn:myapp:mfa"}) as running:
        yield running


def test_an_admin_page_asks_for_the_second_factor_and_returns(product, open_browser):
    browser = open_browser()
    sign_in(browser, product, "admin-ivy")
    browser.get(product.url + "/admin/audit")
    assert browser.heading() == "Please confirm it is you"
    browser.screenshot("flow-step-up")
    browser.click_link("Sign in again", within="main")
    browser.wait(lambda d: d.find_elements("css selector", "[data-testid=second-factor]"))
    browser.screenshot("flow-step-up-second-factor")
    browser.type_into("input[name=otp]", "123456")
    browser.click_button("Sign in", within="form")
    browser.wait(lambda d: product.owns(d.current_url) and d.current_url.endswith("/admin/audit"))
    browser.settle()
    assert browser.heading() == "Audit log"
    browser.get(product.url + "/account/sessions")
    assert "urn:myapp:mfa" in browser.text("[data-testid=session-acr]")
