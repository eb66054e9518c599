"""Every way a session ends leaves no live token at the provider, and never blocks the request:
the ending queues the token, and the revoker (run here by the test) revokes it."""

from datetime import timedelta

import pytest
from sqlalchemy import select

from myapp.models import AuditEvent, TokenRevocation, User, UserSession
from myapp.models.meta import utcnow
from myapp.services import Services
from tests.conftest import TEST_PUBLIC_URL
from tests.functional.auth.flows import csrf_of, sign_in
from tests.functional.conftest import COOKIE, Browser


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def services(app) -> Services:
    return app.registry[Services]


@pytest.fixture
def signed_in(app, provider):
    """A browser signed in through the fake provider; its refresh token is the provider's own."""

    def sign_in_one(subject="alice", **claims):
        browser = Browser(app)
        sign_in(browser, provider, sub=subject, **claims)
        return browser, list(provider.refresh_tokens)[-1]

    return sign_in_one


def revoked_after_a_pass(services, provider) -> list[str]:
    provider.revoked.clear()
    services.revoker.run_once()
    return provider.revoked


def test_a_session_revoked_from_the_sessions_page(signed_in, services, provider, dbsession):
    laptop, laptop_token = signed_in()
    phone, _ = signed_in()
    handle = dbsession.scalars(select(UserSession.handle).where(UserSession.ended_at.is_(None))).first()
    phone.post(f"/account/sessions/{handle}/revoke", {"csrf_token": csrf_of(phone)}, headers={"Origin": TEST_PUBLIC_URL})
    ended = dbsession.scalars(select(UserSession).where(UserSession.handle == handle)).one()
    assert ended.refresh_token is None and ended.end_reason == "revoked"
    assert revoked_after_a_pass(services, provider) == [laptop_token]


def test_signing_out_everywhere_else(signed_in, services, provider):
    _, first = signed_in()
    _, second = signed_in()
    browser, _ = signed_in()
    browser.post("/account/sessions/revoke-others", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL})
    assert sorted(revoked_after_a_pass(services, provider)) == sorted([first, second])


@pytest.mark.parametrize("action", ["revoke-others", "revoke-the-other"])
def test_an_action_from_a_session_ended_while_it_ran_ends_nothing(signed_in, dbsession, monkeypatch, action):
    """helper-141: two crossing "Sign out everywhere else" (or each device ending the other from its
    list) each ended the other, and so every session the person had. The second now finds, once
    it holds the person's sessions, that the first's has ended its own, and ends nothing."""
    from myapp.services.sessions import EndReason, SessionStore

    first, _ = signed_in()
    second, _ = signed_in()
    third, _ = signed_in()
    first_id, second_id, third_id = dbsession.scalars(select(UserSession.id).order_by(UserSession.id)).all()
    hold = SessionStore.hold_sessions_of

    def crossed(store, session):
        # The first device's "sign out everywhere else" lands now, while the second's request runs.
        store.end_all_for_user(session.user_id, EndReason.ENDED_ELSEWHERE, except_id=first_id)
        return hold(store, session)

    monkeypatch.setattr(SessionStore, "hold_sessions_of", crossed)
    if action == "revoke-others":
        url = "/account/sessions/revoke-others"
    else:
        handle = dbsession.scalars(select(UserSession.handle).where(UserSession.id == first_id)).one()
        url = f"/account/sessions/{handle}/revoke"
    response = second.post(url, {"csrf_token": csrf_of(second)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert "/signed-out?reason=signed_out_elsewhere" in response.location
    dbsession.expire_all()
    live = dbsession.scalars(select(UserSession.id).where(UserSession.ended_at.is_(None))).all()
    assert live == [first_id]
    ended_by_second = dbsession.scalars(select(AuditEvent).where(AuditEvent.event.in_(
        ["other_sessions_ended", "session_revoked"]))).all()
    assert ended_by_second == []


def test_an_administrator_ending_someones_sessions(signed_in, services, provider, dbsession):
    _, alices = signed_in("alice")
    admin, _ = signed_in("admin-ann", groups=["staff", "admins"])
    alice = dbsession.scalars(select(User).where(User.subject == "alice")).one()
    admin.post(
        f"/admin/users/{alice.id}/sessions/revoke", {"csrf_token": csrf_of(admin)}, headers={"Origin": TEST_PUBLIC_URL}
    )
    assert revoked_after_a_pass(services, provider) == [alices]


def test_a_backchannel_logout(app, signed_in, services, provider):
    _, token = signed_in()
    Browser(app).post("/auth/backchannel-logout", {"logout_token": provider.logout_token()}, status=200)
    assert revoked_after_a_pass(services, provider) == [token]


@pytest.mark.parametrize(
    "column, reason, words",
    [("expires_at", "expired", "reached its time limit"), ("last_seen_at", "idle", "away for a while")],
)
def test_a_session_whose_time_ran_out(signed_in, services, provider, dbsession, column, reason, words):
    browser, token = signed_in()
    dbsession.execute(UserSession.__table__.update().values({column: utcnow() - timedelta(days=60)}))
    assert revoked_after_a_pass(services, provider) == [token]
    assert dbsession.scalars(select(UserSession.end_reason)).one() == reason
    assert words in browser.get("/", status=200).text


def test_a_failed_refresh(signed_in, services, provider, dbsession, app):
    browser, token = signed_in()
    provider.token_response = lambda form: (400, {"error": "invalid_grant"})
    dbsession.execute(UserSession.__table__.update().values(access_token_expires_at=utcnow()))
    browser.get("/api/demo/x", headers={"X-CSRF": "1"}, status=401)
    assert revoked_after_a_pass(services, provider) == [token]


def test_a_person_signing_out_revokes_at_once_and_queues_nothing(make_app, provider, dbsession):
    # The longest wait sign-out allows (5 s), however busy the machine running the tests.
    browser = Browser(make_app(**{"myapp.oidc.http_timeout": "10"}))
    sign_in(browser, provider)
    token = list(provider.refresh_tokens)[-1]
    browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert provider.revoked == [token]
    assert dbsession.scalars(select(TokenRevocation)).all() == []


def test_a_sign_out_the_provider_did_not_answer_is_tried_again(signed_in, services, provider, dbsession):
    browser, token = signed_in()
    provider.revocation_status = 503
    browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert "revocation queued" in dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "logout")).one()
    provider.revocation_status = 200
    assert revoked_after_a_pass(services, provider) == [token]


def test_a_provider_down_never_holds_up_ending_a_session(signed_in, services, provider, dbsession):
    """The request only queues; the provider is called by the revoker, which tries again later."""
    browser, token = signed_in()
    provider.revocation_delay = 5
    browser.post("/account/sessions/revoke-others", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL})
    handle = dbsession.scalars(select(UserSession.handle)).one()
    provider.revocation_status, provider.revocation_delay = 503, 0
    browser.post(f"/account/sessions/{handle}/revoke", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL})
    assert services.revoker.run_once().tokens == {"failed": 1}
    assert dbsession.scalars(select(TokenRevocation.attempts)).one() == 1


@pytest.mark.redis
def test_signing_out_while_the_lock_backend_is_down(make_app, provider, dbsession):
    """Redis down: the sign-out still ends the session, clears the cookie and revokes what it held."""
    from tests.conftest import redis_url

    redis_url()  # a Redis deployment, its server unreachable for this test
    app = make_app(**{"myapp.lock.backend": "redis", "myapp.redis.url": "redis://127.0.0.1:9/0"})
    browser = Browser(app)
    sign_in(browser, provider)
    token = list(provider.refresh_tokens)[-1]
    response = browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert response.location.startswith(provider.issuer + "/logout?") and "id_token_hint=" in response.location
    assert any(v.startswith(COOKIE + "=;") for k, v in response.headerlist if k == "Set-Cookie")
    session = dbsession.scalars(select(UserSession)).one()
    assert session.end_reason == "logout" and session.refresh_token is None
    assert "refresh lock unavailable" in dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "logout")).one()
    browser.get("/posts", status=303)
    assert revoked_after_a_pass(app.registry[Services], provider) == [token]


def test_signing_out_when_the_refresh_lock_times_out(app, signed_in, services, provider, dbsession, monkeypatch):
    from myapp.services.tokens import RefreshLockTimeout

    browser, token = signed_in()

    def busy(session_id):
        raise RefreshLockTimeout()

    monkeypatch.setattr(services.tokens.lock, "locked", busy)
    browser.post("/logout", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL}, status=303)
    assert dbsession.scalars(select(UserSession.end_reason)).one() == "logout"
    assert revoked_after_a_pass(services, provider) == [token]


def test_a_new_session_replacing_an_old_one_revokes_the_old_token(app, provider, services):
    """A sign-in made in another session at the provider (another sid): the old token is revoked."""
    browser = Browser(app)
    sign_in(browser, provider)
    first = list(provider.refresh_tokens)[-1]
    provider.sid = "sid-after-signing-out-there"
    sign_in(browser, provider)
    assert revoked_after_a_pass(services, provider) == [first]


def test_a_new_session_made_in_the_same_session_at_the_provider_leaves_the_old_token_to_expire(
    app, provider, services, dbsession
):
    """A step-up, or a second sign-in behind single sign-on: the same sid. Revoking the replaced
    session's refresh token could end the new one's at the provider (Keycloak removes the client
    session it belongs to, which both share), so it is wiped here and not revoked."""
    browser = Browser(app)
    sign_in(browser, provider)
    sign_in(browser, provider)
    assert revoked_after_a_pass(services, provider) == []
    old, new = dbsession.scalars(select(UserSession).order_by(UserSession.id)).all()
    assert (old.end_reason, old.refresh_token, new.end_reason) == ("replaced", None, None)


def test_a_queued_token_is_never_in_the_clear(signed_in, dbsession):
    browser, token = signed_in()
    browser.post("/account/sessions/revoke-others", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL})
    signed_in()
    browser.post("/account/sessions/revoke-others", {"csrf_token": csrf_of(browser)}, headers={"Origin": TEST_PUBLIC_URL})
    stored = dbsession.execute(select(TokenRevocation.__table__)).mappings().all()
    assert stored and all(token.encode() not in bytes(row["token"]) for row in stored)


def test_each_process_revokes_in_the_background(committed, committed_database_url, served_provider, provider):
    """With the revoker's thread running (as in production), a session ended anywhere has its
    token revoked within moments, without anyone waiting for it."""
    import time

    from myapp import main
    from myapp.services.sessions import EndReason, SessionStore
    from myapp.services.tokenset import TokenSet
    from tests.functional.conftest import dispose, provider_settings

    app = main({}, **provider_settings(committed_database_url, provider.issuer, **{"myapp.revocation.interval": "1"}))
    try:
        services = app.registry[Services]
        user = User(issuer=provider.issuer, subject="alice", name="Alice", groups=[])
        committed.add(user)
        committed.commit()
        store = SessionStore(dbsession=committed, cipher=services.cipher, settings=services.settings.session)
        _, session = store.create(user=user, tokens=TokenSet(refresh_token="rt-background"))
        store.end(session, EndReason.REVOKED_BY_ADMIN)
        committed.commit()

        def queued() -> list[TokenRevocation]:
            committed.rollback()  # a new snapshot: the revoker deletes the row in its own transaction
            return committed.scalars(select(TokenRevocation)).all()

        # The provider answers before the revoker deletes the row: wait for both.
        deadline = time.monotonic() + 15
        while ("rt-background" not in provider.revoked or queued()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert provider.revoked == ["rt-background"]
        assert queued() == []
    finally:
        dispose(app)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sign-out", "back-channel logout", "administrator"])
def test_ending_a_session_revokes_an_exchanged_token_at_the_development_provider(
    committed_database_url, committed, how
):
    """End to end, on real sockets: the development provider treats an exchange as a grant of its
    own, so revoking the session's refresh token (at sign-out, or the revoker's revocation of what
    the provider's back-channel logout or an administrator's end queued) leaves the exchanged token
    live there unless the revoker revokes it too."""
    import requests

    from myapp.models import SessionToken
    from tests.support.live import api, bff_in_thread, devstack_for, listener
    from tests.support.live import sign_in as sign_in_live

    sock, public_url = listener()
    backchannel = {"devstack.idp.backchannel_logout_uri": public_url + "/auth/backchannel-logout"}
    with devstack_for(public_url, **backchannel) as idp:
        upstreams = {
            "myapp.upstreams": f"demo = {idp}/_dev/api\nswap = {idp}/_dev/api",
            "myapp.upstream.swap.exchange": "true",
            "myapp.upstream.swap.resource": f"{idp}/_dev/api",
            "myapp.revocation.interval": "0",
        }
        with bff_in_thread(committed_database_url, sock, public_url, idp, **upstreams) as (url, app):
            services = app.registry[Services]
            metadata = requests.get(idp + "/_dev/idp/.well-known/openid-configuration", timeout=5).json()

            def active(token):
                bearer = {"Authorization": f"Bearer {token}"}
                return requests.get(metadata["userinfo_endpoint"], headers=bearer, timeout=5).status_code == 200

            browser = sign_in_live(url, "alice")
            assert api(browser, url + "/api/swap/ping").status_code == 200
            committed.commit()
            exchanged_row = committed.scalars(select(SessionToken)).one()
            exchanged = services.cipher.decrypt(exchanged_row.access_token)
            session = committed.get(UserSession, exchanged_row.session_id)
            assert active(exchanged)
            if how == "sign-out":
                csrf = api(browser, url + "/auth/user").json()["csrf_token"]
                signed_out = browser.post(
                    url + "/logout", data={"csrf_token": csrf}, headers={"Origin": url}, allow_redirects=False
                )
                assert signed_out.status_code == 303
            elif how == "back-channel logout":
                # Signed out at the provider (from anywhere: the ID token names the session there),
                # which tells the BFF over the back channel before it answers.
                id_token = services.cipher.decrypt(session.id_token)
                ended = requests.get(metadata["end_session_endpoint"], params={"id_token_hint": id_token}, timeout=10)
                assert ended.status_code == 200
            else:
                admin = sign_in_live(url, "admin-ann")
                csrf = api(admin, url + "/auth/user").json()["csrf_token"]
                revoked = admin.post(
                    f"{url}/admin/users/{session.user_id}/sessions/revoke", data={"csrf_token": csrf},
                    headers={"Origin": url}, allow_redirects=False,
                )
                assert revoked.status_code == 303 and "user_sessions_revoked" in revoked.headers["Location"]
            committed.expire_all()
            assert committed.get(UserSession, session.id).end_reason == {
                "sign-out": "logout", "back-channel logout": "provider_logout", "administrator": "revoked_by_admin"
            }[how]
            assert committed.scalars(select(SessionToken)).all() == []
            assert api(browser, url + "/api/swap/ping").status_code == 401
            # The session's refresh token is revoked (or queued); this one is a grant of its own.
            assert active(exchanged)
            services.revoker.run_once()
            assert not active(exchanged)
