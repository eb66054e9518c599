"""No token within reach of JavaScript, none in anything the browser received, and the page's
script carrying on when the access token expires: the refresh happens on the server, unseen.

The tokens searched for are the real ones: read from the session rows and decrypted with the
app's own cipher, before and after a refresh (a check for a token never obtained cannot fail)."""

import re
import time
from datetime import datetime, timezone

import pytest

from tests.conftest import random_name
from tests.e2e.browser import REQUIRES_CHROMIUM
from tests.e2e.product import expiry_of, running_product, sign_in
from tests.support.live import COOKIE

pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]

JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")


def add_note(browser, text: str):
    browser.type_into("#note-text", text)
    browser.button("Add note", within="#notes").click()
    browser.wait(lambda d: browser.text("[data-status]") in ("Note added.",) or "is-error" in browser.find(
        "[data-status]").get_attribute("class"))
    browser.settle()


def note_texts(browser) -> list[str]:
    return [e.text for e in browser.find_all("#notes .note-text")]


def assert_no_token_reached_the_browser(browser, product, tokens: dict[str, str], sources: list[str]):
    assert tokens, "no token was read from the database: the check below would prove nothing"
    storage = browser.js_storage()
    assert f"{COOKIE}=" not in storage["cookie"]
    assert storage["local"] == {} and storage["session"] == {}
    seen = browser.network.everything() + [("page source", s) for s in sources] + [("JS storage", str(storage))]
    leaks = [f"{label} in {where}" for label, token in tokens.items() for where, text in seen if token in text]
    # And no JWT at all (header.payload.signature, base64url, each JSON part starting {"): not even
    # one this test did not think of.
    leaks += [f"a JWT in {where}: {match.group()[:40]}..." for where, text in seen for match in JWT.finditer(text)]
    assert not leaks, "\n".join(leaks)


def test_no_token_within_reach_of_javascript_or_in_any_response(product, open_browser):
    browser = open_browser()
    name = random_name("erin")
    sources = []
    sign_in(browser, product, name)
    browser.wait(lambda d: browser.find(".note-form").is_displayed())
    add_note(browser, "Tokens stay on the server")
    assert note_texts(browser) == ["Tokens stay on the server"]
    sources.append(browser.source)
    for path in ("/posts", "/posts/new", "/account/sessions"):
        browser.get(product.url + path)
        sources.append(browser.source)
    who = browser.fetch_json("/auth/user")
    assert who["status"] == 200 and f'"name": "{name.title()}"' in who["body"].replace('":"', '": "')
    sources.append(who["body"])
    tokens = product.tokens_of(name)

    # A refresh on the server (the dashboard renders the notes with a fresh token), then look again.
    product.expire_access_tokens(name)
    before = product.stats()["refresh_grants"]
    browser.get(product.url + "/")
    sources.append(browser.source)
    assert product.stats()["refresh_grants"] == before + 1
    refreshed = product.tokens_of(name)
    assert refreshed.keys() == tokens.keys() and set(refreshed.values()) != set(tokens.values())
    tokens.update({f"{k} (after refresh)": v for k, v in refreshed.items()})

    # The session cookie is there, and HttpOnly: scripts cannot read it.
    cookies = browser.driver.execute_cdp_cmd("Network.getCookies", {"urls": [product.url + "/"]})["cookies"]
    session = [c for c in cookies if c["name"] == COOKIE]
    assert len(session) == 1 and session[0]["httpOnly"] and session[0]["sameSite"] == "Lax"
    tokens["session cookie"] = session[0]["value"]

    # The recorder did see what matters, so the search below is not vacuous.
    assert browser.network.bodies_of(product.url + "/api/demo/notes")
    assert any("dashboard-user" in body for body in browser.network.bodies_of(product.url + "/"))
    assert_no_token_reached_the_browser(browser, product, tokens, sources)


def test_the_page_script_keeps_working_after_the_access_token_expires(
    committed_database_url, committed_engine, open_browser
):
    with running_product(
        committed_database_url,
        committed_engine,
        devstack={"devstack.idp.access_token_lifetime": "3s"},
        **{"myapp.tokens.refresh_leeway": "0"},
    ) as product:
        browser = open_browser()
        name = random_name("frank")
        sign_in(browser, product, name)
        browser.wait(lambda d: browser.find(".note-form").is_displayed())
        add_note(browser, "Before the token expired")
        old = next(v for k, v in product.tokens_of(name).items() if k.startswith("access_token"))
        expires = expiry_of(old)

        # The page stays open, as a person would leave it, until the access token has expired.
        time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 1.1)
        assert datetime.now(timezone.utc) > expires
        before = product.stats()
        seen_before = len(browser.network.urls())
        add_note(browser, "After the token expired")

        assert browser.text("[data-status]") == "Note added."
        assert note_texts(browser) == ["After the token expired", "Before the token expired"]
        after = product.stats()
        assert after["refresh_grants"] > before["refresh_grants"]
        assert after["refresh_reuse_detected"] == before["refresh_reuse_detected"] == 0
        new = next(v for k, v in product.tokens_of(name).items() if k.startswith("access_token"))
        assert new != old and expiry_of(new) > datetime.now(timezone.utc)
        posts = [r for r in browser.network.responses.values() if r["url"] == product.url + "/api/demo/notes"]
        assert [r["status"] for r in posts][-2:] == [201, 200]
        # Unseen: while the page worked, the browser itself never went near the provider.
        assert [u for u in browser.network.urls()[seen_before:] if u.startswith(product.idp)] == []
        assert_no_token_reached_the_browser(browser, product, {"expired access token": old, "new access token": new}, [browser.source])
