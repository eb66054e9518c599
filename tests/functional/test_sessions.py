"""The session cookie: what authenticates, what does not, and how sessions end."""

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

import myapp
from myapp.models import AuditEvent, User, UserSession
from myapp.models.meta import utcnow
from myapp.services.sessions import hash_session_id
from tests.functional.conftest import COOKIE, Browser, dispose
from tests.support.database import RolledBackDatabase


def set_cookie_headers(response):
    return [v for k, v in response.headerlist if k.lower() == "set-cookie"]


def test_a_session_row_authenticates_the_browser(browser, alice, sign_in):
    sign_in(browser, alice)
    page = browser.get("/")
    assert 'data-testid="dashboard-user">Alice<' in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "Cookie" in page.headers["Vary"]


def test_the_database_holds_only_the_hash(browser, alice, sign_in, dbsession):
    raw_id, _ = sign_in(browser, alice)
    browser.get("/")
    rows = dbsession.execute(select(UserSession.__table__)).mappings().all()
    assert len(rows) == 1
    assert rows[0]["id_hash"] == hash_session_id(raw_id)
    assert all(raw_id not in str(value) for row in rows for value in row.values())


@pytest.mark.parametrize(
    "cookie",
    [
        "",
        "x",
        "a" * 10_000,
        "Zm9v" * 11,
        "' OR '1'='1' -- aaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "%27%3B%20DROP%20TABLE%20sessions%3B--",
        "\u00e9\u00e8" * 20,
        "A" * 43,
    ],
)
def test_garbage_cookies_are_no_session_and_are_cleared(browser, cookie):
    browser.set_cookie(COOKIE, cookie)
    page = browser.get("/")
    assert "Sign in once" in page.text
    cleared = set_cookie_headers(page)
    assert cleared and cleared[0].startswith(f"{COOKIE}=;") and "Max-Age=0" in cleared[0]
    browser.get("/posts", status=303)


def test_raw_garbage_cookie_header_never_500(browser):
    for header in [
        f"{COOKIE}=" + "\x7f" * 50,
        f'{COOKIE}="unterminated',
        f"{COOKIE}={'b' * 50000}",
        ";;;===;;",
        f"{COOKIE}=a; {COOKIE}=b",
    ]:
        browser.get("/", headers={"Cookie": header}, status=200)
        browser.get("/posts", headers={"Cookie": header}, status=303)
        browser.get("/auth/user", headers={"Cookie": header, "X-CSRF": "1"}, status=401)


def test_a_dead_cookie_is_cleared_and_says_why(browser, alice, sign_in, session_store):
    _, row = sign_in(browser, alice)
    session_store.end(row, "revoked")
    response = browser.get("/posts", status=303)
    assert "/signed-out?reason=revoked&next=%2Fposts" in response.location
    assert any(h.startswith(f"{COOKIE}=;") for h in set_cookie_headers(response))
    page = browser.get(response.location)
    assert "signed out from your list of sessions" in page.text
    assert "/login?next=%2Fposts" in page.text


def test_a_dead_cookie_cleared_by_a_script_leaves_the_reason_for_the_signed_out_page_once(
    browser, alice, sign_in, session_store
):
    """The back/forward-cache check (app.js) asks /auth/user, whose 401 clears the cookie: the
    signed-out page it opens next said only "Your session has ended.". The clearing answer now
    leaves the reason for that page (a minute, a fixed key), which shows it once and takes it away."""
    _, row = sign_in(browser, alice)
    session_store.end(row, "revoked_by_admin")
    response = browser.get("/auth/user", headers={"X-CSRF": "1"}, status=401)
    assert any(h.startswith(f"{COOKIE}=;") for h in set_cookie_headers(response))
    assert any(h.startswith(f"{COOKIE}-ended=revoked_by_admin;") and "Max-Age=60" in h and "HttpOnly" in h
               for h in set_cookie_headers(response))
    page = browser.get("/signed-out?next=%2Fposts")
    assert "An administrator signed you out." in page.text
    assert 'data-session-gone="revoked_by_admin"' in page.text  # for the browser's other tabs (app.js)
    assert any(h.startswith(f"{COOKIE}-ended=;") for h in set_cookie_headers(page))
    assert "Your session has ended." in browser.get("/signed-out").text
    # The note outranks the address (anyone may write a reason into a link); a note that names no
    # reason is none.
    browser.set_cookie(f"{COOKIE}-ended", "expired")
    page = browser.get("/signed-out?reason=revoked_by_admin")
    assert "time limit" in page.text and 'data-session-gone="expired"' in page.text
    assert 'data-session-gone=""' in browser.get("/signed-out?reason=revoked_by_admin").text  # not passed on
    browser.set_cookie(f"{COOKIE}-ended", "nonsense")
    assert "Your session has ended." in browser.get("/signed-out").text


@pytest.mark.parametrize("first", ["/signed-out?next=%2Fposts", "/"])
def test_a_page_that_meets_a_dead_cookie_and_says_why_leaves_no_note_to_say_it_again(
    browser, alice, sign_in, session_store, first
):
    """The note of why a session ended is for a page a script opens after its call cleared the
    cookie. The signed-out page and the landing page, meeting the cookie themselves, say why, and
    left the note as well: a minute later the signed-out page said it again (and outranked the
    reason another tab passed on in its address)."""
    _, row = sign_in(browser, alice)
    session_store.end(row, "revoked_by_admin")
    page = browser.get(first)
    assert "An administrator signed you out." in page.text
    assert any(h.startswith(f"{COOKIE}=;") for h in set_cookie_headers(page))
    assert not any(h.startswith(f"{COOKIE}-ended=revoked_by_admin") for h in set_cookie_headers(page))
    assert "An administrator" not in browser.get("/signed-out").text
    assert "You signed out." in browser.get("/signed-out?reason=logout").text


def backdate(dbsession, row, **fields):
    dbsession.execute(update(UserSession).where(UserSession.id == row.id).values(**fields))
    dbsession.expire_all()


def test_idle_timeout(browser, alice, sign_in, dbsession, app_settings):
    """A session whose last use was just over idle_timeout ago (its row set back, as an operator
    or a check would) is idle on the next request, without a minute more: this process served
    its uses, so the row's time is not in doubt. Just short of it, it is live."""
    _, row = sign_in(browser, alice)
    idle = timedelta(days=7)
    backdate(dbsession, row, last_seen_at=row.last_seen_at - idle + timedelta(minutes=5))
    assert "Alice" in browser.get("/").text
    backdate(dbsession, row, last_seen_at=utcnow() - idle + timedelta(seconds=30))
    assert "Alice" in browser.get("/").text
    backdate(dbsession, row, last_seen_at=utcnow() - idle - timedelta(seconds=1))
    assert "reason=idle" in browser.get("/posts", status=303).location


def test_a_session_found_idle_by_one_process_is_idle_on_every_process(
    browser, alice, sign_in, dbsession, app_settings, engine, connection
):
    """The process that served a session's last use finds it idle exactly the timeout after it; one
    that knows only the row allows a minute more, and served it then, recording a use that brought
    it back on the first too (helper-129). The first ends it: idle everywhere, from then on."""
    raw_id, row = sign_in(browser, alice)
    assert "Alice" in browser.get("/").text
    backdate(dbsession, row, last_seen_at=utcnow() - timedelta(days=7) - timedelta(seconds=1))
    assert "reason=idle" in browser.get("/posts", status=303).location
    ended = dbsession.scalars(select(UserSession).where(UserSession.id == row.id)).one()
    assert ended.ended_at is not None and ended.end_reason == "idle"
    other = myapp.make_app(app_settings, database=RolledBackDatabase(engine).bind(connection))
    try:
        elsewhere = Browser(other)
        elsewhere.set_cookie(COOKIE, raw_id)
        assert "reason=idle" in elsewhere.get("/posts", status=303).location
    finally:
        dispose(other)


def test_a_disabled_accounts_session_refused_once_stays_ended_when_the_account_is_enabled_again(
    browser, alice, sign_in, dbsession
):
    """Dead to every request at once, its sessions were ended only by the revoker's sweep: enabled
    again within that minute, they came back, the one just told it was signed out among them
    (helper-135). The request that finds it so ends it."""
    raw_id, row = sign_in(browser, alice)
    dbsession.execute(update(User).where(User.id == alice.id).values(disabled=True))
    dbsession.flush()
    assert "reason=account_disabled" in browser.get("/posts", status=303).location
    dbsession.execute(update(User).where(User.id == alice.id).values(disabled=False))
    dbsession.expire_all()
    ended = dbsession.scalars(select(UserSession).where(UserSession.id == row.id)).one()
    assert ended.ended_at is not None and ended.end_reason == "account_disabled"
    browser.set_cookie(COOKIE, raw_id)
    assert "Alice" not in browser.get("/").text


def test_idle_expires_at_is_a_timeout_after_this_request(browser, alice, sign_in):
    """/auth/user's idle_expires_at, right after a use: idle_timeout from now (7d here), not a
    minute more, though that use was not written (it came within a minute of signing in)."""
    sign_in(browser, alice)
    before = utcnow()
    session = browser.get("/auth/user", headers={"X-CSRF": "1"}).json["session"]
    after = utcnow()
    idle_expires_at = datetime.fromisoformat(session["idle_expires_at"])
    assert before + timedelta(days=7) <= idle_expires_at <= after + timedelta(days=7)


def test_absolute_timeout(browser, alice, sign_in, dbsession):
    _, row = sign_in(browser, alice)
    backdate(dbsession, row, expires_at=row.created_at - timedelta(seconds=1))
    assert "reason=expired" in browser.get("/posts", status=303).location


def test_activity_is_recorded_at_most_once_a_minute(browser, alice, sign_in, dbsession):
    _, row = sign_in(browser, alice)
    created = row.last_seen_at
    browser.get("/")
    dbsession.expire_all()
    assert dbsession.get(UserSession, row.id).last_seen_at == created
    backdate(dbsession, row, last_seen_at=created - timedelta(minutes=2))
    browser.get("/")
    dbsession.expire_all()
    assert dbsession.get(UserSession, row.id).last_seen_at > created - timedelta(minutes=1)


def test_disabled_user_is_signed_out(browser, alice, sign_in, dbsession):
    """And told why: it was told its session had been signed out from its list of sessions, which
    the person never did (helper-113)."""
    sign_in(browser, alice)
    alice.disabled = True
    dbsession.flush()
    response = browser.get("/posts", status=303)
    assert "reason=account_disabled" in response.location
    page = response.follow()
    assert "This account is disabled. If you think it should not be, ask an administrator." in page.text
    assert "list of sessions" not in page.text
    # Not "Sign in again": the provider, still signed in as them, would send it straight back to
    # the disabled account's refusal (helper-114).
    link = page.html.select_one("a.button-large")
    assert link.text == "Sign in with another account" and "prompt=login" in link["href"]


def test_a_disabled_account_past_its_idle_time_is_told_the_account_is_disabled(browser, alice, sign_in, dbsession):
    """The person cannot sign in again at all: that comes before being away too long (helper-114)."""
    sign_in(browser, alice)
    dbsession.execute(update(UserSession).values(last_seen_at=utcnow() - timedelta(days=30)))
    alice.disabled = True
    dbsession.flush()
    assert "reason=account_disabled" in browser.get("/posts", status=303).location


def test_sessions_page_lists_own_sessions_only(browser, alice, bob, sign_in, session_store):
    session_store.create(user=alice, user_agent="Other device", ip_address="198.51.100.1")
    session_store.create(user=bob, user_agent="Bob's phone")
    sign_in(browser, alice)
    page = browser.get("/account/sessions")
    assert "Other device" in page.text
    assert "This device" in page.text
    assert "Bob&#39;s phone" not in page.text
    assert "Sign out everywhere else" in page.text


def test_session_page_never_shows_the_cookie_or_hash(browser, alice, sign_in):
    raw_id, row = sign_in(browser, alice)
    page = browser.get("/account/sessions")
    assert raw_id not in page.text
    assert hash_session_id(raw_id) not in page.text
    assert f"/account/sessions/{row.handle}/revoke" in page.text


def test_revoke_another_of_my_sessions(browser, alice, sign_in, session_store, dbsession):
    other_raw, other = session_store.create(user=alice, user_agent="Laptop")
    sign_in(browser, alice)
    response = browser.submit(f"/account/sessions/{other.handle}/revoke", status=303)
    assert response.location.endswith("/account/sessions?notice=session_revoked")
    assert session_store.dead_reason(session_store.find(other_raw)) == "revoked"
    event = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "session_revoked")).one()
    assert (event.user_id, event.actor_id, event.session_handle) == (alice.id, alice.id, other.handle)
    assert "Alice" in browser.get("/").text


def test_revoke_the_current_session_signs_out_here(browser, alice, sign_in):
    _, row = sign_in(browser, alice)
    response = browser.submit(f"/account/sessions/{row.handle}/revoke", status=303)
    assert "/signed-out?reason=revoked" in response.location
    assert any(h.startswith(f"{COOKIE}=;") for h in set_cookie_headers(response))
    browser.get("/posts", status=303)


def test_revoke_someone_elses_session_is_forbidden(browser, alice, bob, sign_in, session_store):
    bob_raw, bobs = session_store.create(user=bob)
    sign_in(browser, alice)
    browser.submit(f"/account/sessions/{bobs.handle}/revoke", status=403)
    assert session_store.dead_reason(session_store.find(bob_raw)) is None


def test_revoke_unknown_or_someone_elses_ended_session_is_404(browser, alice, bob, sign_in, session_store):
    _, bobs = session_store.create(user=bob)
    session_store.end(bobs, "logout")
    sign_in(browser, alice)
    browser.submit("/account/sessions/no-such-handle/revoke", status=404)
    browser.submit(f"/account/sessions/{bobs.handle}/revoke", status=404)
    browser.submit(f"/account/sessions/{'x' * 300}/revoke", status=404)
    browser.submit("/account/sessions/a%00b/revoke", status=404)  # PostgreSQL refuses NUL in text


def test_revoking_one_of_my_sessions_twice_says_it_is_signed_out(browser, alice, sign_in, session_store, dbsession):
    """A double click, or a second tab: the second POST lands on the list with the same notice,
    records nothing, and ends nothing more (helper-42: it was "Page not found")."""
    _, other = session_store.create(user=alice)
    sign_in(browser, alice)
    browser.submit(f"/account/sessions/{other.handle}/revoke", status=303)
    again = browser.submit(f"/account/sessions/{other.handle}/revoke", status=303)
    assert again.location.endswith("/account/sessions?notice=session_revoked")
    assert "That session was signed out." in again.follow().text
    events = dbsession.scalars(select(AuditEvent.event).where(AuditEvent.session_handle == other.handle)).all()
    assert events == ["session_revoked"]
    assert "Alice" in browser.get("/").text


def test_a_click_that_another_beat_to_it_records_nothing(browser, alice, sign_in, session_store, dbsession, monkeypatch):
    """Two clicks at once both find the session live; only the one that ends it records it (helper-46)."""
    from myapp.services.sessions import SessionStore

    _, other = session_store.create(user=alice)
    sign_in(browser, alice)
    end = SessionStore.end

    def beaten(self, session, reason):
        end(self, session, reason)  # the other click, first
        return end(self, session, reason)

    monkeypatch.setattr(SessionStore, "end", beaten)
    response = browser.submit(f"/account/sessions/{other.handle}/revoke", status=303)
    assert response.location.endswith("/account/sessions?notice=session_revoked")
    assert dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "session_revoked")).all() == []


def test_an_administrator_ending_someone_elses_session_is_named_as_such(browser, admin, bob, sign_in, session_store,
                                                                         dbsession):
    """The owner is told an administrator ended it, not that they did (helper-42), and the
    administrator lands on the users page, not on their own sessions."""
    bob_raw, bobs = session_store.create(user=bob)
    sign_in(browser, admin)
    response = browser.submit(f"/account/sessions/{bobs.handle}/revoke", status=303)
    assert response.location.endswith("/admin/users?notice=session_revoked")
    assert session_store.dead_reason(session_store.find(bob_raw)) == "revoked_by_admin"
    event = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "session_revoked")).one()
    assert (event.user_id, event.actor_id, event.session_handle) == (bob.id, admin.id, bobs.handle)
    # Again (a double click): 404, as for any ended session not the administrator's own.
    browser.submit(f"/account/sessions/{bobs.handle}/revoke", status=404)


def test_a_stranger_is_sent_to_sign_in_whatever_the_handle(browser, alice, session_store):
    """Not 404 for a handle that names nothing and a sign-in for one that does: a stranger cannot
    tell them apart."""
    _, live = session_store.create(user=alice)
    for handle in ["no-such-handle", live.handle]:
        response = browser.post(f"/account/sessions/{handle}/revoke", headers={"Origin": "https://app.example.test"}, status=303)
        assert "/login" in response.location
    assert session_store.dead_reason(session_store.find_by_handle(live.handle)) is None


def test_revoke_by_get_is_refused(browser, alice, sign_in):
    _, row = sign_in(browser, alice)
    browser.get(f"/account/sessions/{row.handle}/revoke", status=405)
    assert "Alice" in browser.get("/").text


def test_sign_out_everywhere_else(browser, alice, bob, sign_in, session_store, dbsession):
    others = [session_store.create(user=alice)[0] for _ in range(3)]
    bob_raw, _ = session_store.create(user=bob)
    sign_in(browser, alice)
    response = browser.submit("/account/sessions/revoke-others", status=303)
    assert response.location.endswith("?notice=others_revoked")
    assert "You were signed out everywhere else." in response.follow().text
    for raw in others:
        assert session_store.dead_reason(session_store.find(raw)) == "signed_out_elsewhere"
    assert session_store.dead_reason(session_store.find(bob_raw)) is None
    assert "Alice" in browser.get("/").text
    event = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "other_sessions_ended")).one()
    assert event.detail == "3 session(s) ended"


@pytest.fixture
def app_request(app):
    """A request prepared like the router's, for calling remember()/forget() directly."""
    from pyramid.scripting import prepare

    from myapp.request import Request

    def make(cookie):
        request = Request.blank("/", cookies={COOKIE: cookie}, base_url="https://app.example.test")
        env = prepare(request=request, registry=app.registry)
        request.tm.begin()
        return env

    envs = []
    yield lambda cookie: envs.append(make(cookie)) or envs[-1]["request"]
    for env in envs:
        env["request"].tm.abort()
        env["closer"]()


def test_remember_issues_a_new_id_and_ends_the_old_one(app_request, alice, sign_in, browser, session_store):
    """No fixation: whatever id the browser had, a sign-in gets a fresh one."""
    from pyramid.security import remember

    old_raw, _ = sign_in(browser, alice)
    request = app_request(old_raw)
    headers = remember(request, alice.id)
    new_raw = headers[0][1].split(";")[0].split("=", 1)[1]
    assert new_raw != old_raw
    assert session_store.find(new_raw) is not None
    assert session_store.dead_reason(session_store.find(old_raw)) == "replaced"


def test_remember_makes_the_new_session_the_requests_identity(app_request, alice, sign_in, browser):
    from pyramid.security import remember

    old_raw, old = sign_in(browser, alice)
    request = app_request(old_raw)
    assert request.identity.session_id == old.id
    remember(request, alice.id)
    assert request.identity.session_id != old.id and request.identity.user_id == alice.id


def test_forget_clears_the_cookie_and_the_identity_and_leaves_ending_to_the_caller(
    app_request, alice, sign_in, browser, session_store
):
    """Ending a session is explicit (a logout ends it under the refresh lock, a revocation by
    handle); forget() only tells the browser and this request that nobody is signed in."""
    from pyramid.security import forget

    raw, _ = sign_in(browser, alice)
    request = app_request(raw)
    assert request.identity is not None
    headers = forget(request)
    assert headers[0][1].startswith(f"{COOKIE}=;")
    assert request.identity is None
    assert session_store.dead_reason(session_store.find(raw)) is None


PHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1"


def revoke_denials(dbsession, handle):
    return dbsession.scalars(select(AuditEvent.detail).where(
        AuditEvent.event == "access_denied", AuditEvent.detail.contains(f"/account/sessions/{handle}/revoke"))).all()


@pytest.mark.parametrize("sent", ["an older session's token", "no token", "another origin"])
def test_a_refused_revoke_names_the_session_and_offers_a_form_of_the_current_one(
    browser, alice, sign_in, session_store, dbsession, sent
):
    """A Sign out on a sessions list from before the current sign-in carries the old session's
    token: it was refused with "This form has expired" and "reload the page". Still refused (it
    ends nothing, and is audited), the page now says which session it was about and offers a Sign
    out of it with the current session's token, which works."""
    import re

    phone_raw, phone = session_store.create(user=alice, user_agent=PHONE, ip_address="198.51.100.4")
    _, older = session_store.create(user=alice)
    session_store.end(older, "logout")
    sign_in(browser, alice)
    data = {"an older session's token": {"csrf_token": older.csrf_token}, "no token": {}}.get(
        sent, {"csrf_token": browser.csrf_token})
    headers = {"Origin": "https://evil.example"} if sent == "another origin" else {}
    page = browser.submit(f"/account/sessions/{phone.handle}/revoke", data, csrf=False, headers=headers, status=400)
    assert "This form has expired" not in page.text
    assert '<h1 id="revoke-title">Sign out this session?</h1>' in page.text
    assert "Safari on iPhone" in page.text and "198.51.100.4" in page.text
    assert session_store.dead_reason(session_store.find(phone_raw)) is None, "the refused form signed out"
    assert len(revoke_denials(dbsession, phone.handle)) == 1
    form = re.search(r'<section class="card message-page".*?</section>', page.text, re.S).group(0)
    assert f'value="{browser.csrf_token}"' in form and f'action="/account/sessions/{phone.handle}/revoke"' in form
    assert older.csrf_token not in page.text or sent == "another origin"
    done = browser.submit(f"/account/sessions/{phone.handle}/revoke", {"csrf_token": browser.csrf_token}, csrf=False, status=303)
    assert done.location.endswith("/account/sessions?notice=session_revoked")
    assert session_store.dead_reason(session_store.find(phone_raw)) == "revoked"


def test_a_refused_revoke_of_an_ended_session_of_ones_own_says_it_is_signed_out(
    browser, alice, sign_in, session_store, dbsession
):
    """The old list's own "This device" (the session a sign-in again replaced): nothing to offer."""
    _, older = session_store.create(user=alice, user_agent=PHONE)
    session_store.end(older, "replaced")
    sign_in(browser, alice)
    page = browser.submit(f"/account/sessions/{older.handle}/revoke", {"csrf_token": older.csrf_token}, csrf=False,
                          status=400)
    assert '<h1 id="revoke-title">Already signed out</h1>' in page.text and "Safari on iPhone" in page.text
    assert "/revoke" not in page.text.split('<main')[1]
    assert len(revoke_denials(dbsession, older.handle)) == 1


def test_a_refused_revoke_of_the_current_session_offers_this_device(browser, alice, sign_in):
    _, row = sign_in(browser, alice)
    page = browser.submit(f"/account/sessions/{row.handle}/revoke", {"csrf_token": "stale"}, csrf=False, status=400)
    assert "(this device)" in page.text and "of this device</span>" in page.text


def test_a_refused_revoke_never_shows_someone_elses_session(browser, alice, bob, admin, sign_in, session_store, dbsession):
    """Another person's session is never described: an administrator's refused form (the only
    one that reaches the CSRF check: the ACL lets it) gets the plain refusal; anyone else the 403
    or 404 of before, whatever the token."""
    bob_raw, bobs = session_store.create(user=bob, user_agent=PHONE, ip_address="198.51.100.9")
    _, ended = session_store.create(user=bob, user_agent=PHONE)
    session_store.end(ended, "logout")
    sign_in(browser, admin)
    page = browser.submit(f"/account/sessions/{bobs.handle}/revoke", {"csrf_token": "stale"}, csrf=False, status=400)
    assert "This form has expired" in page.text
    assert "iPhone" not in page.text and "198.51.100.9" not in page.text and "revoke-title" not in page.text
    sign_in(browser, alice)
    browser.submit(f"/account/sessions/{bobs.handle}/revoke", {"csrf_token": "stale"}, csrf=False, status=403)
    browser.submit(f"/account/sessions/{ended.handle}/revoke", {"csrf_token": "stale"}, csrf=False, status=404)
    browser.submit("/account/sessions/no-such-handle/revoke", {"csrf_token": "stale"}, csrf=False, status=404)
    assert session_store.dead_reason(session_store.find(bob_raw)) is None
