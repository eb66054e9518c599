"""Sign-in through the whole app, against a programmable provider on a real socket.

Every failure case checks the same outcome: no session row, no session cookie, an audit record.
"""

import logging
import re
import time
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from sqlalchemy import func, select

from myapp.models import AuditEvent, LoginTransaction, User, UserSession
from myapp.models.meta import utcnow
from myapp.services import Services
from tests.conftest import TEST_PUBLIC_URL
from tests.functional.auth.flows import (
    assert_no_session,
    csrf_of,
    failures,
    session_count,
    sign_in,
    start_login,
)
from tests.functional.conftest import COOKIE, Browser
from tests.support.fake_provider import CLIENT_ID
from tests.support.raw_server import RawServer, trickle


def refusals(app, reason: str) -> int:
    """Failed callbacks counted in /metrics for ``reason``."""
    value = app.registry[Services].metrics.registry.get_sample_value("myapp_login_failures_total", {"reason": reason})
    return int(value or 0)


def test_login_redirects_to_the_provider_with_pkce_state_and_nonce(browser, provider, dbsession):
    response, query = start_login(browser, "/posts", prompt="select_account")
    assert response.location.startswith(provider.issuer + "/authorize?")
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 43 and len(query["nonce"]) >= 43
    assert query["prompt"] == "select_account"
    assert query["redirect_uri"] == TEST_PUBLIC_URL + "/auth/callback"
    assert "code_verifier" not in response.location
    row = dbsession.scalars(select(LoginTransaction)).one()
    assert row.next_path == "/posts"
    assert query["state"] not in row.state_hash
    binding = [v for k, v in response.headerlist if k == "Set-Cookie" and v.startswith("__Host-login=")]
    assert binding and "HttpOnly" in binding[0] and "secure" in binding[0].lower() and "Max-Age=600" in binding[0]


def test_unknown_prompt_is_dropped(browser, provider):
    _, query = start_login(browser, prompt="none")
    assert "prompt" not in query


def test_authorize_params_are_passed(make_app, provider):
    browser = Browser(make_app(**{"myapp.oidc.authorize_params": "audience = https://api.example.test"}))
    _, query = start_login(browser)
    assert query["audience"] == "https://api.example.test"


def test_a_step_ups_acr_values_and_max_age_replace_configured_ones(make_app, provider):
    """Both were sent, twice each, and a provider that refuses repeated parameters refused every
    step-up (helper-40)."""
    app = make_app(**{"myapp.oidc.authorize_params": "acr_values = urn:example:pwd\nmax_age = 3600\naudience = a"})
    location = Browser(app).get("/login", params={"acr_values": "urn:example:mfa", "max_age": "60"}, status=303).location
    sent = parse_qs(urlsplit(location).query)
    assert (sent["acr_values"], sent["max_age"], sent["audience"]) == (["urn:example:mfa"], ["60"], ["a"])
    location = Browser(app).get("/login", status=303).location
    assert parse_qs(urlsplit(location).query)["acr_values"] == ["urn:example:pwd"]


def test_sign_in_end_to_end(browser, provider, dbsession):
    response = sign_in(browser, provider, "/posts")
    assert response.status_int == 303
    assert response.location == "https://app.example.test/posts"
    cookie = [v for k, v in response.headerlist if k == "Set-Cookie" and v.startswith(COOKIE + "=")][0]
    assert all(attr in cookie for attr in ("HttpOnly", "secure", "SameSite=Lax", "Path=/"))
    assert "Domain" not in cookie
    page = browser.get("/")
    assert "Alice From Userinfo" in page.text
    user = dbsession.scalars(select(User)).one()
    assert (user.issuer, user.subject, user.email) == (provider.issuer, "alice", "alice@example.org")
    assert user.groups == ["readers", "staff"]
    row = dbsession.scalars(select(UserSession)).one()
    assert row.provider_sid == provider.sid
    # Not stored as it came (the provider's tokens start "at-"); random ciphertext may hold those
    # three bytes anywhere (a CI run's did), so only its start tells.
    assert row.access_token and not row.access_token.startswith(b"at-")
    assert dbsession.scalars(select(AuditEvent.event)).all() == ["login"]
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0


def test_signing_in_clears_the_note_of_why_an_earlier_session_ended(browser, provider, dbsession):
    """A note left by a script's call (SessionCookie.ended_note) lived its minute through a new
    sign-in: the new session's signed-out page (or the next person's at the browser) said why the
    earlier one ended, over the reason it was given."""
    from sqlalchemy import update

    assert sign_in(browser, provider, "/posts").status_int == 303
    dbsession.execute(update(UserSession).values(ended_at=utcnow(), end_reason="revoked_by_admin"))
    dbsession.flush()
    browser.get("/auth/user", headers={"X-CSRF": "1"}, status=401)
    assert browser.cookies.get(f"{COOKIE}-ended") == "revoked_by_admin"
    response = sign_in(browser, provider, "/posts")
    assert response.status_int == 303
    assert any(v.startswith(f"{COOKIE}-ended=;") and "Max-Age=0" in v for k, v in response.headerlist if k == "Set-Cookie")
    assert f"{COOKIE}-ended" not in browser.cookies
    browser.submit("/logout", {"csrf_token": csrf_of(browser)}, csrf=False, status=303)
    page = browser.get("/signed-out?reason=logout")
    assert "You signed out." in page.text and "An administrator" not in page.text


def test_signing_in_clears_the_note_of_an_earlier_sign_out(browser, provider, dbsession):
    """A Sign out leaves <cookie>-signed-out for the landing page (10 minutes): when the browser
    never came back to it (the provider's sign-out page left, Stop), the note lived through a new
    sign-in, and that session's landing page, whenever it ended within the ten minutes, said "You
    have signed out." over the reason it ended."""
    from sqlalchemy import update

    assert sign_in(browser, provider, "/posts").status_int == 303
    browser.submit("/logout", {"csrf_token": csrf_of(browser)}, csrf=False, status=303)
    assert browser.cookies.get(f"{COOKIE}-signed-out") == "1"
    response = sign_in(browser, provider, "/posts")
    assert response.status_int == 303
    assert any(v.startswith(f"{COOKIE}-signed-out=;") and "Max-Age=0" in v
               for k, v in response.headerlist if k == "Set-Cookie")
    assert f"{COOKIE}-signed-out" not in browser.cookies
    dbsession.execute(update(UserSession).where(UserSession.ended_at.is_(None))
                      .values(ended_at=utcnow(), end_reason="revoked_by_admin"))
    dbsession.flush()
    page = browser.get("/")
    assert "An administrator signed you out." in page.text and "You have signed out." not in page.text


def test_an_absolute_timeout_shorter_than_the_idle_timeout(make_app, provider):
    """absolute_timeout = 2h with the default idle_timeout (7d): the app starts, the cookie's Max-Age
    follows the absolute expiry, and /auth/user's idle expiry is never later than it (helper-58)."""
    browser = Browser(make_app(**{"myapp.session.absolute_timeout": "2h"}))
    response = sign_in(browser, provider, "/posts")
    assert response.status_int == 303
    cookie = [v for k, v in response.headerlist if k == "Set-Cookie" and v.startswith(COOKIE + "=")][0]
    assert "Max-Age=7200" in cookie
    session = browser.get("/auth/user", headers={"X-CSRF": "1"}).json["session"]
    assert session["idle_expires_at"] == session["expires_at"]


def test_groups_come_from_the_configured_claim(make_app, provider, dbsession):
    browser = Browser(make_app(**{"myapp.oidc.groups_claim": "roles", "myapp.oidc.fetch_userinfo": "false"}))
    sign_in(browser, provider, roles=["admins", "auditors"])
    assert dbsession.scalars(select(User)).one().groups == ["admins", "auditors"]
    assert "/admin/audit" in browser.get("/").text


@pytest.mark.parametrize("value", ["none", "None"])
def test_a_provider_may_be_trusted_with_no_groups(make_app, provider, dbsession, value):
    """Whatever claim its tokens carry, "none" among them (helper-39: naming a claim it does not
    send, as the docs once advised, let it fill that claim and make administrators)."""
    browser = Browser(make_app(**{"myapp.oidc.groups_claim": value}))
    sign_in(browser, provider, groups=["admins"], **{value: ["admins"]})
    assert dbsession.scalars(select(User)).one().groups == []
    assert "/admin/audit" not in browser.get("/").text


def test_details_are_refreshed_at_each_login_and_users_are_keyed_by_subject(browser, provider, dbsession):
    sign_in(browser, provider)
    provider.userinfo_response = lambda token: (200, {"sub": "alice", "name": "Alice Renamed", "email": "new@example.org"})
    sign_in(browser, provider)
    users = dbsession.scalars(select(User)).all()
    assert [(u.name, u.email) for u in users] == [("Alice Renamed", "new@example.org")]
    provider.userinfo_response = lambda token: (200, {"sub": "bob", "email": "new@example.org"})
    sign_in(browser, provider, sub="bob")
    assert dbsession.scalar(select(func.count()).select_from(User)) == 2


def test_userinfo_failure_keeps_the_id_token_claims(browser, provider, dbsession):
    provider.userinfo_response = lambda token: (401, {"error": "invalid_token"})
    assert sign_in(browser, provider).status_int == 303
    assert dbsession.scalars(select(User)).one().name == "Alice Example"


def test_userinfo_nested_past_pythons_limit_keeps_the_id_token_claims(browser, provider, dbsession):
    """RecursionError, not ValueError, from json.loads: a provider's document nested deeper than
    Python's stack was a 500 at the callback (the kind helper-116 found at back-channel logout)."""
    provider.userinfo_response = lambda token: (200, b"[" * 5000)
    assert sign_in(browser, provider).status_int == 303
    assert dbsession.scalars(select(User)).one().name == "Alice Example"


def test_a_group_no_database_stores_is_left_out(browser, provider, dbsession):
    """A lone surrogate ("\\ud800" in the provider's JSON) or a NUL in a group name could not be
    stored (a 500 at the callback), and names no group of any setting (helper-116's note)."""
    provider.userinfo_response = lambda token: (200, {"sub": "alice", "groups": ["staff", "x\ud800", "y\u0000", "admins"]})
    assert sign_in(browser, provider, groups=["staff", "x\ud800"]).status_int == 303
    assert dbsession.scalars(select(User)).one().groups == ["admins", "staff"]
    assert browser.get("/", status=200)


def test_userinfo_naming_another_user_is_discarded(browser, provider, dbsession):
    provider.userinfo_response = lambda token: (200, {"sub": "mallory", "name": "Mallory", "groups": ["admins"]})
    assert sign_in(browser, provider).status_int == 303
    user = dbsession.scalars(select(User)).one()
    assert (user.name, user.groups) == ("Alice Example", ["staff"])


def test_a_second_login_replaces_the_old_session(browser, provider, dbsession):
    sign_in(browser, provider)
    first = browser.cookies[COOKIE]
    sign_in(browser, provider)
    assert browser.cookies[COOKIE] != first
    rows = dbsession.scalars(select(UserSession).order_by(UserSession.id)).all()
    assert [r.end_reason for r in rows] == ["replaced", None]


def test_several_tabs_each_complete(browser, provider, dbsession):
    _, tab1 = start_login(browser, "/posts")
    _, tab2 = start_login(browser, "/account/sessions")
    for query, expected in [(tab2, "/account/sessions"), (tab1, "/posts")]:
        code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
        response = browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer})
        assert response.location.endswith(expected)
    assert session_count(dbsession) == 1


def test_tabs_whose_sign_ins_complete_together_leave_one_live_session(browser, provider, dbsession):
    """Restored tabs behind the provider's single sign-on: each callback arrives before any sets a
    cookie, so none replaces another's session. The browser keeps the cookie of the answer it read
    last; once that session is used well after the other's, the revoker's sweep ends the other."""
    _, tab1 = start_login(browser, "/posts")
    _, tab2 = start_login(browser, "/account/sessions")
    cookies = []
    for query in (tab1, tab2):
        browser.set_cookie(COOKIE, "")  # neither callback carries the other's cookie
        code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
        browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer}, status=303)
        cookies.append(browser.cookies[COOKIE])
    assert session_count(dbsession) == 2
    # The first answer read last: its cookie is the one kept. Both sessions were made three minutes ago.
    browser.set_cookie(COOKIE, cookies[0])
    made = utcnow() - timedelta(minutes=3)
    dbsession.execute(UserSession.__table__.update().values(created_at=made, last_seen_at=made))
    dbsession.flush()
    assert browser.json_get("/auth/user").json["sub"] == "alice"  # its use is recorded
    kept, unreachable = dbsession.scalars(select(UserSession).order_by(UserSession.id)).all()
    assert kept.browser_binding == unreachable.browser_binding is not None
    assert browser.app.registry[Services].revoker.end_expired_sessions() == 1
    dbsession.expire_all()
    assert (kept.end_reason, unreachable.end_reason) == (None, "replaced") and session_count(dbsession) == 1
    assert browser.json_get("/auth/user").json["sub"] == "alice"


@pytest.mark.parametrize(
    "payload",
    [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "https:evil.example",
        "javascript:alert(1)",
        "/%2F/evil.example",
        "%2F%2Fevil.example",
        "/\t/evil.example",
        " //evil.example",
        "\\\\evil.example",
    ],
)
def test_open_redirect_payloads_land_on_the_home_page(browser, provider, payload):
    response = sign_in(browser, provider, payload)
    assert response.location == "https://app.example.test/"


def test_next_is_read_from_the_transaction_never_the_callback(browser, provider):
    response = sign_in(browser, provider, "/posts", callback_extra={"next": "//evil.example"})
    assert response.location == "https://app.example.test/posts"


def test_a_planted_cookie_is_never_adopted(browser, provider, dbsession, make_user, session_store):
    """Fixation: whatever cookie the browser arrives with, sign-in issues a fresh id."""
    planted = "P" * 43
    browser.set_cookie(COOKIE, planted)
    sign_in(browser, provider)
    assert browser.cookies[COOKIE] != planted
    attacker = make_user("mallory")
    attacker.issuer = provider.issuer  # a session of this app's own provider, not of one since removed
    attacker_raw, _ = session_store.create(user=attacker)
    browser.set_cookie(COOKIE, attacker_raw)
    sign_in(browser, provider)
    assert browser.cookies[COOKIE] != attacker_raw
    assert session_store.dead_reason(session_store.find(attacker_raw)) == "replaced"
    assert "Alice" in browser.get("/").text


def test_provider_error_shows_a_friendly_page(browser, provider, dbsession):
    """Without iss, though the provider's metadata announces authorization_response_iss_parameter_supported
    (a code would be refused): providers leave it out of error answers (docs/architecture.md)."""
    _, query = start_login(browser, "/posts")
    page = browser.get("/auth/callback", params={"error": "access_denied", "state": query["state"]}, status=400)
    assert "Sign-in was cancelled" in page.text
    assert "/login?next=%2Fposts" in page.text
    assert_no_session(page, dbsession)
    assert failures(dbsession) == ["provider_error:access_denied"]


def test_provider_error_with_junk(app, browser, dbsession):
    page = browser.get("/auth/callback", params={"error": "<script>", "error_description": "x" * 100}, status=400)
    assert "<script>" not in page.text
    assert failures(dbsession) == [] and refusals(app, "provider_error") == 1


def test_missing_state(app, browser, provider, dbsession):
    page = browser.get("/auth/callback", params={"code": "abc"}, status=400)
    assert "Sign in again" in page.text
    assert_no_session(page, dbsession)
    assert failures(dbsession) == [] and refusals(app, "missing_state") == 1


def test_unknown_state(app, browser, provider, dbsession):
    start_login(browser)
    page = browser.get("/auth/callback", params={"code": "abc", "state": "forged"}, status=400)
    assert_no_session(page, dbsession)
    assert failures(dbsession) == [] and refusals(app, "unknown_state") == 1


def test_state_replay(browser, provider, dbsession):
    _, query = start_login(browser)
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    params = {"code": code, "state": query["state"], "iss": provider.issuer}
    browser.get("/auth/callback", params=params, status=303)
    browser.reset()
    again = browser.get("/auth/callback", params=params, status=400)
    assert "already been used" in again.text
    assert failures(dbsession) == [] and refusals(browser.app, "unknown_state") == 1


def test_state_is_single_use_even_when_the_first_attempt_failed(browser, provider, dbsession):
    _, query = start_login(browser)
    provider.token_response = lambda form: (400, {"error": "invalid_grant"})
    params = {"code": "x", "state": query["state"], "iss": provider.issuer}
    browser.get("/auth/callback", params=params, status=400)
    provider.token_response = None
    browser.get("/auth/callback", params=params, status=400)
    assert failures(dbsession) == ["token_error:invalid_grant"]
    assert refusals(browser.app, "unknown_state") == 1


def test_state_from_another_browser(app, provider, dbsession):
    victim, attacker = Browser(app), Browser(app)
    _, query = start_login(attacker)
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    page = victim.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer}, status=400)
    assert "another browser" in page.text
    assert_no_session(page, dbsession)
    assert failures(dbsession) == ["other_browser"]


def test_state_from_a_browser_with_another_binding_neither_completes_nor_cancels(app, provider, dbsession):
    victim, attacker = Browser(app), Browser(app)
    start_login(victim)
    _, query = start_login(attacker)
    assert victim.cookies["__Host-login"] != attacker.cookies["__Host-login"]
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    params = {"code": code, "state": query["state"], "iss": provider.issuer}
    victim.get("/auth/callback", params=params, status=400)
    assert attacker.get("/auth/callback", params=params, status=303)
    assert failures(dbsession) == ["other_browser"]


def test_expired_state(browser, provider, dbsession):
    _, query = start_login(browser)
    row = dbsession.scalars(select(LoginTransaction)).one()
    row.expires_at = row.created_at
    dbsession.flush()
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    page = browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer}, status=400)
    assert "took too long" in page.text
    assert failures(dbsession) == ["expired_state"]


def test_wrong_iss_parameter(browser, provider, dbsession):
    page = sign_in(browser, provider, callback_extra={"iss": "https://evil.example"})
    assert page.status_int == 400
    assert_no_session(page, dbsession)
    assert failures(dbsession) == ["bad_iss_parameter"]


def test_missing_iss_parameter_when_the_provider_sends_it(browser, provider, dbsession):
    page = sign_in(browser, provider, callback_extra={"iss": None})
    assert page.status_int == 400
    assert failures(dbsession) == ["missing_iss_parameter"]


def test_missing_iss_parameter_is_fine_when_the_provider_does_not_send_it(make_app, provider, dbsession):
    provider.metadata_overrides["authorization_response_iss_parameter_supported"] = None
    browser = Browser(make_app())
    assert sign_in(browser, provider, callback_extra={"iss": None}).status_int == 303


def test_missing_code(browser, provider, dbsession):
    _, query = start_login(browser)
    browser.get("/auth/callback", params={"state": query["state"], "iss": provider.issuer}, status=400)
    assert failures(dbsession) == ["missing_code"]


def test_wrong_pkce_verifier_is_refused_by_the_provider(browser, provider, dbsession):
    _, query = start_login(browser)
    code = provider.grant(challenge="not-the-challenge", nonce=query["nonce"])
    page = browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer}, status=400)
    assert_no_session(page, dbsession)
    assert failures(dbsession) == ["token_error:invalid_grant"]


@pytest.mark.parametrize(
    "claims, reason",
    [
        ({"iss": "https://evil.example"}, "bad_issuer"),
        ({"aud": "another-app"}, "bad_audience"),
        ({"aud": [CLIENT_ID, "another-app"]}, "untrusted_audience"),
        ({"sub": None}, "missing_sub"),
        ({"exp": int(time.time()) - 600}, "expired"),
        ({"iat": None}, "missing_iat"),
        ({"nonce": "not-the-nonce"}, "bad_nonce"),
    ],
)
def test_id_token_rejections_leave_no_session(browser, provider, dbsession, claims, reason):
    provider.id_token_claims = claims
    page = sign_in(browser, provider)
    assert page.status_int == 400
    assert "could not be verified" in page.text
    assert_no_session(page, dbsession)
    assert failures(dbsession) == [reason]
    assert dbsession.scalar(select(func.count()).select_from(User)) == 0


def test_no_token_is_used_before_every_check_passed(browser, provider, dbsession):
    provider.id_token_claims = {"aud": "another-app"}
    sign_in(browser, provider)
    assert [p for p, _, _ in provider.requests if p == "/userinfo"] == []


def test_badly_signed_id_token(browser, provider, dbsession):
    from joserfc.jwk import RSAKey

    impostor = RSAKey.generate_key(2048, parameters={"kid": "key-1"})
    forged = provider.sign(provider.claims(), key=impostor)
    provider.token_response = lambda form: (200, {"access_token": "at-x", "token_type": "Bearer", "id_token": forged})
    page = sign_in(browser, provider)
    assert page.status_int == 400
    assert_no_session(page, dbsession)
    assert failures(dbsession) == ["bad_signature"]


@pytest.mark.parametrize(
    "response, reason, status",
    [
        ((500, {"error": "server_error"}), "provider_unavailable", 503),
        ((200, "this is not json"), "token_endpoint_error", 400),
        # Nested past Python's stack: RecursionError, not ValueError, was a 500 at the callback.
        ((200, "[" * 5000), "token_endpoint_error", 400),
        ((400, "[" * 5000), "token_endpoint_error", 400),
        ((400, {"error": "invalid_grant"}), "token_error:invalid_grant", 400),
        # helper-40: a line feed in the code forged a log line; a code that is not one is "invalid"
        ((400, {"error": "x\n2026-12-05 00:00:00,000 INFO  [myapp.views.auth] FORGED"}), "token_error:invalid", 400),
        ((400, {"error": "<script>x</script>"}), "token_error:invalid", 400),
        ((200, {"access_token": "at", "token_type": "Bearer"}), "missing_id_token", 400),
        ((200, {"access_token": "at", "token_type": "Bearer", "refresh_token": 5}), "token_response_invalid", 400),
    ],
)
def test_token_endpoint_failures(browser, provider, dbsession, caplog, response, reason, status):
    provider.token_response = lambda form: response
    with caplog.at_level("INFO"):
        page = sign_in(browser, provider)
    assert page.status_int == status
    assert_no_session(page, dbsession)
    assert failures(dbsession) == [reason]
    assert "FORGED" not in caplog.text and "<script>" not in page.text


def test_token_endpoint_hang(make_app, provider, dbsession):
    browser = Browser(make_app(**{"myapp.oidc.http_timeout": "1"}))
    provider.token_delay = 5
    page = sign_in(browser, provider)
    assert page.status_int == 503
    assert "Sign-in is unavailable" in page.text
    assert failures(dbsession) == ["provider_unavailable"]


def test_provider_down_at_login_is_a_503_page(make_app, provider, dbsession):
    browser = Browser(make_app(**{"myapp.oidc.issuer": "http://127.0.0.1:9/down"}))
    page = browser.get("/login", status=503)
    assert "The sign-in provider is not available right now." in page.text


@pytest.mark.parametrize("answer", ["stall", "trickle"])
def test_a_discovery_document_that_never_ends_is_a_503_page(make_app, dbsession, answer):
    """A stall in the body was urllib3's own error (a 500); a trickle held the request as long as
    the provider liked. Both are the provider being unavailable, within myapp.oidc.http_timeout."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"

    def discovery(connection, request_head):
        if answer == "stall":
            connection.sendall(head + b'{"issuer": ')
            server.stopped.wait(5)
        else:
            trickle(connection, head + b" " * 500, server.stopped)

    server = RawServer(discovery)
    try:
        started = time.monotonic()
        page = Browser(make_app(**{"myapp.oidc.issuer": server.url, "myapp.oidc.http_timeout": "1"})).get("/login", status=503)
        assert "The sign-in provider is not available right now." in page.text
        assert time.monotonic() - started < 4
        assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0
    finally:
        server.close()


def test_discovery_issuer_mismatch_says_why(make_app, provider):
    provider.metadata_overrides["issuer"] = "https://evil.example"
    page = Browser(make_app()).get("/login", status=502)
    assert "must be identical" in page.text


def test_a_discovery_endpoint_no_url_parser_reads_is_a_502_page(make_app, provider):
    """urlsplit raised ValueError for it: a 500 at /login (helper-118)."""
    provider.metadata_overrides["authorization_endpoint"] = "https://[idp.example.test/authorize"
    page = Browser(make_app()).get("/login", status=502)
    assert "authorization_endpoint" in page.text


@pytest.mark.parametrize("written", ["\ud800", "ES256\nmyapp WARNING forged"])
def test_what_a_provider_wrote_into_a_misconfiguration_is_shown_on_one_encodable_line(make_app, provider, caplog, written):
    """The provider's DPoP algorithms went into the error page as written: a lone surrogate was a
    500 (the page could not be encoded), a line feed a forged log line (helper-127)."""
    provider.metadata_overrides["dpop_signing_alg_values_supported"] = [written]
    page = Browser(make_app(**{"myapp.oidc.dpop": "required"})).get("/login", status=502)
    assert "takes DPoP proofs only in" in page.text and "\ud800" not in page.text
    assert not any("\n" in record.getMessage() or "\ud800" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("endpoint", ["authorization_endpoint", "end_session_endpoint"])
def test_a_discovery_endpoint_with_a_fragment_is_a_502_page(make_app, provider, endpoint):
    """RFC 6749 section 3.1: no fragment. The parameters added after one never reached the provider
    (helper-127)."""
    provider.metadata_overrides[endpoint] = provider.issuer + "/authorize#frag"
    page = Browser(make_app()).get("/login", status=502)
    assert endpoint in page.text


@pytest.mark.parametrize("keys", [5, "k", {"kty": "RSA"}, None])
def test_a_key_set_whose_keys_are_no_list_has_none(make_app, provider, monkeypatch, dbsession, keys):
    """{"keys": 5} was a TypeError at the callback, a 500 (helper-118); none of them verifies a token."""
    route = provider.route

    def answer(path, form, environ, raw=""):
        if path == "/jwks":
            return 200, {"keys": keys}, "application/json"
        return route(path, form, environ, raw)

    monkeypatch.setattr(provider, "route", answer)
    page = sign_in(Browser(make_app()), provider)
    assert page.status_int == 400
    assert_no_session(page, dbsession)
    assert failures(dbsession) == ["unknown_key"]


def test_head_login_starts_nothing(browser, dbsession):
    browser.head("/login", status=200)
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 0


def test_head_on_the_callback_completes_nothing(browser, provider, dbsession):
    """No HEAD changes state: the sign-in stays open for the GET, which completes it (helper-36)."""
    _, query = start_login(browser, "/posts")
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    params = {"code": code, "state": query["state"], "iss": provider.issuer}
    response = browser.head("/auth/callback", params=params, status=200)
    assert "Set-Cookie" not in response.headers and session_count(dbsession) == 0
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 1
    assert browser.get("/auth/callback", params=params, status=303).location.endswith("/posts")
    assert session_count(dbsession) == 1


def test_oversized_callback_parameters(app, browser, dbsession):
    browser.get("/auth/callback", params={"state": "x" * 5000, "code": "y"}, status=400)
    assert failures(dbsession) == [] and refusals(app, "parameter_too_long") == 1


@pytest.mark.parametrize("name", ["state", "code", "iss", "error", "error_description"])
def test_a_callback_naming_a_parameter_twice_is_refused(browser, provider, dbsession, app, name):
    """RFC 6749 3.1: no response parameter more than once. The last copy was read: a second
    issuer, state or code put before the provider's signed the browser in (helper-132). Refused
    before the sign-in is looked up, so the provider's own answer still completes it."""
    _, query = start_login(browser, "/posts")
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    params = [("code", code), ("state", query["state"]), ("iss", provider.issuer)]
    # Before the provider's copy; an error's empty last copy hid the first (no error, the code read).
    extra = {"state": [("state", "forged")], "code": [("code", "forged")], "iss": [("iss", provider.issuer + "2")],
             "error": [("error", "access_denied"), ("error", "")],
             "error_description": [("error_description", "a"), ("error_description", "b")]}[name]
    response = browser.get("/auth/callback?" + urlencode([*extra, *params]), status=400)
    assert "malformed" in response.text and session_count(dbsession) == 0
    assert failures(dbsession) == [] and refusals(app, "parameter_repeated") == 1
    assert browser.get("/auth/callback?" + urlencode(params), status=303).location.endswith("/posts")
    assert session_count(dbsession) == 1


def test_a_flood_of_junk_callbacks_writes_no_audit_record(make_app, dbsession, caplog):
    """Anyone can call /auth/callback; only callbacks answering a sign-in started here are audited."""
    app = make_app(**{"myapp.login.rate_limit": "1000"})
    browser = Browser(app)
    caplog.set_level(logging.INFO, logger="myapp")
    for i in range(400):
        browser.get("/auth/callback", params={"state": f"junk-{i}", "code": "x"}, status=400)
    assert dbsession.scalar(select(func.count()).select_from(AuditEvent)) == 0
    assert refusals(app, "unknown_state") == 400
    assert sum("answering no sign-in started here" in r.getMessage() for r in caplog.records) == 400


def test_callbacks_are_rate_limited_per_address(make_app, provider, dbsession):
    browser = Browser(make_app(**{"myapp.login.rate_limit": "30"}))
    for i in range(30):
        browser.get("/auth/callback", params={"state": f"junk-{i}", "code": "x"}, status=400)
    page = browser.get("/auth/callback", params={"state": "junk", "code": "x"}, status=429)
    assert "Too many sign-in attempts" in page.text
    other = Browser(browser.app)
    other.extra_environ = {**other.extra_environ, "REMOTE_ADDR": "198.51.100.9"}
    other.get("/auth/callback", params={"state": "junk", "code": "x"}, status=400)
    _, query = start_login(other)
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    other.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer}, status=303)


def test_no_token_reaches_the_browser(browser, provider):
    sign_in(browser, provider)
    page_text = browser.get("/").text + browser.get("/auth/user", headers={"X-CSRF": "1"}).text
    page_text += browser.get("/account/sessions").text
    assert provider.refresh_tokens and provider.access_tokens
    issued = list(provider.refresh_tokens) + list(provider.access_tokens)
    assert not [token for token in issued if token in page_text]
    # No JWT (an ID token) either. Not "at-" or "eyJ" alone: a random CSRF token or nonce holds
    # one now and then.
    assert not re.search(r"eyJ[\w-]*\.[\w-]+\.", page_text)


@pytest.mark.parametrize("next_path", ["/\u0130", "/caf\u00e9", "/\u2028x"])
def test_non_ascii_next_falls_back_to_home_and_never_500(browser, provider, next_path):
    response = sign_in(browser, provider, next_path)
    assert response.status_int == 303
    assert response.location == "https://app.example.test/"


def test_sign_in_starts_are_rate_limited_per_address(make_app, provider, dbsession):
    browser = Browser(make_app(**{"myapp.login.rate_limit": "30"}))
    for _ in range(30):
        browser.get("/login", status=303)
    page = browser.get("/login", status=429)
    assert "Too many sign-in attempts" in page.text
    other = Browser(browser.app)
    other.extra_environ = {**other.extra_environ, "REMOTE_ADDR": "198.51.100.9"}
    other.get("/login", status=303)


def test_one_browser_keeps_at_most_ten_sign_ins_pending(browser, provider, dbsession):
    for _ in range(15):
        start_login(browser)
    assert dbsession.scalar(select(func.count()).select_from(LoginTransaction)) == 10
    assert len({row.browser_hash for row in dbsession.scalars(select(LoginTransaction))}) == 1


def test_the_session_id_comes_from_the_id_token_not_userinfo(browser, provider, dbsession):
    provider.userinfo_response = lambda token: (200, {"sub": "alice", "sid": "forged-sid"})
    sign_in(browser, provider)
    assert dbsession.scalars(select(UserSession)).one().provider_sid == provider.sid


# -- issue 10 item 7: Back after signing in --

def test_back_onto_a_spent_callback_while_signed_in_carries_on(browser, provider, dbsession):
    response, query = start_login(browser, "/posts")
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    params = {"code": code, "state": query["state"], "iss": provider.issuer}
    assert browser.get("/auth/callback", params=params, status=303).location.endswith("/posts")
    again = browser.get("/auth/callback", params=params, status=303)  # the browser's Back button
    assert again.location == TEST_PUBLIC_URL + "/"
    assert session_count(dbsession) == 1
    assert "Alice" in browser.get("/").text


def test_a_stale_callback_without_a_session_still_gets_the_error_page(browser, provider, dbsession):
    page = browser.get("/auth/callback", params={"code": "c", "state": "spent-long-ago"}, status=400)
    assert "Sign-in did not work" in page.text


def test_a_real_failure_while_signed_in_still_gets_the_error_page(browser, provider, dbsession):
    sign_in(browser, provider)
    _, query = start_login(browser)
    code = provider.grant(challenge=query["code_challenge"], nonce="not-the-one-sent")
    page = browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer}, status=400)
    assert "Sign-in did not work" in page.text


def test_after_signing_out_the_landing_page_says_so_once(browser, provider):
    sign_in(browser, provider)
    browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    page = browser.get("/", status=200)
    assert page.html.select_one("[data-testid=session-ended]").text.strip() == "You have signed out."
    assert "You have signed out" not in browser.get("/", status=200).text


def test_a_disabled_account_is_not_signed_in(app, provider, dbsession):
    """A disabled account's sign-in was recorded as a login, made a session row holding its new
    tokens (dead at once, but kept until the idle sweep), set a cookie for it, and said nothing of
    why the person was not signed in. Now it is a failed sign-in that says so, and what the
    provider issued is queued for revocation."""
    from sqlalchemy import update

    from myapp.models import TokenRevocation

    sign_in(Browser(app), provider)
    dbsession.execute(update(User).values(disabled=True))
    dbsession.flush()
    response = sign_in(Browser(app), provider)
    assert response.status_int == 403
    assert "This account is disabled" in response.text
    assert not any(v.startswith(COOKIE + "=") and "Max-Age=0" not in v for k, v in response.headerlist if k == "Set-Cookie")
    assert dbsession.scalar(select(func.count()).select_from(UserSession)) == 1
    assert failures(dbsession) == ["account_disabled"]
    refused = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "login_failed")).one()
    assert refused.user_id == dbsession.scalar(select(User.id))  # found by the audit page's filter by person
    assert dbsession.scalars(select(AuditEvent.event).where(AuditEvent.event == "login")).all() == ["login"]
    assert dbsession.scalar(select(func.count()).select_from(TokenRevocation)) == 1


def test_a_disabled_account_is_offered_a_sign_in_with_another_account(app, provider, dbsession):
    """Its page offered "Sign in again": at a provider still signed in as that person, that comes
    straight back to the same refusal. The link asks the provider to sign someone in afresh."""
    from sqlalchemy import update

    sign_in(Browser(app), provider)
    dbsession.execute(update(User).values(disabled=True))
    dbsession.flush()
    response = sign_in(Browser(app), provider, next_path="/posts")
    assert response.status_int == 403
    link = response.html.select_one("a.button-large")
    assert link.text.strip() == "Sign in with another account"
    assert parse_qs(urlsplit(link["href"]).query) == {"next": ["/posts"], "prompt": ["login"]}


def test_a_disabled_accounts_tokens_are_revoked_when_another_person_is_signed_in_in_that_browser(
    app, provider, dbsession
):
    """A refused sign-in's tokens are kept from revocation when the browser is signed in at that
    provider (a step-up of the same session there could be ended with them). A disabled account's
    sign-in is refused after its person is known: in a browser where someone else is signed in,
    in another session at the provider, its refresh token was left live at the provider, held by
    nobody. Still kept in the same session at the provider (same sid)."""
    from sqlalchemy import update

    from myapp.models import TokenRevocation

    sign_in(Browser(app), provider, sub="bob", name="Bob")
    dbsession.execute(update(User).where(User.subject == "bob").values(disabled=True))
    dbsession.flush()
    alices = Browser(app)
    sign_in(alices, provider)
    alices_sid, provider.sid = provider.sid, "sid-of-bob-at-the-provider"
    assert sign_in(alices, provider, sub="bob", name="Bob").status_int == 403
    assert dbsession.scalar(select(func.count()).select_from(TokenRevocation)) == 1
    assert "Alice" in alices.get("/").text  # still signed in
    provider.sid = alices_sid
    assert sign_in(alices, provider, sub="bob", name="Bob").status_int == 403
    assert dbsession.scalar(select(func.count()).select_from(TokenRevocation)) == 1


@pytest.mark.parametrize(
    "claims, name, email",
    [
        ({"name": "Ali\x00ce"}, "Alice", "alice@example.com"),
        ({"name": "Ali\ud800ce"}, "Ali\ufffdce", "alice@example.com"),
        ({"name": "\ud83d"}, "\ufffd", "alice@example.com"),
        ({"name": "", "preferred_username": "\x00"}, "alice@example.com", "alice@example.com"),
        ({"email": "alice\x00@example.com"}, "Alice", "alice@example.com"),
        ({"email": "alice\udfff@example.com"}, "Alice", "alice\ufffd@example.com"),
    ],
    ids=["name NUL", "name lone surrogate", "name only a surrogate", "username NUL", "email NUL", "email surrogate"],
)
def test_a_name_or_email_no_database_stores_is_cleaned_not_a_500(make_app, provider, dbsession, claims, name, email):
    """A provider lets a person put a NUL or half a UTF-16 pair (JSON's \\u0000, \\ud800) in their
    display name: PostgreSQL refuses a NUL in text and no database takes a lone surrogate, so the
    sign-in was a 500. What is shown is cleaned: controls dropped, a lone surrogate the
    replacement character. (From the ID token here; userinfo's claims go the same way.)"""
    browser = Browser(make_app(**{"myapp.oidc.fetch_userinfo": "false"}))
    response = sign_in(browser, provider, **{"name": "Alice", "email": "alice@example.com", **claims})
    assert response.status_int == 303, response.text[:300]
    user = dbsession.scalars(select(User)).one()
    assert (user.name, user.email) == (name, email)


@pytest.mark.parametrize("sub", ["ali\x00ce", "ali\ud800ce"], ids=["NUL", "lone surrogate"])
def test_a_subject_no_database_stores_is_refused_not_a_500(browser, provider, dbsession, sub):
    """The subject keys the person: it is never changed to fit, so such an ID token is refused."""
    response = sign_in(browser, provider, sub=sub)
    assert response.status_int == 400, response.text[:300]
    assert_no_session(response, dbsession)
    assert failures(dbsession) == ["missing_sub"]


@pytest.mark.parametrize("acr", ["urn:mfa\x00", "urn:\ud800"], ids=["NUL", "lone surrogate"])
def test_an_acr_no_database_stores_is_no_acr(browser, provider, dbsession, acr):
    response = sign_in(browser, provider, acr=acr)
    assert response.status_int == 303, response.text[:300]
    assert dbsession.scalars(select(UserSession)).one().acr is None


@pytest.mark.parametrize("sid", ["s\x00d", "s\ud800d"], ids=["NUL", "lone surrogate"])
def test_a_sid_no_database_stores_is_kept_as_its_digest_and_still_ends_the_session(app, provider, dbsession, sid):
    browser = Browser(app)
    provider.sid = sid
    response = sign_in(browser, provider)
    assert response.status_int == 303, response.text[:300]
    stored = dbsession.scalars(select(UserSession)).one().provider_sid
    assert stored.startswith("sha256:")
    Browser(app).post("/auth/backchannel-logout", {"logout_token": provider.logout_token(sid=sid)}, status=200)
    assert session_count(dbsession) == 0
