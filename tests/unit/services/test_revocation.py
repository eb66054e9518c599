"""The revoker with stub providers: what it revokes, when it tries again, when it gives up, and
the sessions it ends because their time ran out."""

import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, TimeoutError

from myapp.models import Database, TokenRevocation, User, UserSession, get_engine
from myapp.services.metrics import Metrics
from myapp.services.oidc import Providers, Revocation
from myapp.services.revocation import FIRST_RETRY, LAST_RETRY, LEASE, MAX_ATTEMPTS, Revoker
from myapp.services.sessions import UNREACHABLE_AFTER, EndReason, SessionRows, SessionStore, unreachable_sessions
from myapp.services.tokenset import TokenCipher, TokenSet
from myapp.settings import SessionSettings
from tests.conftest import migrate
from tests.support.database import RolledBackDatabase

ISSUER = "https://idp.example.test"
SETTINGS = SessionSettings(
    cookie_name="s", cookie_secure=False, cookie_samesite="Lax", idle_timeout=timedelta(hours=1),
    absolute_timeout=timedelta(days=1),
)


class Clock:
    def __init__(self):
        self.now = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)

    def __call__(self):
        return self.now

    def advance(self, delta: timedelta):
        self.now += delta


class StubProvider:
    settings = SimpleNamespace(issuer=ISSUER, http_timeout=5)

    def __init__(self):
        self.answer = Revocation.REVOKED
        self.seen = []

    def revoke(self, token, hint, *, timeout=None):
        self.seen.append((token, hint))
        return self.answer


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cipher():
    return TokenCipher([Fernet.generate_key().decode()])


@pytest.fixture
def provider():
    return StubProvider()


@pytest.fixture
def revoker(engine, connection, cipher, provider, clock):
    return Revoker(
        database=RolledBackDatabase(engine).bind(connection), cipher=cipher, providers=Providers({"default": provider}),
        idle_timeout=SETTINGS.idle_timeout, metrics=Metrics(), clock=clock,
    )


@pytest.fixture
def store(dbsession, cipher, clock):
    return SessionStore(dbsession=dbsession, cipher=cipher, settings=SETTINGS, clock=clock)


@pytest.fixture
def user(dbsession):
    user = User(issuer=ISSUER, subject="alice", name="Alice", groups=[])
    dbsession.add(user)
    dbsession.flush()
    return user


def queued(dbsession):
    dbsession.expire_all()
    return dbsession.scalars(select(TokenRevocation).order_by(TokenRevocation.id)).all()


def test_ending_a_session_queues_its_refresh_token_and_wipes_it(store, user, dbsession, cipher):
    _, session = store.create(user=user, tokens=TokenSet(access_token="at", refresh_token="rt", id_token="idt"))
    store.end(session, EndReason.REVOKED)
    [pending] = queued(dbsession)
    assert (pending.issuer, cipher.decrypt(pending.token), pending.token_type_hint) == (ISSUER, "rt", "refresh_token")
    assert store.rows.read(session.id).tokens == TokenSet()


def test_without_a_refresh_token_the_access_token_is_queued(store, user, dbsession, cipher):
    _, session = store.create(user=user, tokens=TokenSet(access_token="at"))
    _, empty = store.create(user=user)
    store.end_all_for_user(user.id, EndReason.REVOKED_BY_ADMIN)
    assert [(cipher.decrypt(p.token), p.token_type_hint) for p in queued(dbsession)] == [("at", "access_token")]


def test_a_session_ended_twice_is_queued_once(store, user, dbsession):
    _, session = store.create(user=user, tokens=TokenSet(refresh_token="rt"))
    store.end(session, EndReason.LOGOUT)
    store.end(session, EndReason.REVOKED)
    assert len(queued(dbsession)) == 1


def test_a_revoked_token_leaves_the_queue(revoker, store, user, dbsession, provider):
    _, session = store.create(user=user, tokens=TokenSet(refresh_token="rt"))
    store.end(session, EndReason.REVOKED)
    assert revoker.run_once().tokens == {"revoked": 1}
    assert provider.seen == [("rt", "refresh_token")]
    assert queued(dbsession) == []


@pytest.mark.parametrize("answer", [Revocation.NOT_OFFERED, Revocation.REFUSED])
def test_a_provider_that_will_not_revoke_is_not_asked_again(revoker, store, user, dbsession, provider, answer):
    provider.answer = answer
    _, session = store.create(user=user, tokens=TokenSet(refresh_token="rt"))
    store.end(session, EndReason.REVOKED)
    revoker.run_once()
    assert queued(dbsession) == [] and len(provider.seen) == 1


def test_a_failure_is_tried_again_later_with_a_growing_delay_then_given_up(
    revoker, store, user, dbsession, provider, clock
):
    provider.answer = Revocation.FAILED
    _, session = store.create(user=user, tokens=TokenSet(refresh_token="rt"))
    store.end(session, EndReason.REVOKED)
    delays = []
    for attempt in range(1, MAX_ATTEMPTS):
        assert revoker.run_once().tokens == {"failed": 1}
        [pending] = queued(dbsession)
        assert pending.attempts == attempt
        delays.append(pending.next_attempt_at - clock.now)
        assert revoker.run_once().tokens == {}  # not due yet
        clock.advance(delays[-1])
    assert delays[:3] == [FIRST_RETRY, FIRST_RETRY * 2, FIRST_RETRY * 4] and max(delays) == LAST_RETRY
    revoker.run_once()
    assert queued(dbsession) == [] and len(provider.seen) == MAX_ATTEMPTS


def test_a_claimed_token_is_left_alone_for_a_while_by_other_processes(revoker, store, user, dbsession, clock):
    _, session = store.create(user=user, tokens=TokenSet(refresh_token="rt"))
    store.end(session, EndReason.REVOKED)
    [claimed] = revoker._claim()
    assert queued(dbsession)[0].next_attempt_at == clock.now + LEASE
    assert revoker._claim() == []


def test_tokens_no_key_can_read_are_dropped_and_an_unknown_issuers_are_left_to_others(
    revoker, store, user, dbsession, provider, cipher, clock
):
    """An issuer this process has no provider for may be one other processes have (a rolling
    deployment adding a provider): its token is tried again like a failure, not dropped
    (helper-48), and given up after MAX_ATTEMPTS like one."""
    _, session = store.create(user=user, tokens=TokenSet(refresh_token="rt"))
    store.end(session, EndReason.REVOKED)
    retired_key = TokenCipher([Fernet.generate_key().decode()])
    for issuer, token in [("https://gone.example", cipher.encrypt("x")), (ISSUER, retired_key.encrypt("y"))]:
        dbsession.add(
            TokenRevocation(issuer=issuer, token=token, token_type_hint="refresh_token", next_attempt_at=clock.now)
        )
    dbsession.flush()
    assert revoker.run_once().tokens == {"revoked": 1, "unknown_provider": 1, "unreadable": 1}
    assert provider.seen == [("rt", "refresh_token")]
    [left] = queued(dbsession)
    assert (left.issuer, left.attempts) == ("https://gone.example", 1) and left.next_attempt_at > clock.now
    for _ in range(MAX_ATTEMPTS - 1):
        clock.advance(timedelta(hours=2))
        revoker.run_once()
    assert queued(dbsession) == []


def test_sessions_past_their_time_are_ended_and_their_tokens_queued(revoker, store, user, dbsession, clock, cipher):
    _, live = store.create(user=user, tokens=TokenSet(refresh_token="rt-live"))
    _, idle = store.create(user=user, tokens=TokenSet(refresh_token="rt-idle"))
    clock.advance(timedelta(minutes=59))
    store.touch(live)
    clock.advance(timedelta(minutes=2))
    _, expiring = store.create(user=user, tokens=TokenSet(refresh_token="rt-expired"))
    dbsession.execute(
        UserSession.__table__.update().where(UserSession.id == expiring.id).values(expires_at=clock.now)
    )
    assert revoker.end_expired_sessions() == 2
    reasons = {row.id: row.end_reason for row in dbsession.scalars(select(UserSession))}
    assert reasons == {live.id: None, idle.id: EndReason.IDLE, expiring.id: EndReason.EXPIRED}
    assert sorted(cipher.decrypt(p.token) for p in queued(dbsession)) == ["rt-expired", "rt-idle"]
    assert revoker.end_expired_sessions() == 0


def test_the_sessions_of_a_disabled_account_are_ended_and_stay_ended_when_it_is_enabled_again(
    revoker, store, user, bob_and_his_session, dbsession, cipher
):
    """A disabled account's sessions were dead to every request (SessionStore.dead_reason) but never
    ended: their refresh tokens stayed live at the provider until the idle sweep, days later, and
    enabling the account again brought them back to life, a stolen cookie's with them."""
    _, session = store.create(user=user, tokens=TokenSet(refresh_token="rt-disabled"))
    user.disabled = True
    dbsession.flush()
    assert revoker.end_expired_sessions() == 1
    user.disabled = False
    dbsession.flush()
    dbsession.expire_all()
    assert dbsession.get(UserSession, session.id).end_reason == EndReason.ACCOUNT_DISABLED
    assert store.dead_reason(store.find_by_handle(session.handle)) == EndReason.ACCOUNT_DISABLED
    assert [cipher.decrypt(p.token) for p in queued(dbsession)] == ["rt-disabled"]
    assert store.dead_reason(store.find_by_handle(bob_and_his_session.handle)) is None


@pytest.fixture
def bob_and_his_session(dbsession, store):
    bob = User(issuer=ISSUER, subject="bob", name="Bob", groups=[])
    dbsession.add(bob)
    dbsession.flush()
    return store.create(user=bob, tokens=TokenSet(refresh_token="rt-bob"))[1]


def test_a_session_is_not_ended_as_idle_within_the_minute_its_use_may_not_be_written(revoker, store, user, clock):
    """The sweep ends a session as the request would find it: idle a minute after the timeout."""
    store.create(user=user)
    clock.advance(SETTINGS.idle_timeout + timedelta(seconds=59))
    assert revoker.end_expired_sessions() == 0
    clock.advance(timedelta(seconds=1))
    assert revoker.end_expired_sessions() == 1


def test_a_sweep_ends_at_most_a_batch_of_each_kind_and_the_next_one_the_rest(revoker, store, user, dbsession, clock):
    """Each write transaction stays short however many sessions ran out at once (a restart after a
    long stop, a lowered idle timeout): 500 of each kind a sweep, the rest at the next."""
    rows = [{"id_hash": f"{n:064x}", "handle": f"h{n}", "user_id": user.id, "created_at": clock.now,
             "last_seen_at": clock.now, "expires_at": clock.now + timedelta(days=1), "user_agent": "", "ip_address": "",
             "provider": "default", "csrf_token": f"c{n}", "token_generation": 0} for n in range(501)]
    dbsession.execute(UserSession.__table__.insert(), rows)
    clock.advance(SETTINGS.idle_timeout + timedelta(minutes=1))
    assert [revoker.end_expired_sessions() for _ in range(3)] == [500, 1, 0]


def test_a_sweep_with_nothing_due_does_not_take_sqlite_s_write_lock(tmp_path, cipher, provider, clock):
    """Found with a plain read: the scan of every session (about a second at 240,000) no longer
    holds the write lock that every sign-in, refresh and activity write waits for. With a writer
    holding it meanwhile, a sweep that finds nothing to end does not wait for it."""
    url = f"sqlite:///{tmp_path / 'sweep.sqlite'}"
    engine = get_engine(url)
    migrate(engine)
    engine.dispose()
    database = Database.from_url(url)
    revoker = Revoker(
        database=database, cipher=cipher, providers=Providers({"default": provider}),
        idle_timeout=SETTINGS.idle_timeout, metrics=Metrics(), clock=clock,
    )
    with database.own_transaction() as dbsession, dbsession.begin():
        user = User(issuer=ISSUER, subject="alice", name="Alice", groups=[])
        dbsession.add(user)
        dbsession.flush()
        SessionStore(dbsession=dbsession, cipher=cipher, settings=SETTINGS, clock=clock).create(user=user)
    writer = sqlite3.connect(tmp_path / "sweep.sqlite", isolation_level=None)
    swept = []
    try:
        writer.execute("BEGIN IMMEDIATE")
        sweep = threading.Thread(target=lambda: swept.append(revoker.end_expired_sessions()), daemon=True)
        sweep.start()
        sweep.join(5)
        assert swept == [0], "the sweep waited for the write lock"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        sweep.join(35)
        database.dispose()
    # Due now: ended, in a write transaction of its own.
    clock.advance(SETTINGS.idle_timeout + timedelta(minutes=1))
    database = Database.from_url(url)
    try:
        revoker.database = database
        assert revoker.end_expired_sessions() == 1
    finally:
        database.dispose()


def test_a_session_used_between_the_sweep_s_read_and_its_end_is_kept(revoker, store, user, dbsession, clock, monkeypatch):
    """The sweep finds idle sessions with a plain read, and ends them in a transaction of its own:
    one used in between (its activity written meanwhile) is not ended."""
    _, session = store.create(user=user)
    clock.advance(SETTINGS.idle_timeout + timedelta(minutes=1))
    real_end_where = SessionRows.end_where

    def used_meanwhile(rows, condition, reason, **kw):
        dbsession.execute(UserSession.__table__.update().where(UserSession.id == session.id).values(last_seen_at=clock.now))
        return real_end_where(rows, condition, reason, **kw)

    monkeypatch.setattr(SessionRows, "end_where", used_meanwhile)
    assert revoker.end_expired_sessions() == 0
    dbsession.expire_all()
    assert dbsession.get(UserSession, session.id).ended_at is None


BROWSER, OTHER_BROWSER = "b" * 64, "c" * 64


def ended(dbsession) -> dict:
    dbsession.expire_all()
    return {row.id: row.end_reason for row in dbsession.scalars(select(UserSession))}


def test_sign_ins_completed_together_in_one_browser_leave_one_session_once_it_is_used(
    revoker, store, user, dbsession, clock, cipher
):
    """Three tabs' callbacks, none carrying another's cookie: three sessions of one browser binding.
    The browser kept the cookie of one; used two minutes after the others' last recorded use, the
    others are ended (their refresh tokens queued), and only they."""
    made = [store.create(user=user, tokens=TokenSet(refresh_token=f"rt-{n}"), browser_binding=BROWSER)[1] for n in range(3)]
    _, elsewhere = store.create(user=user, tokens=TokenSet(refresh_token="rt-other"), browser_binding=OTHER_BROWSER)
    _, before_bindings = store.create(user=user)  # from before 0009: no binding, never grouped
    signed_out = store.create(user=user, browser_binding=BROWSER)[1]
    store.end(signed_out, EndReason.LOGOUT)  # ended before: stays as it ended
    clock.advance(timedelta(minutes=2))  # UNREACHABLE_AFTER, as documented: not one minute more
    held = store.touch(made[1])
    assert revoker.end_expired_sessions() == 2
    assert ended(dbsession) == {
        made[0].id: EndReason.REPLACED, made[1].id: None, made[2].id: EndReason.REPLACED,
        elsewhere.id: None, before_bindings.id: None, signed_out.id: EndReason.LOGOUT,
    }
    assert sorted(cipher.decrypt(p.token) for p in queued(dbsession)) == ["rt-0", "rt-2"]
    assert store.dead_reason(store.find_by_handle(held.handle)) is None
    assert revoker.end_expired_sessions() == 0


def test_an_unreachable_session_made_in_the_kept_ones_session_at_the_provider_is_ended_without_revoking(
    revoker, store, user, dbsession, clock, cipher
):
    """Tabs behind single sign-on: one sid. Revoking the others' refresh tokens could end the kept
    one's at the provider (Keycloak); they are wiped here, and nobody holds them. A session of the
    same browser made in another session at the provider has its token revoked."""
    kept = store.create(user=user, tokens=TokenSet(refresh_token="rt-kept"), provider_sid="sso-1",
                        browser_binding=BROWSER)[1]
    same = store.create(user=user, tokens=TokenSet(refresh_token="rt-same"), provider_sid="sso-1",
                        browser_binding=BROWSER)[1]
    other = store.create(user=user, tokens=TokenSet(refresh_token="rt-other"), provider_sid="sso-0",
                         browser_binding=BROWSER)[1]
    clock.advance(UNREACHABLE_AFTER)
    store.touch(kept)
    assert revoker.end_expired_sessions() == 2
    assert ended(dbsession) == {kept.id: None, same.id: EndReason.REPLACED, other.id: EndReason.REPLACED}
    assert [cipher.decrypt(p.token) for p in queued(dbsession)] == ["rt-other"]
    assert store.rows.read(same.id).tokens == TokenSet()


def test_of_a_browser_whose_held_session_is_known_those_used_within_the_lag_are_kept(revoker, store, user, dbsession, clock):
    """Each session is measured against the one used last: one used less than two minutes before
    it stays, even while an older one of the same browser is ended."""
    old = store.create(user=user, browser_binding=BROWSER)[1]
    recent = store.create(user=user, browser_binding=BROWSER)[1]
    newest = store.create(user=user, browser_binding=BROWSER)[1]
    clock.advance(timedelta(minutes=1, seconds=30))
    store.touch(recent)
    clock.advance(timedelta(seconds=30))
    store.touch(newest)
    assert revoker.end_expired_sessions() == 1
    assert ended(dbsession) == {old.id: EndReason.REPLACED, recent.id: None, newest.id: None}


def test_sessions_of_one_browser_used_within_the_lag_of_recorded_use_are_all_kept(revoker, store, user, dbsession, clock):
    """Which cookie the browser kept is not known until one is used well after the others: recorded
    use lags by up to a minute, so nothing is ended before twice that."""
    first = store.create(user=user, browser_binding=BROWSER)[1]
    second = store.create(user=user, browser_binding=BROWSER)[1]
    # Stated in minutes, not by UNREACHABLE_AFTER: first may have been used 59 s in, unrecorded.
    clock.advance(timedelta(minutes=2) - timedelta(seconds=1))
    store.touch(second)
    assert revoker.end_expired_sessions() == 0
    # Unused, both: nothing tells which one the browser holds.
    clock.advance(timedelta(minutes=30))
    assert revoker.end_expired_sessions() == 0
    assert ended(dbsession) == {first.id: None, second.id: None}


def test_a_session_used_since_it_was_read_is_not_ended(revoker, store, user, dbsession, clock):
    """The sweep ends a session only if its recorded use is still old enough when it ends it."""
    stale = store.create(user=user, browser_binding=BROWSER)[1]
    used = store.create(user=user, browser_binding=BROWSER)[1]
    clock.advance(UNREACHABLE_AFTER)
    store.touch(used)
    rows = SessionRows(dbsession, revoker.cipher, clock)
    real_end_where = rows.end_where

    def touched_meanwhile(condition, reason, **kw):
        dbsession.execute(UserSession.__table__.update().where(UserSession.id == stale.id).values(last_seen_at=clock.now))
        return real_end_where(condition, reason, **kw)

    rows.end_where = touched_meanwhile
    assert rows.end_unreachable() == 0
    assert ended(dbsession) == {stale.id: None, used.id: None}


def test_the_session_a_browser_holds_ending_in_the_same_sweep_leaves_no_tab_s_token_live(
    revoker, store, user, dbsession, clock, cipher
):
    """The held session at its absolute timeout, in the sweep that would end the browser's other tabs'
    sessions: made in the same session at the provider, they were ended without revoking (for a kept
    one that the same sweep ended), their refresh tokens left live at the provider. Each ended
    session's refresh token is queued, unless a live one shares its session at the provider."""
    held = store.create(user=user, tokens=TokenSet(refresh_token="rt-held"), provider_sid="sso-1", browser_binding=BROWSER)[1]
    tab = store.create(user=user, tokens=TokenSet(refresh_token="rt-tab"), provider_sid="sso-1", browser_binding=BROWSER)[1]
    clock.advance(UNREACHABLE_AFTER)
    store.touch(held)
    dbsession.execute(UserSession.__table__.update().where(UserSession.id == held.id).values(expires_at=clock.now))
    revoker.end_expired_sessions()
    assert ended(dbsession)[held.id] == EndReason.EXPIRED
    tokens = sorted(cipher.decrypt(p.token) for p in queued(dbsession))
    assert ended(dbsession)[tab.id] is None or tokens == ["rt-held", "rt-tab"], tokens
    clock.advance(SETTINGS.absolute_timeout)  # the end of the tab's time: what is left is ended and revoked
    revoker.end_expired_sessions()
    assert ended(dbsession)[tab.id] is not None
    assert sorted(cipher.decrypt(p.token) for p in queued(dbsession)) == ["rt-held", "rt-tab"]


def test_the_held_session_signed_out_while_the_sweep_reads_leaves_no_tab_s_token_live(
    revoker, store, user, dbsession, clock, cipher, connection
):
    """The sweep's read is two statements, each seeing what was committed before it: the held session
    signed out in between made the next one used the held one, and the other tabs' sessions of its
    session at the provider were ended without revoking (for a kept one that had ended)."""
    held = store.create(user=user, tokens=TokenSet(refresh_token="rt-held"), provider_sid="sso-1", browser_binding=BROWSER)[1]
    tab = store.create(user=user, tokens=TokenSet(refresh_token="rt-tab"), provider_sid="sso-1", browser_binding=BROWSER)[1]
    clock.advance(UNREACHABLE_AFTER)
    store.touch(held)

    class SignedOutMeanwhile:
        statements = 0

        def execute(self, statement, *args, **kw):
            self.statements += 1
            if self.statements == 2:
                store.end(held, EndReason.LOGOUT)
            return connection.execute(statement, *args, **kw)

    for found in unreachable_sessions(SignedOutMeanwhile()):
        store.rows.end_where(found.condition, EndReason.REPLACED, revoke=found.revoke)
    tokens = sorted(cipher.decrypt(p.token) for p in queued(dbsession))
    assert ended(dbsession)[tab.id] is None or tokens == ["rt-held", "rt-tab"], tokens


@pytest.mark.parametrize("left_live", [1, 2])
def test_an_ended_session_of_the_browser_does_not_count_as_the_one_it_holds(
    revoker, store, user, dbsession, clock, left_live
):
    """Only live sessions count: one signed out is not the one the browser holds, whether one or
    several others (three tabs) are left live."""
    live = [store.create(user=user, browser_binding=BROWSER)[1] for _ in range(left_live)]
    signed_out = store.create(user=user, browser_binding=BROWSER)[1]
    clock.advance(UNREACHABLE_AFTER)
    store.touch(signed_out)
    store.end(signed_out, EndReason.LOGOUT)
    assert revoker.end_expired_sessions() == 0
    assert ended(dbsession) == {**{session.id: None for session in live}, signed_out.id: EndReason.LOGOUT}


def test_browsers_whose_sessions_tell_nothing_yet_do_not_hold_up_the_others(revoker, store, user, dbsession, clock):
    """A browser's sessions that none of it has used since stay live until their idle timeout, and
    however many such browsers there are (each sweep takes a batch), the sessions of the others
    that can be ended still are: a batch holds only browsers with a session to end."""
    undecided = [store.create(user=user, browser_binding="0" * 64)[1] for _ in range(2)]
    left = store.create(user=user, browser_binding="f" * 64)[1]
    held = store.create(user=user, browser_binding="f" * 64)[1]
    clock.advance(UNREACHABLE_AFTER)
    store.touch(held)
    rows = SessionRows(dbsession, revoker.cipher, clock)
    assert rows.end_unreachable(limit=1) == 1
    assert ended(dbsession) == {
        undecided[0].id: None, undecided[1].id: None, left.id: EndReason.REPLACED, held.id: None,
    }
    # Two browsers with a session to end, one a batch.
    for binding in ("1" * 64, "2" * 64):
        store.create(user=user, browser_binding=binding)
        clock.advance(UNREACHABLE_AFTER)
        store.create(user=user, browser_binding=binding)
    assert [rows.end_unreachable(limit=1) for _ in range(3)] == [1, 1, 0]


def test_a_session_is_never_ended_for_the_use_of_another_persons(revoker, store, user, dbsession, clock):
    """One login-binding cookie in two people's browsers (over plain http, any host of the domain
    or the network can set it in a victim's browser before they sign in): the victim's session,
    left alone a while, is not ended for the use of the attacker's."""
    victim = store.create(user=user, browser_binding=BROWSER)[1]
    mallory = User(issuer=ISSUER, subject="mallory", name="Mallory", groups=[])
    dbsession.add(mallory)
    dbsession.flush()
    attackers = store.create(user=mallory, browser_binding=BROWSER)[1]
    attackers_other = store.create(user=mallory, browser_binding=BROWSER)[1]
    clock.advance(timedelta(minutes=30))
    store.touch(attackers)
    assert revoker.end_expired_sessions() == 1
    assert ended(dbsession) == {victim.id: None, attackers.id: None, attackers_other.id: EndReason.REPLACED}


class Unreachable:
    """A database every call to which raises ``error()``."""

    def __init__(self, error):
        self.error = error

    def fail(self):
        raise self.error()

    own_transaction = read = fail


class ForPasses:
    """``database`` for ``passes`` passes of the revoker's loop (each fails at its first call)."""

    def __init__(self, database, passes=1):
        self.database, self.passes, self.calls, self.revoker = database, passes, 0, None

    def _call(self, method):
        self.calls += 1
        if self.calls >= self.passes:
            self.revoker._stop.set()
        return getattr(self.database, method)()

    def own_transaction(self):
        return self._call("own_transaction")

    def read(self):
        return self._call("read")


def failed_passes(database, cipher, provider, clock, caplog, passes=1):
    """What the revoker logs for ``passes`` passes on ``database``: (message, exc_info) a record."""
    database = ForPasses(database, passes)
    database.revoker = revoker = Revoker(
        database=database, cipher=cipher, providers=Providers({"default": provider}),
        idle_timeout=SETTINGS.idle_timeout, metrics=Metrics(), clock=clock,
    )
    with caplog.at_level("WARNING", logger="myapp.services.revocation"):
        revoker._loop(0)
    return [(r.getMessage(), r.exc_info) for r in caplog.records]


def test_a_pass_that_cannot_reach_the_database_is_one_line_in_the_log(cipher, provider, clock, caplog):
    """Every pass of every process fails while PostgreSQL is down: a line each, as a request's 503
    logs it, not a traceback every few seconds; the line says what failed."""
    database = Unreachable(lambda: OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused")))
    assert failed_passes(database, cipher, provider, clock, caplog, passes=2) == [
        ("revoker pass failed: OperationalError: connection refused; trying again in 0s", None)
    ] * 2


def test_the_line_is_the_first_line_of_what_the_driver_said(cipher, provider, clock, caplog):
    """SQLAlchemy's own text adds the statement, its parameters and a link: not for this line."""
    said = ('connection failed: connection to server at "db.internal" (10.0.0.5), port 5432 failed: FATAL:  '
            'password authentication failed for user "app"\n\tIs the server running on that host?')
    database = Unreachable(lambda: OperationalError(
        "UPDATE token_revocations SET attempts=%(attempts)s", {"attempts": 1, "token": "gAAAA-token"}, Exception(said)
    ))
    ((message, exc_info),) = failed_passes(database, cipher, provider, clock, caplog)
    assert message == (
        'revoker pass failed: OperationalError: connection failed: connection to server at "db.internal" (10.0.0.5), '
        'port 5432 failed: FATAL: password authentication failed for user "app"; trying again in 0s'
    )
    assert exc_info is None


@pytest.mark.parametrize(
    "error, description",
    [
        (lambda: TimeoutError("QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00",
                              code="3o7r"),
         "TimeoutError: QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00"),
        (lambda: OperationalError("SELECT 1", {}, Exception("x" * 1000)), "OperationalError: " + "x" * 197 + "..."),
        (lambda: OperationalError("SELECT 1", {}, Exception("")), "OperationalError"),
        (lambda: OperationalError("SELECT 1", {}, Exception("\n\n  spaced \t out \r\nsecond line")),
         "OperationalError: spaced out"),
    ],
)
def test_the_line_stays_short_and_on_one_line(cipher, provider, clock, caplog, error, description):
    ((message, _),) = failed_passes(Unreachable(error), cipher, provider, clock, caplog)
    assert message == f"revoker pass failed: {description}; trying again in 0s"


@pytest.mark.parametrize(
    "said",
    [
        "could not connect to postgresql://app:hunter2@db.internal:5432/app",
        "could not connect to redis://:hunter2@db.internal:6379/0 or postgresql://app:p@hunter2@db.internal/app",
        'invalid connection option in "host=db.internal user=app password=hunter2 dbname=app"',
        "invalid connection option in \"host=db.internal password = 'hunter2 and more' dbname=app\"",
        "could not connect to postgresql://app:hunter2@db.internal:5432/app" + "x" * 300,
        "url postgresql://db.internal/app?passwd=hunter2",
        # A password with an @ not written %40: the rest of it is the host the driver looks up.
        "failed to resolve host 'hunter2@db.internal': [Errno -2] Name or service not known",
        'could not translate host name "p@hunter2@db.internal" to address: Name or service not known',
    ],
)
def test_a_password_a_driver_echoes_never_reaches_the_line(cipher, provider, clock, caplog, said):
    database = Unreachable(lambda: OperationalError("SELECT 1", {}, Exception(said)))
    ((message, _),) = failed_passes(database, cipher, provider, clock, caplog)
    assert "hunter2" not in message and "***" in message and "db.internal" in message


def test_a_password_in_the_database_url_never_reaches_the_line(cipher, provider, clock, caplog):
    """A real PostgreSQL URL whose server is not there (nothing listens on the port)."""
    database = Database.from_url("postgresql+psycopg://app:hunter2@127.0.0.1:7552/app?connect_timeout=2")
    try:
        ((message, exc_info),) = failed_passes(database, cipher, provider, clock, caplog)
    finally:
        for engine in {database.engine, database.own_engine, database.lookup_engine}:
            engine.dispose()
    assert message.startswith("revoker pass failed: OperationalError: connection failed: ")
    assert message.endswith('"127.0.0.1", port 7552 failed: Connection refused; trying again in 0s')
    assert "hunter2" not in message and "\n" not in message and exc_info is None


def test_a_password_with_an_at_sign_in_the_database_url_never_reaches_the_line(cipher, provider, clock, caplog):
    """SQLAlchemy ends a URL's password at its first @ (one not written %40): the rest is taken for
    the host, which psycopg fails to resolve and names in its message."""
    database = Database.from_url("postgresql+psycopg://app:p@hunter2@127.0.0.1:7552/app?connect_timeout=2")
    try:
        ((message, exc_info),) = failed_passes(database, cipher, provider, clock, caplog)
    finally:
        for engine in {database.engine, database.own_engine, database.lookup_engine}:
            engine.dispose()
    assert message.startswith("revoker pass failed: OperationalError: ") and "***@127.0.0.1" in message
    assert "hunter2" not in message and exc_info is None
