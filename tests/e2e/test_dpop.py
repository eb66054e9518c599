"""DPoP in a real browser (docs/dpop.md): the page works as before while every token is bound to
the session's key, the provider and the API demand nonces, and the access token expires under it;
neither a token nor the key ever reaches the browser."""

import time

import pytest

from tests.conftest import random_name
from tests.e2e.browser import REQUIRES_CHROMIUM
from tests.e2e.product import running_product, sign_in
from tests.e2e.test_tokens import add_note, assert_no_token_reached_the_browser, note_texts

pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]


def test_a_dpop_session_works_in_the_browser_through_nonces_and_a_refresh(
    committed_database_url, committed_engine, open_browser
):
    with running_product(
        committed_database_url,
        committed_engine,
        devstack={"devstack.idp.dpop_nonce": "true", "devstack.api.dpop_nonce": "true",
                  "devstack.idp.access_token_lifetime": "3s"},
        **{"myapp.oidc.dpop": "required", "myapp.tokens.refresh_leeway": "0"},
    ) as product:
        browser = open_browser()
        name = random_name("dora")
        sign_in(browser, product, name)
        browser.wait(lambda d: browser.find(".note-form").is_displayed())
        (session,) = product.sessions_of(name)
        assert session.access_token_type == "DPoP" and session.dpop_key is not None
        add_note(browser, "Bound to this server's key")
        secrets_before = product.tokens_of(name)
        assert any(label.startswith("DPoP private key") for label in secrets_before)

        time.sleep(4.1)  # the access token expires while the page stays open
        before = product.stats()
        add_note(browser, "After a DPoP refresh")
        assert browser.text("[data-status]") == "Note added."
        assert note_texts(browser) == ["After a DPoP refresh", "Bound to this server's key"]
        assert product.stats()["refresh_grants"] == before["refresh_grants"] + 1
        secrets_after = product.tokens_of(name)
        assert_no_token_reached_the_browser(
            browser, product, {**secrets_before, **{f"{k} (after)": v for k, v in secrets_after.items()}}, [browser.source]
        )
