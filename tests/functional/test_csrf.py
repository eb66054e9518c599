"""CSRF: HTML forms carry the session's token; JSON routes need X-CSRF, a same-site Origin."""

import pytest
from sqlalchemy import select

import myapp
from myapp.models import AuditEvent, Post
from tests.conftest import TEST_PUBLIC_URL, base_settings
from tests.functional.conftest import COOKIE, HOST, Browser, dispose
from tests.support.database import RolledBackDatabase


@pytest.fixture
def alice_browser(browser, alice, sign_in):
    sign_in(browser, alice)
    return browser


def posts(dbsession):
    return dbsession.scalars(select(Post)).all()


def test_form_with_the_token_is_accepted(alice_browser, dbsession):
    alice_browser.submit("/posts", {"title": "ok"}, status=303)
    assert len(posts(dbsession)) == 1


def test_missing_token_is_refused(alice_browser, dbsession):
    page = alice_browser.submit("/posts", {"title": "x"}, csrf=False, status=400)
    assert "This form has expired" in page.text
    assert posts(dbsession) == []


def test_a_refused_form_of_a_signed_in_person_is_audited_as_a_denied_action(alice_browser, alice, dbsession):
    """SPEC.md's audit log has denied actions: a forged form (or one left open past its session) is one."""
    alice_browser.submit("/posts", {"title": "x"}, csrf=False, status=400)
    alice_browser.submit("/logout", {}, csrf=False, status=400)
    alice_browser.submit("/posts", {"title": "x"}, headers={"Origin": "https://evil.example"}, status=400)
    denials = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "access_denied").order_by(AuditEvent.id)).all()
    assert [(d.user_id, d.actor_id, d.detail) for d in denials] == [
        (alice.id, alice.id, "POST /posts (no valid CSRF token)"),
        (alice.id, alice.id, "POST /logout (no valid CSRF token)"),
        (alice.id, alice.id, "POST /posts (sent from another origin)"),
    ]
    assert posts(dbsession) == []
    alice_browser.get("/posts", status=200)  # still signed in


def test_wrong_token_is_refused(alice_browser, dbsession):
    alice_browser.submit("/posts", {"title": "x", "csrf_token": "wrong"}, status=400)
    alice_browser.submit("/posts", {"title": "x", "csrf_token": ""}, status=400)
    alice_browser.submit("/posts", {"title": "x", "csrf_token": "é" * 43}, status=400)
    assert posts(dbsession) == []


def test_another_sessions_token_is_refused(alice_browser, dbsession, session_store, bob):
    _, bobs = session_store.create(user=bob)
    alice_browser.submit("/posts", {"title": "x", "csrf_token": bobs.csrf_token}, status=400)
    assert posts(dbsession) == []


def test_token_in_header_works_too(alice_browser, dbsession):
    alice_browser.post(
        "/posts",
        {"title": "via header"},
        headers={"X-CSRF-Token": alice_browser.csrf_token, "Origin": TEST_PUBLIC_URL},
        status=303,
    )
    assert len(posts(dbsession)) == 1


def test_cross_origin_form_is_refused_even_with_the_token(alice_browser, dbsession):
    alice_browser.submit("/posts", {"title": "x"}, headers={"Origin": "https://evil.example"}, status=400)
    alice_browser.post("/posts", {"title": "x", "csrf_token": alice_browser.csrf_token}, status=400)
    assert posts(dbsession) == []


def test_logout_style_forms_are_post_only(alice_browser):
    alice_browser.get("/account/sessions/revoke-others", status=405)


class TestJSONRoutes:
    def test_auth_user_needs_the_header(self, alice_browser):
        response = alice_browser.get("/auth/user", status=403)
        assert response.json == {"error": "csrf_failed", "message": "Request refused: the X-CSRF: 1 header is required."}

    def test_auth_user_cross_site_refused(self, alice_browser):
        response = alice_browser.get("/auth/user", headers={"X-CSRF": "1", "Sec-Fetch-Site": "cross-site"}, status=403)
        assert response.json["error"] == "csrf_failed"

    def test_auth_user_ok(self, alice_browser, alice):
        data = alice_browser.json_get("/auth/user").json
        assert data["sub"] == "alice"
        assert data["name"] == "Alice"
        assert data["email"] == "alice@example.test"
        assert data["groups"] == ["staff"]
        assert data["logout_url"] == TEST_PUBLIC_URL + "/logout"
        assert data["csrf_token"] == alice_browser.csrf_token
        assert set(data["session"]) == {"expires_at", "idle_expires_at"}
        assert set(data) == {"sub", "name", "email", "groups", "logout_url", "csrf_token", "session"}

    def test_auth_user_anonymous_is_401_json(self, browser):
        response = browser.json_get("/auth/user", status=401)
        assert response.json == {"error": "login_required", "message": "Sign in to continue."}
        assert response.headers["Cache-Control"] == "no-store"

    def test_auth_user_anonymous_without_header_is_refused_first(self, browser):
        assert browser.get("/auth/user", status=403).json["error"] == "csrf_failed"

    def test_a_refused_call_that_would_change_something_is_audited_as_a_denied_action(
        self, alice_browser, alice, make_browser, dbsession
    ):
        """As a refused form is: the session's cookie goes only with same-site calls of these
        methods, so such a call is forged (from another origin of the site) or broken browser code."""
        alice_browser.post("/api/demo/notes", "{}", headers={"Origin": TEST_PUBLIC_URL}, status=403)
        alice_browser.delete("/api/demo/notes/1", headers={"X-CSRF": "1", "Origin": "https://evil.example.test"}, status=403)
        alice_browser.put("/api/demo/notes/1", "{}", headers={"X-CSRF": "1", "Sec-Fetch-Site": "cross-site"}, status=403)
        # Not audited: a safe method (an address opened in the address bar, or linked from any
        # website, which could otherwise write records in her name), and nobody signed in.
        alice_browser.get("/auth/user", status=403)
        alice_browser.get("/api/demo/notes", status=403)
        make_browser().post("/api/demo/notes", "{}", status=403)
        denials = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "access_denied").order_by(AuditEvent.id)).all()
        assert [(d.user_id, d.actor_id, d.detail) for d in denials] == [
            (alice.id, alice.id, "POST /api/demo/notes (the X-CSRF: 1 header is required)"),
            (alice.id, alice.id, "DELETE /api/demo/notes/1 (the Origin header does not match this site)"),
            (alice.id, alice.id, "PUT /api/demo/notes/1 (cross-site requests are refused)"),
        ]
        alice_browser.json_get("/auth/user", status=200)  # still signed in


class TestAPublicURLWrittenWithItsDefaultPort:
    """myapp.public_url = HTTPS://App.Example.test:443/ is the site browsers call https://app.example.test."""

    @pytest.fixture
    def browser(self, engine, database_url, connection):
        settings = base_settings(database_url, **{"myapp.public_url": "HTTPS://App.Example.test:443/"})
        app = myapp.make_app(settings, database=RolledBackDatabase(engine).bind(connection))
        yield Browser(app)
        dispose(app)

    @pytest.mark.parametrize("origin", [TEST_PUBLIC_URL, "https://app.example.test:443"])
    def test_the_browsers_origin_is_accepted(self, browser, origin):
        response = browser.post("/api/demo/items", headers={"X-CSRF": "1", "Origin": origin}, status=401)
        assert response.json["error"] == "login_required"

    @pytest.mark.parametrize(
        "origin", ["https://evil.example", "http://app.example.test", "https://app.example.test:8443",
                   "https://app.example.test.evil.example", "null", "https://evil.example@app.example.test",
                   "https://app.example.test?"],
    )
    def test_a_foreign_origin_is_still_refused(self, browser, origin):
        response = browser.post("/api/demo/items", headers={"X-CSRF": "1", "Origin": origin}, status=403)
        assert response.json["error"] == "csrf_failed"

    def test_redirects_and_links_name_the_origin_browsers_use(self, browser, alice, sign_in, dbsession):
        assert browser.get("/posts", status=303).location == TEST_PUBLIC_URL + "/login?next=%2Fposts"
        sign_in(browser, alice)
        assert browser.json_get("/auth/user").json["logout_url"] == TEST_PUBLIC_URL + "/logout"
        response = browser.submit("/posts", {"title": "from a form"}, status=303)
        assert response.location.startswith(f"{TEST_PUBLIC_URL}/posts/{posts(dbsession)[0].id}?")


@pytest.mark.parametrize("sent", ["an older session's token", "no token", "another origin"])
def test_a_refused_sign_out_offers_a_sign_out_of_the_current_session(alice_browser, dbsession, session_store, alice, sent):
    """A Sign out on a page from before the current sign-in carries the old session's token: it
    was refused with "This form has expired" and "reload the page". It is still refused (a forged
    sign-out must sign nothing out), and the page now offers a form of the current session."""
    import re

    from myapp.models import UserSession
    from myapp.services.sessions import EndReason

    _, older = session_store.create(user=alice)
    session_store.end(older, EndReason.LOGOUT)
    data = {"an older session's token": {"csrf_token": older.csrf_token}, "no token": {}}.get(
        sent, {"csrf_token": alice_browser.csrf_token})
    headers = {"Origin": "https://evil.example"} if sent == "another origin" else {}
    page = alice_browser.submit("/logout", data, csrf=False, headers=headers, status=400)
    assert "This form has expired" not in page.text
    assert "<h1 id=\"sign-out-title\">Sign out?</h1>" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    live = dbsession.scalars(select(UserSession).where(UserSession.ended_at.is_(None))).all()
    assert len(live) == 1, "the refused sign-out signed out"
    form = re.search(r'<section class="card message-page".*?</section>', page.text, re.S).group(0)
    assert f'value="{alice_browser.csrf_token}"' in form and 'action="/logout"' in form
    if sent != "another origin":
        assert older.csrf_token not in page.text
    # The offered form is the current session's: sent from this site, it signs out.
    alice_browser.submit("/logout", {"csrf_token": alice_browser.csrf_token}, csrf=False, status=303)
    dbsession.expire_all()
    assert dbsession.scalars(select(UserSession).where(UserSession.ended_at.is_(None))).all() == []


def test_a_refused_sign_out_of_no_session_offers_nothing(browser):
    """Without a session a sign-out has nothing to refuse: it lands on the landing page, as before."""
    assert browser.post("/logout", {"csrf_token": "stale"}, headers={"Origin": "https://evil.example"}, status=303).location == TEST_PUBLIC_URL + "/"


def post_behind_a_proxy(browser, raw_id, url, data, *, host, scheme="https", origin=TEST_PUBLIC_URL, referer=None):
    """A form sent as a reverse proxy passes it on: ``host`` the Host it gives the app (the
    browser's, or its own address when it does not preserve Host), ``scheme`` what its
    X-Forwarded-Proto made of the request (http when it sends none)."""
    headers = {"Cookie": f"{COOKIE}={raw_id}"}
    if origin is not None:
        headers["Origin"] = origin
    if referer is not None:
        headers["Referer"] = referer
    return browser.post(
        url, data, headers=headers, extra_environ={"HTTP_HOST": host, "wsgi.url_scheme": scheme}, expect_errors=True
    )


class TestAFormsOriginIsThePublicURLs:
    """A form's origin is checked against myapp.public_url, as the JSON rule's is, never against the
    request's Host: a reverse proxy that does not preserve Host gave every form (a post, a sign-out)
    "This form has expired"; one that passes no X-Forwarded-Proto left it unchecked; and an Origin
    equal to whatever Host the request named was taken for this site."""

    @pytest.fixture
    def signed_in(self, browser, alice, sign_in):
        raw_id, row = sign_in(browser, alice)
        return raw_id, row.csrf_token

    @pytest.mark.parametrize("host", [HOST, "127.0.0.1:6543"], ids=["Host preserved", "Host not preserved"])
    @pytest.mark.parametrize("referer", [None, TEST_PUBLIC_URL + "/posts/new"], ids=["Origin", "Referer"])
    def test_a_form_from_this_site_is_accepted_behind_any_proxy(self, browser, signed_in, dbsession, host, referer):
        raw_id, token = signed_in
        origin = None if referer else TEST_PUBLIC_URL
        response = post_behind_a_proxy(
            browser, raw_id, "/posts", {"title": "through a proxy", "csrf_token": token}, host=host, origin=origin,
            referer=referer,
        )
        assert response.status_int == 303, response.text
        assert [p.title for p in posts(dbsession)] == ["through a proxy"]

    @pytest.mark.parametrize(
        ("host", "scheme", "origin", "referer"),
        [
            ("evil.example", "https", "https://evil.example", None),
            ("127.0.0.1:6543", "https", "https://127.0.0.1:6543", None),
            ("127.0.0.1:6543", "http", "https://evil.example", None),
            ("127.0.0.1:6543", "http", "null", None),
            ("127.0.0.1:6543", "https", None, "https://evil.example/page"),
            (HOST, "https", None, "https://[app.example.test/posts"),
            (HOST, "http", "http://app.example.test", None),
            ("127.0.0.1:6543", "https", None, None),
            (HOST, "https", "https://evil.example@app.example.test", None),
            (HOST, "https", None, "https://evil.example@app.example.test/posts/new"),
        ],
        ids=["Origin the request's Host", "Origin the proxy's address", "no X-Forwarded-Proto", "Origin null",
             "Referer of another site", "Referer unreadable", "http Origin of the host", "neither",
             "Origin with userinfo", "Referer with userinfo"],
    )
    def test_a_form_from_anywhere_else_is_refused(self, browser, signed_in, alice, dbsession, host, scheme, origin,
                                                    referer):
        raw_id, token = signed_in
        response = post_behind_a_proxy(
            browser, raw_id, "/posts", {"title": "forged", "csrf_token": token}, host=host, scheme=scheme,
            origin=origin, referer=referer,
        )
        assert response.status_int == 400 and "This form has expired" in response.text
        assert posts(dbsession) == []
        denial = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "access_denied")).one()
        # The audit says which: a form that names no origin at all is not one sent from elsewhere.
        reason = "missing Origin or Referer" if (origin, referer) == (None, None) else "sent from another origin"
        assert (denial.user_id, denial.detail) == (alice.id, f"POST /posts ({reason})")

    def test_a_form_with_an_empty_origin_is_refused_over_plain_http_too(self, browser, signed_in, alice, dbsession):
        """An empty Origin was read as none: over plain http its Referer went unchecked and the
        token decided. The JSON rule refuses it; so does the form's now, saying so in the audit."""
        raw_id, token = signed_in
        response = post_behind_a_proxy(
            browser, raw_id, "/posts", {"title": "forged", "csrf_token": token}, host="127.0.0.1:6543",
            scheme="http", origin="", referer="http://evil.example/page",
        )
        assert response.status_int == 400 and "This form has expired" in response.text
        assert posts(dbsession) == []
        denial = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "access_denied")).one()
        assert (denial.user_id, denial.detail) == (alice.id, "POST /posts (an empty Origin header)")

    def test_a_form_naming_no_origin_over_plain_http_is_judged_by_its_token_as_before(self, browser, signed_in, dbsession):
        """A client that sends neither Origin nor Referer (a script with requests or WebTest, an old
        browser whose Referer is stripped) reaching the app over plain http (a proxy that sends no
        X-Forwarded-Proto): Pyramid's check let it through to the token, and so must ours; it was
        refused as 'missing Origin or Referer' after 4074401. Over https it still is (above)."""
        raw_id, token = signed_in
        response = post_behind_a_proxy(
            browser, raw_id, "/posts", {"title": "by a script", "csrf_token": token}, host="127.0.0.1:6543",
            scheme="http", origin=None,
        )
        assert response.status_int == 303, response.text
        assert [p.title for p in posts(dbsession)] == ["by a script"]
        forged = post_behind_a_proxy(
            browser, raw_id, "/posts", {"title": "forged", "csrf_token": "wrong"}, host="127.0.0.1:6543",
            scheme="http", origin=None,
        )
        assert forged.status_int == 400 and "This form has expired" in forged.text
        assert [p.title for p in posts(dbsession)] == ["by a script"]
