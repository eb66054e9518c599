"""The token manager with a stub provider: what it decides, and that one refresh serves all."""

import contextlib
import secrets
import threading
import time
from datetime import timedelta
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from myapp.models import AuditEvent, TokenRevocation, User, UserSession
from myapp.models.meta import utcnow
from myapp.services.oidc import OIDCError, ProviderResting, Providers, ProviderUnavailable, TokenRequestRefused
from myapp.services.oidc.client import TokenEndpointRest
from myapp.services.sessions import SessionRows
from myapp.services.tokens import DatabaseRefreshLock, LoginRequired, SingleFlight, TokenManager
from myapp.services.tokenset import TokenCipher
from myapp.settings import TokenSettings
from tests.support.spans import recording_spans

ISSUER = "https://idp.example.test"


class StubProvider:
    settings = SimpleNamespace(name="default", issuer=ISSUER, http_timeout=5)

    def __init__(self):
        self.calls = []
        self.token_endpoint_rest = TokenEndpointRest()
        self.answer = lambda refresh_token: {"access_token": "at-new", "token_type": "Bearer", "expires_in": 300,
                                             "refresh_token": "rt-new"}

    def refresh(self, refresh_token, dpop=None):
        self.calls.append(refresh_token)
        return self.answer(refresh_token)

    def validate_id_token(self, id_token, *, nonce, access_token=None):
        assert nonce is None
        return {"iss": ISSUER, "sub": id_token.removeprefix("idt-")}


@pytest.fixture
def recorded_spans():
    with recording_spans() as spans:
        yield spans


class FlightWaiters:
    """Counts the callers waiting for another's flight (SingleFlight's calls' ``done`` events), so a
    test releases the leader once they wait, not after a sleep a busy machine could outlast."""

    def __init__(self, monkeypatch):
        self.count = 0
        self.changed = threading.Condition()
        waiters = self

        class Watched(threading.Event):
            def wait(self, timeout=None):
                with waiters.changed:
                    waiters.count += 1
                    waiters.changed.notify_all()
                return super().wait(timeout)

        original = SingleFlight._Call.__init__

        def init(call):
            original(call)
            call.done = Watched()

        monkeypatch.setattr(SingleFlight._Call, "__init__", init)

    def reach(self, count: int, timeout: float = 10) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.count >= count, timeout)


@pytest.fixture
def flight_waiters(monkeypatch):
    return FlightWaiters(monkeypatch)


@pytest.fixture
def cipher():
    return TokenCipher([Fernet.generate_key().decode()])


@pytest.fixture
def provider():
    return StubProvider()


@pytest.fixture
def manager(connection, cipher, provider):
    def own_session():
        return Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)

    lock = DatabaseRefreshLock(own_session, timeout=5)
    return TokenManager(
        lock=lock, providers=Providers({"default": provider}), cipher=cipher, settings=TokenSettings(encryption_keys=("x",), refresh_leeway=timedelta(seconds=60))
    )


@pytest.fixture
def session_row(dbsession, cipher):
    def make(*, access="at-old", refresh="rt-old", expires_in=0):
        user = User(issuer=ISSUER, subject="alice", name="Alice", groups=[])
        dbsession.add(user)
        dbsession.flush()
        row = UserSession(
            id_hash=f"h-{time.monotonic_ns()}",
            handle=f"hd-{time.monotonic_ns()}"[:32],
            user=user,
            expires_at=utcnow() + timedelta(days=1),
            csrf_token="c",
            access_token=cipher.encrypt(access),
            refresh_token=cipher.encrypt(refresh),
            access_token_expires_at=utcnow() + timedelta(seconds=expires_in),
        )
        dbsession.add(row)
        dbsession.flush()
        return row

    return make


@pytest.fixture
def record(dbsession, cipher):
    def read(row):
        """The session as a request reads it (a SessionRecord), from the row as it is now."""
        dbsession.flush()
        return SessionRows(dbsession, cipher).read(row.id).session

    return read


def reload(dbsession, row):
    row_id = row.id
    dbsession.expire_all()
    return dbsession.get(UserSession, row_id)


def audit_details(dbsession):
    return dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "refresh_failed")).all()


def test_a_fresh_token_is_used_as_is(manager, provider, session_row, record):
    row = session_row(access="at-valid", expires_in=3600)
    assert manager.access_token(record(row)).token == "at-valid"
    assert provider.calls == []


def test_a_token_inside_the_leeway_is_refreshed(manager, provider, session_row, dbsession, cipher, record):
    row = session_row(expires_in=30)
    assert manager.access_token(record(row)).token == "at-new"
    assert provider.calls == ["rt-old"]
    stored = reload(dbsession, row)
    assert cipher.decrypt(stored.refresh_token) == "rt-new"
    assert stored.token_generation == 1


def test_tokens_that_live_no_longer_than_the_leeway_are_warned_of_once(manager, provider, session_row, record, caplog):
    provider.answer = lambda refresh_token: {"access_token": f"at-{len(provider.calls)}", "token_type": "Bearer",
                                             "expires_in": 60}
    row = session_row(expires_in=30)
    with caplog.at_level("WARNING", logger="myapp.services.tokens"):
        manager.access_token(record(row))
        manager.access_token(record(row))
    assert provider.calls == ["rt-old", "rt-old"]  # every call refreshes: what the warning is about
    warnings = [r.getMessage() for r in caplog.records if "refresh_leeway" in r.getMessage()]
    assert warnings == [
        "Access tokens for provider 'default' expire within myapp.tokens.refresh_leeway (60 s) of being issued,"
        " so every call refreshes them; set the leeway below the tokens' lifetime"
    ]


def test_tokens_that_outlive_the_leeway_are_not_warned_of(manager, provider, session_row, record, caplog):
    row = session_row(expires_in=30)
    with caplog.at_level("WARNING", logger="myapp.services.tokens"):
        manager.access_token(record(row))
    assert provider.calls == ["rt-old"]
    assert not [r for r in caplog.records if "refresh_leeway" in r.getMessage()]


def test_a_token_without_expiry_is_used_until_refused(manager, provider, session_row, dbsession, cipher, record):
    row = session_row()
    row.access_token_expires_at = None
    dbsession.flush()
    assert manager.access_token(record(row)).token == "at-old"
    assert manager.access_token(record(row), stale="at-old").token == "at-new"


def test_a_refused_token_is_refreshed_once_even_if_not_expired(manager, provider, session_row, record):
    row = session_row(access="at-valid", expires_in=3600)
    assert manager.access_token(record(row), stale="at-valid").token == "at-new"
    assert provider.calls == ["rt-old"]


def test_a_worker_that_waited_uses_the_tokens_already_stored(manager, provider, session_row, dbsession, cipher, record):
    row = session_row(expires_in=0)
    earlier_request = record(row)
    manager.access_token(earlier_request)
    assert manager.access_token(earlier_request).token == "at-new"
    assert provider.calls == ["rt-old"]


def test_non_rotating_provider_keeps_the_refresh_token(manager, provider, session_row, dbsession, cipher, record):
    provider.answer = lambda rt: {"access_token": "at-2", "token_type": "Bearer", "expires_in": 300}
    row = session_row()
    manager.access_token(record(row))
    assert cipher.decrypt(reload(dbsession, row).refresh_token) == "rt-old"


def test_invalid_grant_ends_the_session(manager, provider, session_row, dbsession, record):
    def refuse(rt):
        raise TokenRequestRefused("invalid_grant", None)

    provider.answer = refuse
    row = session_row()
    with pytest.raises(LoginRequired):
        manager.access_token(record(row))
    stored = reload(dbsession, row)
    assert stored.end_reason == "refresh_failed" and stored.refresh_token is None
    assert audit_details(dbsession) == ["invalid_grant; session ended"]


def test_invalid_grant_after_another_worker_rotated_uses_its_tokens(manager, provider, session_row, dbsession, cipher, connection, record):
    """Another worker (outside this lock) rotated the tokens just before our refresh arrived."""
    row = session_row()

    def rotated_elsewhere(rt):
        with Session(bind=connection, join_transaction_mode="create_savepoint") as other, other.begin():
            other_row = other.get(UserSession, row.id)
            other_row.access_token = cipher.encrypt("at-from-other-worker")
            other_row.refresh_token = cipher.encrypt("rt-from-other-worker")
            other_row.access_token_expires_at = utcnow() + timedelta(minutes=5)
        raise TokenRequestRefused("invalid_grant", None)

    provider.answer = rotated_elsewhere
    assert manager.access_token(record(row)).token == "at-from-other-worker"
    assert reload(dbsession, row).ended_at is None
    assert audit_details(dbsession) == []


def test_no_refresh_token_ends_the_session(manager, provider, session_row, dbsession, record):
    row = session_row(refresh=None)
    with pytest.raises(LoginRequired):
        manager.access_token(record(row))
    assert provider.calls == []
    assert audit_details(dbsession) == ["no refresh token; session ended"]


def test_an_ended_session_is_not_refreshed(manager, provider, session_row, dbsession, record):
    row = session_row()
    row.ended_at = utcnow()
    dbsession.flush()
    with pytest.raises(LoginRequired):
        manager.access_token(record(row))
    assert provider.calls == []


@pytest.mark.parametrize(
    "error",
    [ProviderUnavailable("down"), OIDCError("token_endpoint_error", "junk"), TokenRequestRefused("invalid_client", None)],
)
def test_provider_trouble_keeps_the_session(manager, provider, session_row, dbsession, error, record):
    def fail(rt):
        raise error

    provider.answer = fail
    row = session_row()
    with pytest.raises(ProviderUnavailable):
        manager.access_token(record(row))
    assert reload(dbsession, row).ended_at is None
    assert len(audit_details(dbsession)) == 1


@pytest.fixture
def resting(provider):
    """The provider's token endpoint at rest (oidc.client.TokenEndpointRest), on a clock that
    stands still: it rests for the whole test, however slow the machine."""
    provider.token_endpoint_rest = TokenEndpointRest(lambda: 0.0)
    provider.token_endpoint_rest.ended(False, True)
    return provider


def test_a_provider_at_rest_is_not_asked_and_nothing_is_recorded(manager, resting, session_row, dbsession, record):
    """While its token endpoint rests a refresh fails at once (SPEC.md: a provider that is down
    or slow gives 503), without the lock or an audit record for each call (helper-143: one a
    second, for a page that polls)."""
    row = session_row(access="at-due", expires_in=30)
    with pytest.raises(ProviderResting):
        manager.access_token(record(row))
    assert resting.calls == [] and audit_details(dbsession) == []
    assert reload(dbsession, row).ended_at is None


def test_a_provider_at_rest_leaves_what_needs_no_refresh_as_the_lock_would(
    manager, resting, session_row, dbsession, cipher, record
):
    """helper-144: what the work under the lock gives without asking the provider, it gives while
    the provider rests: a token another process stored meanwhile; the very one the upstream
    refused moments after it was minted, whose 401 goes back (SPEC.md); an ended session signed out."""
    row = session_row(access="at-read", expires_in=0)
    read = record(row)  # what the request read: expired
    row.access_token, row.access_token_expires_at = cipher.encrypt("at-other"), utcnow() + timedelta(seconds=300)
    dbsession.flush()
    assert manager.access_token(read).token == "at-other"
    row.refreshed_at = utcnow() - timedelta(seconds=5)
    dbsession.flush()
    assert manager.access_token(record(row), stale="at-other").token == "at-other"
    row.refreshed_at = utcnow() - timedelta(minutes=5)
    dbsession.flush()
    with pytest.raises(ProviderResting):
        manager.access_token(record(row), stale="at-other")
    row.ended_at, row.end_reason = utcnow(), "revoked_by_admin"
    dbsession.flush()
    with pytest.raises(LoginRequired):
        manager.access_token(read)
    assert resting.calls == []


def test_refreshed_id_token_must_name_the_same_user(manager, provider, session_row, dbsession, record):
    provider.answer = lambda rt: {"access_token": "at-2", "token_type": "Bearer", "id_token": "idt-mallory"}
    row = session_row()
    with pytest.raises(LoginRequired):
        manager.access_token(record(row))
    assert audit_details(dbsession) == ["refreshed ID token names another user; session ended"]


def test_refreshed_id_token_for_the_same_user_is_kept(manager, provider, session_row, dbsession, cipher, record):
    provider.answer = lambda rt: {"access_token": "at-2", "token_type": "Bearer", "id_token": "idt-alice"}
    row = session_row()
    assert manager.access_token(record(row)).token == "at-2"
    assert cipher.decrypt(reload(dbsession, row).id_token) == "idt-alice"


class TestSingleFlight:
    def test_concurrent_callers_share_one_call(self, flight_waiters):
        flights, calls, started = SingleFlight(), [], threading.Event()
        release = threading.Event()

        def slow():
            calls.append(1)
            started.set()
            release.wait(5)
            return "result"

        results = []
        threads = [threading.Thread(target=lambda: results.append(flights.run("k", slow))) for _ in range(10)]
        threads[0].start()
        started.wait(5)
        for thread in threads[1:]:
            thread.start()
        assert flight_waiters.reach(9)
        release.set()
        for thread in threads:
            thread.join(5)
        assert calls == [1]
        assert results == ["result"] * 10

    def test_waiters_share_the_error(self, flight_waiters):
        flights, started, release = SingleFlight(), threading.Event(), threading.Event()
        errors = []

        def failing():
            started.set()
            release.wait(5)
            raise ValueError("boom")

        def call():
            try:
                flights.run("k", failing)
            except ValueError as e:
                errors.append(str(e))

        first = threading.Thread(target=call)
        first.start()
        started.wait(5)
        second = threading.Thread(target=call)
        second.start()
        assert flight_waiters.reach(1)
        release.set()
        first.join(5)
        second.join(5)
        assert errors == ["boom", "boom"]

    def test_keys_are_independent_and_calls_are_forgotten(self):
        flights = SingleFlight()
        assert flights.run("a", lambda: 1) == 1
        assert flights.run("b", lambda: 2) == 2
        assert flights.run("a", lambda: 3) == 3


def test_a_request_that_waits_for_another_s_refresh_is_traced_with_its_wait(
    manager, provider, session_row, record, recorded_spans, flight_waiters
):
    """SPEC.md "Observability": each request's span holds the refresh with how long it waited. A
    request that arrives while another thread of the process refreshes the same session shares that
    refresh (SingleFlight); its own trace still shows the wait, not a gap as long as the refresh."""
    session = record(session_row(expires_in=0))
    entered, release = threading.Event(), threading.Event()
    answer = provider.answer

    def slow(refresh_token):
        entered.set()
        release.wait(5)
        return answer(refresh_token)

    provider.answer = slow
    tokens = []
    leader = threading.Thread(target=lambda: tokens.append(manager.access_token(session).token))
    leader.start()
    assert entered.wait(5)
    follower = threading.Thread(target=lambda: tokens.append(manager.access_token(session).token))
    follower.start()
    assert flight_waiters.reach(1)  # the follower waits for the leader's flight
    time.sleep(0.25)
    release.set()
    leader.join(5)
    follower.join(5)
    assert tokens == ["at-new", "at-new"] and provider.calls == ["rt-old"]
    refreshes = [s for s in recorded_spans if s.name == "token.refresh"]
    assert len(refreshes) == 2
    (waited,) = [s for s in refreshes if s.attributes.get("myapp.shared")]
    assert waited.attributes["myapp.outcome"] == "ok"
    assert waited.attributes["myapp.lock_wait_ms"] >= 200


def test_a_session_s_refresh_is_shared_by_its_handle_never_its_row_id(manager, session_row, record, monkeypatch):
    """SQLite gives a purged highest row id to the next session: a refresh keyed by the id could be
    shared with a session that is not the one refreshing."""
    keys = []
    run = manager.flights.run
    monkeypatch.setattr(manager.flights, "run", lambda key, function, **kw: keys.append(key) or run(key, function, **kw))
    session = record(session_row(expires_in=0))
    manager.access_token(session)
    assert keys == [session.handle]


def test_logout_under_the_lock_returns_the_tokens_and_stops_refreshes(manager, provider, session_row, dbsession, record):
    row = session_row()
    tokens = manager.end_session(row.id, "logout")
    assert (tokens.access_token, tokens.refresh_token) == ("at-old", "rt-old")
    stored = reload(dbsession, row)
    assert stored.end_reason == "logout" and stored.refresh_token is None
    with pytest.raises(LoginRequired):
        manager.access_token(record(stored))
    assert provider.calls == []
    assert manager.end_session(row.id, "logout") is None  # ended already: nothing done


def test_a_session_ended_during_the_refresh_keeps_no_new_tokens(manager, provider, session_row, dbsession, cipher, connection, record):
    """Without a row lock (the Redis backend), a logout can land while the provider answers."""
    row = session_row()

    def ended_meanwhile(rt):
        with Session(bind=connection, join_transaction_mode="create_savepoint") as other, other.begin():
            other.get(UserSession, row.id).ended_at = utcnow()
        return {"access_token": "at-new", "token_type": "Bearer", "expires_in": 300, "refresh_token": "rt-new"}

    provider.answer = ended_meanwhile
    with pytest.raises(LoginRequired):
        manager.access_token(record(row))
    assert reload(dbsession, row).access_token is None or cipher.decrypt(reload(dbsession, row).access_token) != "at-new"
    pending = dbsession.execute(select(TokenRevocation)).scalars().all()
    assert [(cipher.decrypt(p.token), p.token_type_hint, p.issuer) for p in pending] == [
        ("rt-new", "refresh_token", ISSUER)
    ]


@pytest.mark.parametrize("rotates", [False, True], ids=["non-rotating", "rotating"])
def test_a_session_ended_while_an_upstream_token_is_minted_keeps_no_upstream_token(
    cipher, provider, session_row, dbsession, connection, record, rotates
):
    """With the Redis lock a revocation (session list, admin, back-channel) ends the session in its
    own transaction, without the refresh lock, and can land while the provider mints an upstream's
    own token: that token must not be stored for the ended session (seen live, helper-62: a row in
    session_tokens for a session revoked by an administrator, its access token stored after the end)."""
    from myapp.models import SessionToken

    manager = with_an_upstream_of_its_own(connection, cipher, provider)
    row = session_row(expires_in=3600)

    def ended_meanwhile(rt, **request):
        with Session(bind=connection, join_transaction_mode="create_savepoint") as other, other.begin():
            SessionRows(other, cipher).end(row.id, "revoked_by_admin")
        answer = {"access_token": "at-orders", "token_type": "Bearer", "expires_in": 300}
        return {**answer, "refresh_token": "rt-new"} if rotates else answer

    provider.refresh = ended_meanwhile
    with pytest.raises(LoginRequired):
        manager.access_token(record(row), upstream="orders")
    assert dbsession.scalars(select(SessionToken).where(SessionToken.session_id == row.id)).all() == []


def with_an_upstream_of_its_own(connection, cipher, provider) -> TokenManager:
    """A manager on the test's connection whose upstream "orders" has a token of its own."""
    from myapp.settings import Upstream

    own = Upstream(name="orders", base_url="https://orders.example.test", timeout=5,
                   methods=frozenset({"GET"}), resources=("https://orders.example.test/",))

    def own_session():
        return Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)

    return TokenManager(
        lock=DatabaseRefreshLock(own_session, timeout=5), providers=Providers({"default": provider}), cipher=cipher,
        settings=TokenSettings(encryption_keys=("x",), refresh_leeway=timedelta(seconds=60)), upstreams={"orders": own},
    )


def test_a_provider_at_rest_takes_no_lock_for_the_session_or_an_upstream_and_records_nothing(
    cipher, resting, session_row, dbsession, connection, record, monkeypatch
):
    """helper-144: without the check before the lock, each call while the provider rested took
    the session's lock and a transaction (and an upstream's mint too)."""
    manager = with_an_upstream_of_its_own(connection, cipher, resting)

    def no_lock(session_id):
        raise AssertionError("the refresh lock was taken while the provider rested")

    monkeypatch.setattr(manager.lock, "locked", no_lock)
    row = session_row(access="at-due", expires_in=30)
    for upstream in (None, "orders"):
        with pytest.raises(ProviderResting):
            manager.access_token(record(row), upstream=upstream)
    assert resting.calls == [] and audit_details(dbsession) == []


def test_a_provider_that_began_to_rest_while_the_lock_was_awaited_is_not_recorded(manager, provider, session_row, dbsession, record):
    """A caller that passed the check before the lock, and found the provider resting under it:
    nothing was asked, so nothing is recorded (an audit record for each call, otherwise)."""
    def resting_now(rt):
        raise ProviderResting()

    provider.answer = resting_now
    row = session_row(access="at-due", expires_in=30)
    with pytest.raises(ProviderUnavailable):
        manager.access_token(record(row))
    assert audit_details(dbsession) == []


class LockNotAvailable(Exception):
    sqlstate = "55P03"  # PostgreSQL's lock_timeout


@pytest.mark.parametrize(
    "cause, raised",
    [
        (LockNotAvailable("canceling statement due to lock timeout"), "RefreshLockTimeout"),
        (Exception("database is locked"), "RefreshLockTimeout"),  # SQLite's busy timeout
        (Exception("connection refused"), "ServiceUnavailable"),  # the database is gone
    ],
)
def test_a_lock_that_cannot_be_taken_is_a_503_not_a_hang(cipher, provider, session_row, record, cause, raised):
    from sqlalchemy.exc import OperationalError

    from myapp.errors import ServiceUnavailable
    from myapp.services.tokens import RefreshLockTimeout

    class Busy:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def begin(self):
            raise OperationalError("SELECT ... FOR UPDATE", {}, cause)

    manager = TokenManager(
        lock=DatabaseRefreshLock(Busy, timeout=1), providers=Providers({"default": provider}), cipher=cipher,
        settings=TokenSettings(encryption_keys=("x",), refresh_leeway=timedelta(seconds=60)),
    )
    with pytest.raises({"RefreshLockTimeout": RefreshLockTimeout, "ServiceUnavailable": ServiceUnavailable}[raised]):
        manager.access_token(record(session_row()))
    assert provider.calls == []


def test_redis_unavailable_is_a_503_and_keeps_the_session(cipher, provider, session_row, dbsession, record):
    import redis

    from myapp.services.tokens import RedisRefreshLock

    unreachable = redis.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=1, socket_timeout=1)
    manager = TokenManager(
        lock=RedisRefreshLock(unreachable, lambda: None, timeout=1), providers=Providers({"default": provider}), cipher=cipher,
        settings=TokenSettings(encryption_keys=("x",), refresh_leeway=timedelta(seconds=60)),
    )
    row = session_row()
    from myapp.errors import ServiceUnavailable

    with pytest.raises(ServiceUnavailable, match="Redis"):  # 503 service_unavailable (SPEC.md)
        manager.access_token(record(row))
    assert provider.calls == [] and reload(dbsession, row).ended_at is None
    unreachable.close()


@pytest.mark.redis
@pytest.mark.parametrize("fault", ["slow", "reset"])
def test_a_lock_redis_took_for_a_call_that_failed_does_not_hold_up_the_session(fault):
    """Redis slow or cut once it has the command: the lock is taken at Redis and the caller gets
    a 503, not knowing. The process's next use of the lock drops it (only if still its own),
    instead of every call of that session, in every process, waiting out the 25 s lease (seen live,
    helper-62: three processes, Redis answers held 6 s, the session's calls took 20 s after Redis was back)."""
    import secrets

    import redis
    from redis.connection import parse_url

    from myapp.errors import ServiceUnavailable
    from myapp.services import connect_redis
    from myapp.services.tokens import RedisRefreshLock
    from tests.conftest import redis_url
    from tests.support.fault_proxy import FaultProxy

    target = parse_url(redis_url())
    proxy = FaultProxy(target.get("host", "127.0.0.1"), target.get("port", 6379))
    client = connect_redis(f"redis://127.0.0.1:{proxy.port}/{target.get('db', 0)}", socket_timeout=0.5,
                           socket_connect_timeout=0.5)
    direct = redis.Redis.from_url(redis_url())
    session_id = secrets.randbelow(10**9) + 10**9

    # The lock is Redis's alone: the transaction it opens is not what this is about (and the test
    # runs once, not once per database).
    lock = RedisRefreshLock(client, MagicMock, timeout=25)
    try:
        client.ping()  # a connection made before the fault, as a serving process has
        proxy.slow(1.0) if fault == "slow" else proxy.reset_answers()
        with pytest.raises(ServiceUnavailable):
            with lock.locked(session_id):
                pass
        assert direct.exists(f"myapp:refresh:{session_id}"), "Redis took the lock"
        with pytest.raises(ServiceUnavailable):  # Redis still out of reach: the lock is not forgotten
            with lock.locked(session_id):
                pass
        proxy.restore()
        started = time.monotonic()
        with lock.locked(session_id):
            pass
        assert time.monotonic() - started < 10  # the lease is 25 s
        assert not direct.exists(f"myapp:refresh:{session_id}")
    finally:
        direct.delete(f"myapp:refresh:{session_id}")
        proxy.close()
        client.close()
        direct.close()


@pytest.mark.redis
def test_a_redis_that_answers_late_fails_the_lock_within_one_socket_timeout():
    """SPEC.md's 503 for a lock backend that cannot be reached, and soon: the app's client tries a
    command once more only on a dead connection, never after a timeout (redis-py's Redis(host=...)
    tries eleven times: about a minute with production's 5 s socket timeout, for each refresh and
    for /readyz). A guard: the URL-made client the app used had no retries either."""
    import redis
    from redis.connection import parse_url

    from myapp.errors import ServiceUnavailable
    from myapp.services import connect_redis
    from myapp.services.tokens import RedisRefreshLock
    from tests.conftest import redis_url
    from tests.support.fault_proxy import FaultProxy

    target = parse_url(redis_url())
    proxy = FaultProxy(target.get("host", "127.0.0.1"), target.get("port", 6379))
    client = connect_redis(f"redis://127.0.0.1:{proxy.port}/{target.get('db', 0)}", socket_timeout=0.5)
    try:
        client.ping()
        proxy.slow(3.0)
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            with RedisRefreshLock(client, MagicMock, timeout=25).locked(secrets.randbelow(10**9) + 10**9):
                pass
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()  # /readyz's check
        assert time.monotonic() - started < 5  # two socket timeouts of 0.5 s; eleven tries each: about 10 s
        proxy.restore()
        proxy.cut()  # Redis restarted: the pooled connection is dead, the next command takes a new one
        proxy.restore()
        assert client.ping()
    finally:
        proxy.close()
        client.close()


class FakeRedisLock:
    def __init__(self, *, timeout, blocking_timeout):
        self.lease = timeout

    def acquire(self, token=None):
        return True

    def release(self):
        pass


@pytest.mark.parametrize("backend", ["database", "redis"])
def test_the_lock_holder_s_calls_to_the_provider_end_before_the_lock_s_time(connection, cipher, provider, session_row, record, backend):
    """A Redis lock's lease runs out after its timeout, and another process could then spend the
    same refresh token: every call to the provider made under the lock ends REFRESH_LOCK_MARGIN before,
    whatever the provider's own http_timeout."""
    from myapp.services.http import HttpClient
    from myapp.services.tokens import RedisRefreshLock
    from myapp.settings import REFRESH_LOCK_MARGIN

    def own_session():
        return Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)

    redis_client = SimpleNamespace(lock=lambda name, **kw: FakeRedisLock(**kw))
    lock = (
        DatabaseRefreshLock(own_session, timeout=25) if backend == "database"
        else RedisRefreshLock(redis_client, own_session, timeout=25)
    )
    manager = TokenManager(
        lock=lock, providers=Providers({"default": provider}), cipher=cipher,
        settings=TokenSettings(encryption_keys=("x",), refresh_leeway=timedelta(seconds=60)),
    )
    left = []
    answer = provider.answer

    def refresh(refresh_token):
        with HttpClient(timeout=100).bounded() as seconds:  # as the provider's every call is
            left.append(seconds)
        return answer(refresh_token)

    provider.answer = refresh
    assert manager.access_token(record(session_row(expires_in=0))).token == "at-new"
    assert 25 - REFRESH_LOCK_MARGIN - 1 < left[0] <= 25 - REFRESH_LOCK_MARGIN
    with HttpClient(timeout=100).bounded() as seconds:  # outside the lock, its own timeout again
        assert seconds > 99


class ThreadLock:
    """A refresh lock between this process's threads, which says when a caller starts to wait."""

    def __init__(self):
        self.mutex = threading.Lock()
        self.waiting = threading.Semaphore(0)

    @contextlib.contextmanager
    def locked(self, session_id):
        self.waiting.release()
        with self.mutex:
            yield None


def test_a_provider_failure_is_shared_with_the_callers_that_waited_for_the_lock_meanwhile(cipher):
    """Every caller of a refresh in flight shares its result, a failure included: those that waited
    on the lock (a call that came moments later) each asked the provider again in turn, and waited
    its timeout (helper-131: ten calls, seven token requests, 15 s). One that comes after the
    failure asks again: the provider may answer it. Not another target's callers: an answer for
    one upstream's target says nothing of another's (helper-134)."""
    lock = ThreadLock()
    manager = TokenManager(lock=lock, providers=Providers({"default": StubProvider()}), cipher=cipher,
                           settings=TokenSettings(encryption_keys=("x",), refresh_leeway=timedelta(seconds=60)))
    session, span = SimpleNamespace(id=1, handle="hd-1"), MagicMock()
    asked, entered, release = [], threading.Event(), threading.Event()

    def failing(rows):
        asked.append("first")
        entered.set()
        release.wait(5)
        return ProviderUnavailable("The sign-in provider did not answer.")

    def succeeding(name):
        return lambda rows: asked.append(name) or "credential"

    outcomes = {}
    first = threading.Thread(target=lambda: outcomes.setdefault("first", manager._locked(session, None, failing, span)))
    first.start()
    assert entered.wait(5)
    waiters = [
        threading.Thread(target=lambda: outcomes.setdefault("waiter", manager._locked(session, None, succeeding("waiter"), span))),
        threading.Thread(target=lambda: outcomes.setdefault("other", manager._locked(session, "own", succeeding("other"), span))),
    ]
    for waiter in waiters:
        waiter.start()
    for _ in range(3):  # all three asked for the lock
        assert lock.waiting.acquire(timeout=5)
    release.set()
    for thread in (first, *waiters):
        thread.join(5)
    assert sorted(asked) == ["first", "other"] and outcomes["other"] == "credential"
    assert isinstance(outcomes["waiter"], ProviderUnavailable) and outcomes["waiter"] is not outcomes["first"]
    assert outcomes["waiter"].message == "The sign-in provider did not answer."
    # After it: asked again.
    assert manager._locked(session, None, succeeding("later"), span) == "credential"
    # Another session's callers never share it.
    assert manager._locked(SimpleNamespace(id=2, handle="hd-2"), None, lambda rows: "other", span) == "other"


def test_a_provider_failure_outlived_by_a_later_call_is_not_shared(cipher):
    """A Redis or SQLite lock does not serve its waiters in turn: a call that came after a failure
    may take the lock first, and the provider answer it. A caller that waited since before the
    failure then finds that answer, not the failure (helper-134)."""

    class Gated(ThreadLock):
        """Lets the caller named "late" in only once the gate opens, however long it waited."""

        gate = threading.Event()

        @contextlib.contextmanager
        def locked(self, session_id):
            self.waiting.release()
            if threading.current_thread().name == "late":
                assert self.gate.wait(5)
            with self.mutex:
                yield None

    lock = Gated()
    manager = TokenManager(lock=lock, providers=Providers({"default": StubProvider()}), cipher=cipher,
                           settings=TokenSettings(encryption_keys=("x",), refresh_leeway=timedelta(seconds=60)))
    session, span, outcomes = SimpleNamespace(id=1, handle="hd-1"), MagicMock(), {}
    late = threading.Thread(name="late", target=lambda: outcomes.setdefault(
        "late", manager._locked(session, None, lambda rows: "found the new tokens", span)))
    late.start()
    assert lock.waiting.acquire(timeout=5)  # waiting since before the failure
    assert isinstance(manager._locked(session, None, lambda rows: ProviderUnavailable("down"), span), ProviderUnavailable)
    assert manager._locked(session, None, lambda rows: "answered", span) == "answered"  # a later call, served first
    lock.gate.set()
    late.join(5)
    assert outcomes["late"] == "found the new tokens"
