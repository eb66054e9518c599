"""Sign-out (RP-initiated logout) through the whole app, against a programmable provider."""

import logging
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, update

from myapp.models import AuditEvent, UserSession
from myapp.services import Services
from tests.conftest import TEST_PUBLIC_URL
from tests.functional.auth.flows import (
    csrf_of,
    session_count,
    sign_in,
    start_login,
)
from tests.functional.conftest import COOKIE, Browser
from tests.support.fake_provider import CLIENT_ID, CLIENT_SECRET


def test_logout_ends_everything(browser, provider, dbsession):
    sign_in(browser, provider)
    refresh_token = list(provider.refresh_tokens)[-1]
    response = browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    location = urlsplit(response.location)
    assert response.location.startswith(provider.issuer + "/logout?")
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["post_logout_redirect_uri"] == TEST_PUBLIC_URL + "/"
    assert query["client_id"] == CLIENT_ID
    assert query["id_token_hint"].count(".") == 2
    assert any(v.startswith(COOKIE + "=;") for k, v in response.headerlist if k == "Set-Cookie")
    assert provider.revoked == [refresh_token]
    assert session_count(dbsession) == 0
    assert dbsession.scalars(select(UserSession)).one().refresh_token is None
    assert "logout" in dbsession.scalars(select(AuditEvent.event)).all()
    browser.get("/posts", status=303)


def test_logout_without_end_session_endpoint_goes_home(make_app, provider):
    provider.metadata_overrides["end_session_endpoint"] = None
    browser = Browser(make_app())
    sign_in(browser, provider)
    response = browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert response.location == "https://app.example.test/"


@pytest.mark.parametrize("trouble", ["status", "delay"])
def test_logout_does_not_wait_for_a_failing_provider(make_app, provider, dbsession, trouble):
    browser = Browser(make_app(**{"myapp.oidc.http_timeout": "1"}))
    sign_in(browser, provider)
    if trouble == "status":
        provider.revocation_status = 503
    else:
        provider.revocation_delay = 5
    started = time.monotonic()
    browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert time.monotonic() - started < 4
    assert session_count(dbsession) == 0


def test_logout_needs_the_csrf_token(browser, provider, dbsession):
    sign_in(browser, provider)
    browser.post("/logout", {"csrf_token": "wrong"}, headers={"Origin": TEST_PUBLIC_URL}, status=400)
    browser.post("/logout", {}, headers={"Origin": TEST_PUBLIC_URL}, status=400)
    assert session_count(dbsession) == 1


def test_logout_refuses_a_cross_site_origin(browser, provider, dbsession):
    sign_in(browser, provider)
    browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": "https://evil.example"}, status=400)
    assert session_count(dbsession) == 1


def test_logout_is_post_only(browser, provider, dbsession):
    sign_in(browser, provider)
    browser.get("/logout", status=405)
    assert session_count(dbsession) == 1


def test_logout_when_already_signed_out(browser, provider, dbsession):
    sign_in(browser, provider)
    dbsession.execute(update(UserSession).values(ended_at=UserSession.created_at, end_reason="revoked"))
    dbsession.flush()
    response = browser.post("/logout", status=303)
    assert response.location == "https://app.example.test/"
    # The browser's cookie, naming a session no longer live, is cleared.
    assert [v for k, v in response.headerlist if k == "Set-Cookie" and v.startswith(COOKIE + "=;")]


@pytest.mark.parametrize(
    "cookies",
    [
        "",  # what the browser sends with another site's form: no cookie of ours
        # Other cookies (SameSite=None, set for a parent domain) whose name ends with the session
        # cookie's, or whose value holds it (helper-111).
        f"x{COOKIE}=1",
        f"return=/x?{COOKIE}=1",
        # Inside another cookie's value, which WebOb read as the session cookie (helper-114).
        f"a=x {COOKIE}=1",
        f'a="x,{COOKIE}=1"',
    ],
)
def test_another_sites_form_cannot_sign_a_person_out_in_their_browser(browser, provider, dbsession, cookies):
    """Another site's form posted to /logout arrives without the session cookie (SameSite: a
    browser sends none with a cross-site POST), and the browser would take the answer's
    Set-Cookie: clearing it signed the person out in their browser, with no token of ours, and
    left the session live on the server (helper-108)."""
    sign_in(browser, provider)
    cookie = browser.cookies[COOKIE]
    elsewhere = Browser(browser.app)
    headers = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    response = elsewhere.post("/logout", {}, headers={**headers, **({"Cookie": cookies} if cookies else {})}, status=303)
    assert response.location == "https://app.example.test/"
    assert not [v for k, v in response.headerlist if k == "Set-Cookie"]
    assert session_count(dbsession) == 1
    browser.set_cookie(COOKIE, cookie)
    browser.get("/auth/user", headers={"X-CSRF": "1"}, status=200)


# A name a browser keeps apart from the session cookie's: U+00A0 before it, as the UTF-8 bytes C2 A0
# that waitress carries in the environ as latin-1. It does not start with __Host-, so any site of a
# parent domain may set it, and set after the person signed in it is sent after ours (helper-115).
LOOK_ALIKE = "\u00a0".encode().decode("latin-1") + COOKIE


def _cleared(response) -> list[str]:
    return [v for k, v in response.headerlist if k == "Set-Cookie" and v.startswith(COOKIE + "=;")]


@pytest.mark.parametrize("other", [f"{LOOK_ALIKE}=x", "\x0b" + COOKIE + "=x", "junk=\xff", "junk=\xc3"])
def test_another_sites_cookie_neither_replaces_the_session_cookie_nor_clears_it(browser, provider, dbsession, other):
    """A look-alike name (str.strip() took U+00A0 and its kin away, so it was read as ours), or a
    cookie that is not UTF-8 (a browser sends another site's bytes as they were set, and a header
    decoded whole made ours unreadable): either answered 401 and cleared the session cookie, in
    every request of that browser, the session left live on the server (helper-115)."""
    sign_in(browser, provider)
    header = f"{COOKIE}={browser.cookies[COOKIE]}; {other}"
    response = Browser(browser.app).get("/auth/user", headers={"Cookie": header, "X-CSRF": "1"}, status=200)
    assert response.json["sub"] == "alice"
    assert not _cleared(response)


def test_a_look_alike_cookie_cannot_fix_another_persons_session(make_app, provider, dbsession):
    app = make_app()
    attacker, victim = Browser(app), Browser(app)
    sign_in(attacker, provider, sub="attacker-sub", name="Mallory")
    sign_in(victim, provider, sub="victim-sub", name="Alice")
    header = f"{COOKIE}={victim.cookies[COOKIE]}; {LOOK_ALIKE}={attacker.cookies[COOKIE]}"
    assert Browser(app).get("/auth/user", headers={"Cookie": header, "X-CSRF": "1"}).json["sub"] == "victim-sub"


def test_nothing_secret_is_logged_or_audited(browser, provider, caplog, dbsession):
    caplog.set_level(logging.DEBUG)
    response, query = start_login(browser)
    binding = browser.cookies["__Host-login"]
    code = provider.grant(challenge=query["code_challenge"], nonce=query["nonce"])
    browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer})
    cookie = browser.cookies[COOKIE]
    browser.get("/auth/callback", params={"code": code, "state": query["state"], "iss": provider.issuer}, status=303)  # a replay in a signed-in browser carries on (issue 10 item 7)
    token_request = [form for path, form, _ in provider.requests if path == "/token"][0]
    browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL})
    userinfo_headers = [h for path, _, h in provider.requests if path == "/userinfo"][0]
    access_token = userinfo_headers["HTTP_AUTHORIZATION"].removeprefix("Bearer ")
    secrets_seen = [
        code, query["state"], query["nonce"], token_request["code_verifier"], cookie, binding, access_token,
        CLIENT_SECRET, *provider.used_refresh_tokens, *provider.refresh_tokens, *provider.revoked,
    ]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    audited = "\n".join(f"{e.detail} {e.session_handle}" for e in dbsession.scalars(select(AuditEvent)))
    for secret in secrets_seen:
        assert secret and secret not in logged and secret not in audited
    assert "eyJ" not in logged and "eyJ" not in audited
    assert "authlib" not in {r.name.split(".")[0] for r in caplog.records if r.levelno < logging.INFO}


def test_logout_form_may_redirect_to_a_logout_endpoint_on_another_origin(make_app, provider):
    provider.metadata_overrides["end_session_endpoint"] = "https://logout.example.test/end"
    browser = Browser(make_app())
    assert "https://logout.example.test" not in browser.get("/").headers["Content-Security-Policy"]
    sign_in(browser, provider)
    csp = browser.get("/").headers["Content-Security-Policy"]
    assert "https://logout.example.test" in csp.split("form-action")[1].split(";")[0]


def test_a_process_that_has_not_read_discovery_reads_it_ahead_for_the_sign_out_form(make_app, provider):
    """A session signed in through another process (or before a restart): its pages' sign-out
    form redirects to the end-session endpoint, whose origin the next page names (helper-38;
    it stayed out until something in this process happened to read discovery)."""
    provider.metadata_overrides["end_session_endpoint"] = "https://logout.example.test/end"
    browser = Browser(make_app())
    sign_in(browser, provider)
    browser.app = restarted = make_app()
    assert "Alice" in browser.get("/").text  # without waiting for the provider: read on a thread
    deadline = time.monotonic() + 10
    while restarted.registry[Services].providers.first.documents.cached_metadata is None:
        assert time.monotonic() < deadline, "discovery was not read ahead"
        time.sleep(0.02)
    csp = browser.get("/account/sessions").headers["Content-Security-Policy"]
    assert "https://logout.example.test" in csp.split("form-action")[1].split(";")[0]


@pytest.mark.parametrize("lock", ["taken", "unavailable"])
def test_two_sign_outs_of_one_session_at_once_are_one_logout(make_app, provider, dbsession, lock):
    """A double click, two tabs, or two processes: both requests pass the CSRF check on the live
    session; the one that ends it second ends nothing, so it records no second logout and revokes
    nothing (seen live, helper-62: two LOGOUT audit records for each of three sign-outs posted twice
    at once to two processes)."""
    from myapp.errors import ServiceUnavailable
    from myapp.services.sessions import EndReason

    app = make_app()
    browser = Browser(app)
    sign_in(browser, provider)
    own = list(provider.refresh_tokens)[-1]
    tokens = app.registry[Services].tokens
    first_end = tokens.end_session

    def ended_by_the_other_request_first(session_id, reason):
        first_end(session_id, reason)
        if lock == "unavailable":
            raise ServiceUnavailable("The refresh lock (Redis) is unavailable.")
        return first_end(session_id, reason)

    tokens.end_session = ended_by_the_other_request_first
    try:
        browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    finally:
        del tokens.end_session
    assert dbsession.scalars(select(AuditEvent.event).where(AuditEvent.event == "logout")).all() == []
    # This session's: an earlier test's app may still be revoking what its sessions queued.
    assert own not in provider.revoked
    assert dbsession.scalars(select(UserSession.end_reason)).one() == EndReason.LOGOUT
    assert dbsession.scalars(select(UserSession.refresh_token)).one() is None


def test_the_sign_out_form_is_sent_once(browser, provider):
    """A double click sent two sign-outs: the second, answered after the first had ended the
    session, sent the browser home (it follows the last answer) instead of to the provider, which
    kept the person signed in there (app.js sends a form marked data-submit-once once)."""
    sign_in(browser, provider)
    page = browser.get("/posts", status=200)
    (form,) = [f for f in page.html.find_all("form") if f.get("action") == "/logout"]
    assert form.has_attr("data-submit-once")


def signed_out_without_the_answer(browser, provider):
    """Sign in and out, the browser never having the sign-out's answer (Stop pressed, the
    connection lost): the session ended here, the cookie still naming it. The page's token."""
    sign_in(browser, provider)
    cookie, token = browser.cookies[COOKIE], csrf_of(browser)
    browser.refresh_token = list(provider.refresh_tokens)[-1]
    first = browser.post("/logout", {"csrf_token": token}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert "id_token_hint=" in first.location
    browser.set_cookie(COOKIE, cookie)
    browser.set_cookie(f"{COOKIE}-signed-out", "")
    return token


def test_sign_out_pressed_again_after_its_answer_was_lost_goes_on_to_the_provider(browser, provider, dbsession):
    """The second press went home: the provider's sign-out, which only the first answer named,
    was never reached, and the person stayed signed in there. From a page of that session (its
    token, this site) it now goes on to it, without the ID token (gone with the session: the
    provider asks), and ends or records nothing more."""
    token = signed_out_without_the_answer(browser, provider)
    again = browser.post("/logout", {"csrf_token": token}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    query = {k: v[0] for k, v in parse_qs(urlsplit(again.location).query).items()}
    assert again.location.startswith(provider.issuer + "/logout?")
    assert query == {"client_id": CLIENT_ID, "post_logout_redirect_uri": TEST_PUBLIC_URL + "/"}
    set_cookies = [v for k, v in again.headerlist if k == "Set-Cookie"]
    assert any(v.startswith(COOKIE + "=;") for v in set_cookies)
    assert any(v.startswith(f"{COOKIE}-signed-out=1;") for v in set_cookies)
    assert provider.revoked.count(browser.refresh_token) == 1
    assert dbsession.scalars(select(AuditEvent.event).where(AuditEvent.event == "logout")).all() == ["logout"]
    assert "You have signed out." in browser.get("/").text


@pytest.mark.parametrize("sent", ["another page's token", "no token", "another origin", "no origin"])
def test_sign_out_pressed_again_goes_home_unless_sent_from_a_page_of_that_session(browser, provider, sent):
    """A third party cannot send a signed-out browser to the provider's sign-out: without that
    session's token from this site, such a sign-out goes home as before, and says nothing."""
    token = signed_out_without_the_answer(browser, provider)
    data = {"csrf_token": "x" * len(token)} if sent == "another page's token" else {} if sent == "no token" else {"csrf_token": token}
    headers = {"Origin": "https://evil.example"} if sent == "another origin" else {} if sent == "no origin" else {"Origin": TEST_PUBLIC_URL}
    again = browser.post("/logout", data, headers=headers, status=303)
    assert again.location == TEST_PUBLIC_URL + "/"
    assert not any(v.startswith(f"{COOKIE}-signed-out=1") for k, v in again.headerlist if k == "Set-Cookie")


@pytest.mark.parametrize("reason", ["revoked", "revoked_by_admin", "backchannel", "replaced"])
def test_a_sign_out_of_a_session_ended_otherwise_goes_home(browser, provider, dbsession, reason):
    """Only a sign-out here ends a session with its answer on the way to the browser; a session
    ended any other way was never on its way to the provider's sign-out: home, as before."""
    sign_in(browser, provider)
    token = csrf_of(browser)
    dbsession.execute(update(UserSession).values(ended_at=UserSession.created_at, end_reason=reason))
    dbsession.flush()
    again = browser.post("/logout", {"csrf_token": token}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert again.location == TEST_PUBLIC_URL + "/"


def sign_out_behind_a_proxy(browser, token, *, host, scheme="https", origin=TEST_PUBLIC_URL):
    """Sign out as a reverse proxy passes it on: ``host`` the Host it gives the app (its own
    address when it does not preserve Host), ``scheme`` what X-Forwarded-Proto made of it."""
    headers = {"Cookie": f"{COOKIE}={browser.cookies[COOKIE]}", "Origin": origin}
    return browser.post(
        "/logout", {"csrf_token": token}, headers=headers, extra_environ={"HTTP_HOST": host, "wsgi.url_scheme": scheme},
        expect_errors=True,
    )


@pytest.mark.parametrize("host", ["app.example.test", "127.0.0.1:6543"], ids=["Host preserved", "Host not preserved"])
def test_sign_out_from_this_site_works_behind_any_proxy(browser, provider, dbsession, host):
    """/logout compared the form's Origin with the request's Host, not with myapp.public_url as
    every other check does: behind a proxy that does not preserve Host, Sign out was refused."""
    sign_in(browser, provider)
    response = sign_out_behind_a_proxy(browser, csrf_of(browser), host=host)
    assert response.status_int == 303 and response.location.startswith(provider.issuer + "/logout?")
    assert session_count(dbsession) == 0


@pytest.mark.parametrize(
    ("host", "scheme", "origin"),
    [("evil.example", "https", "https://evil.example"), ("127.0.0.1:6543", "http", "https://evil.example")],
    ids=["Origin the request's Host", "no X-Forwarded-Proto"],
)
def test_sign_out_from_another_origin_is_refused_behind_any_proxy(browser, provider, dbsession, host, scheme, origin):
    sign_in(browser, provider)
    response = sign_out_behind_a_proxy(browser, csrf_of(browser), host=host, scheme=scheme, origin=origin)
    assert response.status_int == 400 and "Sign out?" in response.text
    assert session_count(dbsession) == 1


def test_sign_out_pressed_again_goes_on_to_the_provider_behind_a_proxy_not_preserving_host(browser, provider):
    token = signed_out_without_the_answer(browser, provider)
    again = sign_out_behind_a_proxy(browser, token, host="127.0.0.1:6543")
    assert again.status_int == 303 and again.location.startswith(provider.issuer + "/logout?")
    token = signed_out_without_the_answer(browser, provider)
    again = sign_out_behind_a_proxy(browser, token, host="evil.example", origin="https://evil.example")
    assert again.location == TEST_PUBLIC_URL + "/"


def test_a_sign_out_naming_no_origin_over_plain_http_is_judged_by_its_token_as_before(browser, provider, dbsession):
    """A sign-out with the token but neither Origin nor Referer (a script, an old browser) reaching
    the app over plain http: Pyramid's check let it through and so must ours (it was refused after
    4074401); over https it is still refused."""
    sign_in(browser, provider)
    cookie = {"Cookie": f"{COOKIE}={browser.cookies[COOKIE]}"}
    refused = browser.post(
        "/logout", {"csrf_token": csrf_of(browser)}, headers=cookie, extra_environ={"wsgi.url_scheme": "https"},
        expect_errors=True,
    )
    assert refused.status_int == 400 and session_count(dbsession) == 1
    response = browser.post(
        "/logout", {"csrf_token": csrf_of(browser)}, headers=cookie, extra_environ={"wsgi.url_scheme": "http"},
        expect_errors=True,
    )
    assert response.status_int == 303 and response.location.startswith(provider.issuer + "/logout?")
    assert session_count(dbsession) == 0
