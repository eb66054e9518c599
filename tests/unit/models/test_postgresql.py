"""Every wait on a PostgreSQL connection ends within its bound (myapp/models/postgresql.py): a
server that takes requests and answers nothing closes the connection at the deadline, and the
engine carries on with new connections once the server answers again."""

import contextlib
import socket
import threading
import time

import psycopg
import pytest
from psycopg import waiting
from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from myapp.models import LOOKUP_WITHIN, WAIT_MARGIN, Database, UserSession, get_engine
from myapp.models.postgresql import BoundedConnection, DidNotAnswer, _Expired, _within, libpq_bounds
from myapp.services import Services
from tests.conftest import postgresql_url
from tests.support.fault_proxy import FaultProxy


def _reads_for_ever():
    while True:
        yield waiting.Wait.R


def _reads_once():
    ready = yield waiting.Wait.R
    return ("done", ready)


def test_a_wait_past_its_deadline_ends_though_nothing_arrives():
    """psycopg wakes a wait a few times a second with nothing ready: that is when the deadline is
    seen. A socket that never becomes readable is waited on for the bound, not for ever."""
    quiet, other = socket.socketpair()
    with quiet, other:
        started = time.monotonic()
        with pytest.raises(_Expired):
            waiting.wait(_within(_reads_for_ever(), time.monotonic() + 0.3), quiet.fileno(), interval=0.1)
        assert 0.3 <= time.monotonic() - started < 2.5  # never, without the deadline


def test_a_wait_that_gets_its_answer_returns_it():
    quiet, other = socket.socketpair()
    with quiet, other:
        other.sendall(b"x")
        result = waiting.wait(_within(_reads_once(), time.monotonic() + 5), quiet.fileno(), interval=0.1)
    assert result == ("done", waiting.Ready.R)


def test_libpq_bounds_are_added_unless_the_url_sets_them():
    assert libpq_bounds(make_url("postgresql+psycopg://app@db/app"))["connect_timeout"] == "5"
    bounds = libpq_bounds(make_url("postgresql+psycopg://app@db/app?connect_timeout=2&keepalives_idle=60"))
    assert "connect_timeout" not in bounds and "keepalives_idle" not in bounds
    assert bounds["keepalives_interval"] == "10"


def test_sqlite_engines_are_left_as_they_were(tmp_path):
    engine = get_engine(f"sqlite:///{tmp_path / 'app.sqlite'}", within=1)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
        assert not isinstance(connection.connection.dbapi_connection, psycopg.Connection)
    engine.dispose()


@pytest.fixture
def hanging():
    """PostgreSQL behind a fault proxy; yields the proxy and a URL through it."""
    url = make_url(postgresql_url())
    proxy = FaultProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).update_query_dict({"connect_timeout": "2"})
    finally:
        proxy.close()


def test_a_statement_the_server_never_answers_fails_within_the_bound_then_the_engine_recovers(hanging):
    proxy, url = hanging
    engine = get_engine(url.render_as_string(hide_password=False), within=1, pool_size=2)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
            proxy.hang()
            started = time.monotonic()
            with pytest.raises(OperationalError) as raised:
                connection.execute(text("SELECT 2"))
            assert 1.0 <= time.monotonic() - started < 4.0  # until restore(), without the bound
            assert isinstance(raised.value.orig, DidNotAnswer)
            assert raised.value.connection_invalidated, "SQLAlchemy throws the connection away"
        # A new connection cannot be made while the server answers nothing: libpq's connect_timeout.
        started = time.monotonic()
        with pytest.raises(OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT 3"))
        assert time.monotonic() - started < 8.0  # 130 s without connect_timeout
        proxy.restore()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 4")).scalar() == 4
    finally:
        engine.dispose()


def test_the_bound_is_for_each_wait_not_for_the_connection(hanging):
    _, url = hanging
    engine = get_engine(url.render_as_string(hide_password=False), within=1)
    try:
        with engine.connect() as connection:
            for _ in range(3):  # 1.8 s in all on one connection, each wait well within 1 s
                connection.execute(text("SELECT pg_sleep(0.6)"))
    finally:
        engine.dispose()


def test_the_pool_s_ping_of_an_idle_connection_waits_its_own_shorter_bound(hanging):
    """A ping waits for no lock: on a hung server it gives up after ``lock_free_within``, not the
    statements' 30 s."""
    proxy, url = hanging
    engine = get_engine(url.render_as_string(hide_password=False), within=30, lock_free_within=1, pool_size=2)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        proxy.hang()
        started = time.monotonic()
        with pytest.raises(OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT 2"))
        assert time.monotonic() - started < 14  # 1 s; 30 s (and 2 s for a new connection) with the statements' bound
    finally:
        engine.dispose()


def test_a_ping_that_ran_out_of_time_is_not_followed_by_a_new_connection(hanging):
    """SQLAlchemy's pool tries a new connection after a ping that failed; on a database that
    answers nothing that one waits out connect_timeout too. The ping's run-out is the outage."""
    proxy, url = hanging
    url = url.update_query_dict({"connect_timeout": "10"})
    engine = get_engine(url.render_as_string(hide_password=False), within=30, lock_free_within=1, pool_size=2)
    connections = []
    event.listen(engine, "connect", lambda dbapi_connection, record: connections.append(dbapi_connection))
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        proxy.hang()
        started = time.monotonic()
        with pytest.raises(OperationalError) as raised, engine.connect():
            pass
        took = time.monotonic() - started
        assert isinstance(raised.value.orig, DidNotAnswer)
        assert len(connections) == 1, "no new connection was tried"
        assert took < 6, took  # 1 s; 11 s with a new connection's connect_timeout after it
        assert connections[0].closed
        proxy.restore()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 2")).scalar() == 2
    finally:
        engine.dispose()


def test_a_ping_that_finds_its_connection_reset_still_gets_a_new_one(hanging):
    proxy, url = hanging
    engine = get_engine(url.render_as_string(hide_password=False), within=30, lock_free_within=1, pool_size=2)
    try:
        with engine.connect() as connection:
            first = connection.connection.dbapi_connection
        proxy.cut()
        proxy.restore()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
            assert connection.connection.dbapi_connection is not first
    finally:
        engine.dispose()


def test_the_ping_s_bound_does_not_stay_on_the_connection_it_pinged(hanging):
    """The statement after the ping, on the same connection, keeps the statements' bound: a
    statement that takes longer than the ping's bound is not cut."""
    _, url = hanging
    engine = get_engine(url.render_as_string(hide_password=False), within=5, lock_free_within=0.5, pool_size=1)
    pinged = []
    real_ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda dbapi_connection: pinged.append(dbapi_connection) or real_ping(dbapi_connection)
    try:
        with engine.connect() as connection:
            first = connection.connection.dbapi_connection
        with engine.connect() as connection:
            assert connection.connection.dbapi_connection is first and pinged == [first]
            assert connection.connection.dbapi_connection.within == 5
            connection.execute(text("SELECT pg_sleep(1.2)"))
    finally:
        engine.dispose()


def test_a_rollback_the_server_never_answers_waits_the_short_bound(hanging):
    """A ROLLBACK waits for no lock (and one cut short loses nothing): the short bound, whether the
    code rolls back or closes the connection with its transaction open; the next statement gets the
    long one."""
    proxy, url = hanging
    engine = get_engine(url.render_as_string(hide_password=False), within=30, lock_free_within=1, pool_size=2)
    try:
        for roll_back in (lambda connection: connection.rollback(), lambda connection: connection.close()):
            connection = engine.connect()
            connection.exec_driver_sql("SELECT 1")  # BEGIN, then the statement: a transaction open
            dbapi_connection = connection.connection.dbapi_connection
            proxy.hang()
            started = time.monotonic()
            with contextlib.suppress(OperationalError):
                roll_back(connection)
            assert time.monotonic() - started < 14  # 1 s; 30 s with the statements' bound
            assert dbapi_connection.closed
            connection.close()
            proxy.restore()
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            connection.rollback()
            assert connection.connection.dbapi_connection.within == 30
            connection.execute(text("SELECT pg_sleep(1.2)"))
    finally:
        engine.dispose()


def test_a_transaction_cut_off_at_its_deadline_writes_nothing(hanging):
    """Two rows in one transaction; the server stops answering after the first: the second waits
    out the bound, the connection is closed, and the server rolls the first back too."""
    proxy, url = hanging
    engine = get_engine(url.render_as_string(hide_password=False), within=1)
    table = f"h_half_{time.monotonic_ns()}"
    direct = get_engine(postgresql_url())
    try:
        with direct.begin() as connection:
            connection.execute(text(f"CREATE TABLE {table} (n int)"))
        with engine.connect() as connection:
            connection.execute(text(f"INSERT INTO {table} VALUES (1)"))
            proxy.hang()
            with pytest.raises(OperationalError):
                connection.execute(text(f"INSERT INTO {table} VALUES (2)"))
        proxy.restore()
        deadline = time.monotonic() + 5
        with direct.connect() as check:
            while check.execute(text(f"SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                     f"WHERE c.relname = '{table}'")).scalar() and time.monotonic() < deadline:
                time.sleep(0.1)  # until the server has seen the connection go
            assert check.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0
    finally:
        with direct.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        direct.dispose()
        engine.dispose()


def test_the_app_bounds_its_waits_above_the_refresh_lock(committed_database_url, monkeypatch):
    """The lookup pool's waits end within LOOKUP_WITHIN; every other pool's above the refresh lock's
    own wait (a SELECT ... FOR UPDATE for a session another process refreshes), by WAIT_MARGIN,
    except their ping of an idle connection and ROLLBACK, within LOOKUP_WITHIN too."""
    if not committed_database_url.startswith("postgresql"):
        pytest.skip("the bound is PostgreSQL's")
    from myapp import main
    from tests.conftest import base_settings

    app = main({}, **base_settings(committed_database_url, **{"myapp.oidc.http_timeout": "7"}))
    services = app.registry[Services]
    try:
        database: Database = services.database

        def within(engine):
            with engine.connect() as connection:
                return connection.connection.dbapi_connection.within

        def bounds_seen(engine, call):
            seen, wait = [], BoundedConnection.wait

            def seen_wait(self, *args, **kwargs):
                seen.append(self.within)
                return wait(self, *args, **kwargs)

            with engine.connect() as connection, monkeypatch.context() as patch:
                if call == "do_rollback":
                    connection.execute(text("SELECT 1"))  # a transaction to roll back
                patch.setattr(BoundedConnection, "wait", seen_wait)
                if call == "do_ping":
                    assert engine.dialect.do_ping(connection.connection.dbapi_connection)
                else:
                    engine.dialect.do_rollback(connection.connection)
            return set(seen)


        lock_timeout = services.tokens.lock.timeout
        assert lock_timeout == 2 * 7 + 5
        assert within(database.engine) == within(database.own_engine) == lock_timeout + WAIT_MARGIN
        assert within(database.lookup_engine) == LOOKUP_WITHIN == 5
        # Waits for no lock: the ping of an idle connection (the pools that ping), a ROLLBACK.
        for call in ("do_ping", "do_rollback"):
            assert bounds_seen(database.engine, call) == bounds_seen(database.own_engine, call) == {LOOKUP_WITHIN}, call
    finally:
        services.close()


def test_a_refresh_waiting_for_another_process_s_lock_longer_than_the_lookup_bound_is_not_cut(
    committed_database_url, committed
):
    """The longest legitimate wait: the refresh lock's SELECT ... FOR UPDATE while another process
    holds the session row, up to the lock's time. With http_timeout = 1 s that is 7 s; the row is
    held 6 s, longer than the lookup's bound, and the wait ends with the lock, not with a 503."""
    if not committed_database_url.startswith("postgresql"):
        pytest.skip("the bound is PostgreSQL's")
    from myapp import main
    from myapp.models import User
    from myapp.services.sessions import SessionStore
    from myapp.services.tokenset import TokenCipher
    from myapp.settings import load_settings
    from tests.conftest import TEST_KEY, base_settings

    settings = base_settings(committed_database_url, **{"myapp.oidc.http_timeout": "1"})
    user = User(issuer="https://idp.example.test", subject="alice", name="", email="", groups=[])
    committed.add(user)
    committed.flush()
    store = SessionStore(dbsession=committed, cipher=TokenCipher([TEST_KEY]), settings=load_settings(settings).session)
    store.create(user=user)
    committed.commit()
    session_id = committed.scalars(select(UserSession.id)).one()
    app = main({}, **settings)
    services = app.registry[Services]
    other_process = get_engine(committed_database_url)
    try:
        assert services.tokens.lock.timeout == 7
        with other_process.connect() as holder:
            holder.execute(select(UserSession.id).where(UserSession.id == session_id).with_for_update())
            started = time.monotonic()  # before the timer starts, which may end 6 s after this, no sooner
            threading.Timer(6, holder.commit).start()
            with services.tokens.lock.locked(session_id):
                waited = time.monotonic() - started
        assert LOOKUP_WITHIN < 6 <= waited < 12, waited
    finally:
        services.close()
        other_process.dispose()
