"""Reads kept until the next commit (models/sqlite.py): on a SQLite file, Database.read_row and
read_all answer again from what they read until any connection, in any process, commits."""

import gc
import os
import sqlite3
import subprocess
import sys
import threading
import warnings
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import String, bindparam, create_engine, event, func, literal_column, select, text, type_coerce, update

from myapp import models
from myapp.models import Database, Post, User, UserSession, get_engine, sqlite
from myapp.models.meta import utcnow
from myapp.services.sessions import _BY_ID_HASH, _LIVE_COUNT_OF_USER, SessionStore, hash_session_id
from myapp.services.tokenset import TokenCipher
from myapp.settings import load_settings
from myapp.views.posts import _PAGE_OF_POSTS
from tests.conftest import TEST_KEY, base_settings, migrate


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    engine = get_engine(url)
    migrate(engine)
    engine.dispose()
    return url


@pytest.fixture
def database(url):
    database = Database.from_url(url)
    yield database
    database.dispose()


@pytest.fixture
def writer(url):
    """Another connection to the file, as another process's would be."""
    engine = get_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_id(writer, url):
    from sqlalchemy.orm import Session

    with Session(bind=writer, expire_on_commit=False) as dbsession:
        user = User(issuer="https://idp.example.test", subject="alice", name="Alice")
        dbsession.add(user)
        dbsession.flush()
        store = SessionStore(dbsession=dbsession, cipher=TokenCipher([TEST_KEY]),
                             settings=load_settings(base_settings(url)).session)
        raw_id, _ = store.create(user=user)
        dbsession.commit()
    return raw_id


@pytest.fixture
def executions(database, monkeypatch):
    """Each statement the lookup pool's connections run, as the driver is asked it."""
    ran = []
    kept_cursor = models._kept_cursor

    class Counting:
        def __init__(self, cursor):
            self._cursor = cursor

        def execute(self, sql, parameters):
            ran.append(sql)
            return self._cursor.execute(sql, parameters)

        def __getattr__(self, name):
            return getattr(self._cursor, name)

    monkeypatch.setattr(models, "_kept_cursor", lambda connection: Counting(kept_cursor(connection)))
    return ran


def lookup(database, raw_id):
    return database.read_row(_BY_ID_HASH, {"id_hash": hash_session_id(raw_id)})


def test_a_read_is_answered_again_without_sqlite_until_a_commit(database, session_id, executions):
    first = lookup(database, session_id)
    assert lookup(database, session_id) == first and first["ended_at"] is None
    assert len(executions) == 1
    assert database.read_all(_PAGE_OF_POSTS, {"offset": 0, "limit": 5}) == []
    assert database.read_all(_PAGE_OF_POSTS, {"offset": 0, "limit": 5}) == []
    assert len(executions) == 2


def test_read_all_keeps_its_rows_made_and_gives_each_caller_a_list_of_its_own(database, writer, session_id, executions,
                                                                              monkeypatch):
    from sqlalchemy.orm import Session

    with Session(bind=writer) as dbsession:
        owner = dbsession.scalars(select(User.id)).one()
        dbsession.add_all([Post(owner_id=owner, title=f"post {n}", body="") for n in range(3)])
        dbsession.commit()
    made = []  # each time value turned from SQLite's text into a datetime
    moment = type(Post.__table__.c.created_at.type)  # updated_at's too
    process = moment.result_processor
    monkeypatch.setattr(moment, "result_processor", lambda self, dialect, coltype: (
        lambda value, _made=process(self, dialect, coltype): made.append(value) or _made(value)))
    models._row_shape.cache_clear()
    try:
        first = database.read_all(_PAGE_OF_POSTS, {"offset": 0, "limit": 5})
        converted = len(made)
        first.clear()  # the caller's own: what was kept is not touched
        second = database.read_all(_PAGE_OF_POSTS, {"offset": 0, "limit": 5})
    finally:
        models._row_shape.cache_clear()
    assert len(executions) == 1 and converted == 6 and len(made) == 6, "read once, made once"
    assert [row.title for row in second] == ["post 2", "post 1", "post 0"]
    assert all(isinstance(row.created_at, datetime) and row.created_at.tzinfo is not None for row in second)
    assert second == database.read_all(_PAGE_OF_POSTS, {"offset": 0, "limit": 5})


def test_the_same_read_as_driver_rows_and_as_made_rows_is_kept_apart(database, session_id, executions):
    """read_row keeps the driver's rows (SQLite's times as text), read_all SQLAlchemy's: one is
    never the answer to the other."""
    params = {"id_hash": hash_session_id(session_id)}
    row = database.read_row(_BY_ID_HASH, params)
    made = database.read_all(_BY_ID_HASH, params)
    assert isinstance(row["expires_at"], str) and isinstance(made[0].expires_at, datetime)
    assert database.read_row(_BY_ID_HASH, params) == row and database.read_all(_BY_ID_HASH, params) == made
    assert len(executions) == 2


def test_two_statements_of_one_sql_with_other_types_are_kept_apart(database, session_id, executions):
    """Rows kept made are made by one statement's types: another statement that compiles to the
    same SQL but types its columns otherwise (type_coerce) gets its own, as SQLAlchemy gives them."""
    column = UserSession.__table__.c.expires_at
    where = UserSession.__table__.c.id_hash == bindparam("id_hash")
    as_moment = select(column.label("expires_at")).where(where)
    as_text = select(type_coerce(column, String).label("expires_at")).where(where)
    params = {"id_hash": hash_session_id(session_id)}
    moment = database.read_all(as_moment, params)
    text_ = database.read_all(as_text, params)
    read = len(executions)
    assert isinstance(moment[0].expires_at, datetime)
    assert isinstance(text_[0].expires_at, str), "not the rows made by the other statement's types"
    assert database.read_all(as_moment, params) == moment and database.read_all(as_text, params) == text_
    assert len(executions) == read, "each kept"


def test_read_all_refuses_a_column_whose_values_can_be_changed_in_place(database, session_id):
    """Its rows may be kept and shared until the next commit: a JSON list one request appended to
    would be every request's. Read as text, it is a string."""
    from sqlalchemy import Text, cast

    with pytest.raises(TypeError, match="'groups' gives values that can be changed in place"):
        database.read_all(select(User.__table__.c.groups), {})
    assert database.read_all(select(cast(User.__table__.c.groups, Text).label("groups")), {})[0].groups in ("[]", "null")


def test_other_parameters_are_another_read(database, session_id, executions):
    assert lookup(database, session_id) is not None
    assert lookup(database, "another-session") is None
    assert lookup(database, "another-session") is None
    assert len(executions) == 2


def test_a_commit_by_another_connection_is_read_at_once(database, writer, session_id, executions):
    assert lookup(database, session_id)["ended_at"] is None
    with writer.begin() as connection:
        connection.execute(update(UserSession).values(ended_at=utcnow(), end_reason="revoked"))
    assert lookup(database, session_id)["end_reason"] == "revoked"
    assert len(executions) == 2


def test_a_commit_by_another_process_is_read_at_once(database, url, session_id):
    """The revocation an administrator's request makes in another process, by SQLite alone."""
    assert lookup(database, session_id)["ended_at"] is None
    in_another_process(url, "with sqlite3.connect(path) as c: c.execute(\"UPDATE sessions SET "
                            "ended_at = '2026-01-01 00:00:00.000000', end_reason = 'revoked'\")")
    assert lookup(database, session_id)["end_reason"] == "revoked"


def in_another_process(url, code: str, *, check: bool = True) -> subprocess.CompletedProcess:
    """``code`` run by another Python, with ``path`` the database's file and os, sys, sqlite3 and
    fcntl imported; what it printed is its result's ``stdout``."""
    return subprocess.run(
        [sys.executable, "-c", f"import fcntl, os, sqlite3, sys\npath = sys.argv[1]\n{code}", url.removeprefix("sqlite:///")],
        capture_output=True, text=True, check=check,
    )


def test_any_commit_reads_every_kept_read_again_but_one_that_wrote_nothing(database, writer, session_id, executions):
    """The stamp says that a commit happened, not what it changed: a post written makes the
    session be read again. A transaction that changed no row wrote nothing: the file is as it was."""
    lookup(database, session_id)
    with writer.begin() as connection:
        connection.execute(update(Post).values(title="x"))  # no posts: nothing written
    lookup(database, session_id)
    assert len(executions) == 1
    with writer.begin() as connection:
        connection.execute(update(User).values(last_login_at=utcnow()))
    lookup(database, session_id)
    assert len(executions) == 2


def test_a_checkpoint_keeps_the_reads_and_restarting_the_wal_does_not(database, writer, session_id, executions):
    lookup(database, session_id)
    with writer.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")  # copies, changes nothing
    lookup(database, session_id)
    assert len(executions) == 1
    with writer.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    lookup(database, session_id)
    assert len(executions) == 2


def test_a_read_about_a_moment_is_not_kept_unless_told_for_how_long(database, session_id, executions):
    """The live count has the time in its parameters: asked again, it is another moment."""
    params = {"now": utcnow(), "idle_since": utcnow(), "user_id": 1}
    database.read_all(_LIVE_COUNT_OF_USER, params)
    database.read_all(_LIVE_COUNT_OF_USER, params)
    assert len(executions) == 2


@pytest.fixture
def clock():
    return [utcnow()]


@pytest.fixture
def store(database, url, clock):
    """The session store as a request has it, its reads the database's, at the moment ``clock`` says."""
    return SessionStore(dbsession=None, cipher=TokenCipher([TEST_KEY]), settings=load_settings(base_settings(url)).session,
                        read_all=database.read_all, clock=lambda: clock[0])


def ends(writer) -> tuple:
    with writer.connect() as connection:
        row = connection.execute(select(UserSession.expires_at, UserSession.last_seen_at)).one()
    return row.expires_at, row.last_seen_at


def test_the_live_count_is_kept_until_a_session_counted_goes_idle(database, writer, session_id, store, clock, executions):
    """Asked about a later moment, the count is the one kept while no session counted has reached
    its end: no session comes back to life as time passes. At the moment the first goes idle it
    is read again, and the session is not counted."""
    expires_at, last_seen_at = ends(writer)
    idle_at = last_seen_at + store.idle_after
    assert idle_at < expires_at
    assert store.count_live_for_user(1) == 1
    clock[0] = idle_at - timedelta(microseconds=1)
    assert store.count_live_for_user(1) == 1
    assert len(executions) == 1
    clock[0] = idle_at
    assert store.count_live_for_user(1) == 0
    assert len(executions) == 2
    clock[0] = expires_at + timedelta(days=1)
    assert store.count_live_for_user(1) == 0  # counting none, it stays so until a commit
    assert len(executions) == 2


def test_the_live_count_is_read_again_at_the_first_expiry(database, writer, session_id, store, clock, executions):
    _, last_seen_at = ends(writer)
    expires_at = last_seen_at + timedelta(minutes=5)
    with writer.begin() as connection:
        connection.execute(update(UserSession).values(expires_at=expires_at))
    assert store.count_live_for_user(1) == 1
    clock[0] = expires_at - timedelta(microseconds=1)
    assert store.count_live_for_user(1) == 1
    clock[0] = expires_at
    assert store.count_live_for_user(1) == 0
    assert len(executions) == 2


def test_the_live_count_is_read_again_after_a_commit_or_for_an_earlier_moment(
    database, writer, session_id, store, clock, executions
):
    assert store.count_live_for_user(1) == 1
    clock[0] -= timedelta(seconds=1)  # the clock set back: what was kept was true from later on
    assert store.count_live_for_user(1) == 1
    assert len(executions) == 2
    with writer.begin() as connection:
        connection.execute(update(UserSession).values(ended_at=utcnow(), end_reason="revoked"))
    assert store.count_live_for_user(1) == 0
    assert len(executions) == 3


def test_the_live_count_agrees_with_the_session_at_a_whole_second_and_in_any_zone(
    database, writer, session_id, store, clock
):
    """The times are sent as SQLite stores them (naive UTC, six decimals: UTCDateTime's bind
    processing), not as the driver would write them itself ("12:00:00+00:00", which sorts after
    "12:00:00.000000" and is local time in another zone): at its expiry, a whole second, the
    session is no longer counted, as ``dead_reason`` and ``live_until`` say."""
    expires_at = datetime(2030, 1, 1, 12, tzinfo=timezone.utc)
    with writer.begin() as connection:
        connection.execute(update(UserSession).values(expires_at=expires_at, last_seen_at=expires_at - timedelta(minutes=1)))
    clock[0] = expires_at
    assert store.count_live_for_user(1) == 0
    clock[0] = (expires_at - timedelta(seconds=30)).astimezone(timezone(timedelta(hours=2)))
    assert store.count_live_for_user(1) == 1


def test_a_timed_read_at_another_distance_from_its_moment_is_another_read(database, session_id, executions):
    """The time parameters are kept as their distance from the moment: the same statement asked
    with another idle timeout is another read, and the same again is not."""
    now = utcnow()

    def count(idle_after, at=now):
        params = {"now": at, "idle_since": at - idle_after, "user_id": 1}
        return database.read_all(_LIVE_COUNT_OF_USER, params, as_of=at, lasts=lambda rows: None)[0].count

    assert (count(timedelta(hours=1)), count(timedelta(0))) == (1, 0)  # last seen before now, not after
    assert len(executions) == 2
    assert count(timedelta(hours=1), now + timedelta(seconds=1)) == 1
    assert len(executions) == 2


def test_a_timed_read_keys_a_time_parameter_that_is_no_datetime_as_it_is(database, session_id, executions):
    now = utcnow()

    def count(idle_since, at=now):
        params = {"now": at, "idle_since": idle_since, "user_id": 1}
        return database.read_all(_LIVE_COUNT_OF_USER, params, as_of=at, lasts=lambda rows: None)[0][0]

    assert count(None) == count(None, now + timedelta(seconds=1)) == 0  # NULL compares with nothing
    assert len(executions) == 1


def test_a_timed_read_true_of_its_moment_alone_is_not_kept(database, session_id, executions):
    now = utcnow()
    params = {"now": now, "idle_since": now, "user_id": 1}
    for _ in range(2):
        database.read_all(_LIVE_COUNT_OF_USER, params, as_of=now, lasts=lambda rows: now)
    assert len(executions) == 2
    assert not database._kept.reads, "nothing kept that no later moment could use"


def test_a_timed_read_read_again_replaces_what_was_kept_and_its_size(database, session_id, store, clock, executions):
    """Asked for an earlier moment (another thread's clock read a little before), the count is
    read again and kept in place of the one before: counted once in the bound on kept text, so
    that reads again do not empty every kept read (the session lookups') sooner."""
    assert store.count_live_for_user(1) == 1
    size = database._kept.size
    for _ in range(3):
        clock[0] -= timedelta(microseconds=1)
        assert store.count_live_for_user(1) == 1
    assert len(executions) == 4
    assert (len(database._kept.reads), database._kept.size) == (1, size)


def test_live_until_is_the_first_end_and_none_for_no_session(store):
    now = utcnow()
    assert store.live_until([(0, None, None)]) is None
    assert store.live_until([(2, now + store.idle_after + timedelta(hours=1), now)]) == now + store.idle_after
    assert store.live_until([(2, now + timedelta(minutes=1), now)]) == now + timedelta(minutes=1)
    store.idle_after = timedelta.max  # past the calendar's end: the expiry alone
    assert store.live_until([(1, now + timedelta(days=1), now)]) == now + timedelta(days=1)


def test_a_count_of_every_row_is_kept(database, session_id, executions):
    """count(*)'s star is SQL written out, but it holds no clock."""
    statement = select(func.count()).select_from(User.__table__)
    assert database.read_all(statement, {}) == database.read_all(statement, {}) == [(1,)]
    assert len(executions) == 1


def test_a_statement_with_a_clock_or_chance_in_it_is_not_kept(database, session_id, executions):
    users = User.__table__
    for statement in (
        select(users.c.id).where(users.c.created_at < func.current_timestamp()),
        select(users.c.id, func.random().label("r")),
        select(users.c.id).where(users.c.name == bindparam("name")),
    ):
        for _ in range(2):
            database.read_all(statement, {"name": "Alice"})
    assert len(executions) == 4 + 1


def test_a_commit_after_the_read_and_before_it_is_kept_is_read_next_time(database, writer, session_id, monkeypatch):
    """A read is kept under the stamp seen before it: a revocation committed between the read
    and its keeping changes the stamp, and the next lookup reads again (kept under the stamp
    seen after, the revoked session would pass as live until the next commit)."""
    kept_cursor = models._kept_cursor
    revocations = [True]

    class RevokingAfterTheRead:
        def __init__(self, cursor):
            self._cursor = cursor

        def fetchall(self):
            rows = self._cursor.fetchall()
            if revocations:
                revocations.pop()
                with writer.begin() as connection:
                    connection.execute(update(UserSession).values(ended_at=utcnow(), end_reason="revoked"))
            return rows

        def __getattr__(self, name):
            return getattr(self._cursor, name)

    monkeypatch.setattr(models, "_kept_cursor", lambda connection: RevokingAfterTheRead(kept_cursor(connection)))
    assert lookup(database, session_id)["ended_at"] is None  # read before the revocation
    assert lookup(database, session_id)["end_reason"] == "revoked"


def test_a_clock_or_chance_written_as_sql_text_is_not_kept(database, session_id, executions):
    """SQL written out (text(), literal_column()) may hold a clock that no function element
    names: SQLite's datetime('now'), CURRENT_TIMESTAMP, random()."""
    users = User.__table__
    for statement in (
        select(users.c.id).where(text("created_at < datetime('now')")),
        select(users.c.id, literal_column("CURRENT_TIMESTAMP").label("at")),
        select(users.c.id, literal_column("random()").label("r")),
    ):
        for _ in range(2):
            database.read_all(statement, {})
    assert len(executions) == 3 * 2


def test_reads_kept_under_one_stamp_are_bounded(database, session_id, executions, monkeypatch):
    monkeypatch.setattr(models, "KEPT_READS", 3)
    for n in range(5):
        lookup(database, f"session-{n}")
    assert len(database._kept.reads) <= 3
    lookup(database, "session-4")  # the last one read is kept
    assert len(executions) == 5


def test_reads_kept_under_one_stamp_are_bounded_in_bytes(database, writer, session_id, executions, monkeypatch):
    """A page of long posts is not kept at all past a sixteenth of the bound; the rest are kept
    until their text reaches it."""
    with writer.begin() as connection:
        owner = connection.execute(select(User.__table__.c.id)).scalar_one()
        connection.execute(Post.__table__.insert(), [
            {"owner_id": owner, "title": f"t{n}", "body": "b" * 20_000, "created_at": utcnow(), "updated_at": utcnow()}
            for n in range(21)
        ])
    monkeypatch.setattr(models, "KEPT_BYTES", 16 * 64 * 1024)  # a read of more than 64 KiB is not kept
    page = {"offset": 0, "limit": 21}
    for _ in range(2):
        assert len(database.read_all(_PAGE_OF_POSTS, page)) == 21
    assert len(executions) == 2, "420 KB of posts: read each time"
    for _ in range(2):
        assert len(database.read_all(_PAGE_OF_POSTS, {"offset": 0, "limit": 3})) == 3  # 60 KB: kept
    assert len(executions) == 3
    for n in range(20):  # 20 x 60 KB passes the 1 MiB bound: emptied on the way, never above it
        database.read_all(_PAGE_OF_POSTS, {"offset": n, "limit": 3})
        assert database._kept.size <= models.KEPT_BYTES


def test_an_index_that_cannot_be_opened_keeps_nothing_and_the_read_is_made(url, monkeypatch):
    def refused(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sqlite.os, "open", refused)
    database = Database.from_url(url)
    try:
        assert database.read_all(_PAGE_OF_POSTS, {"offset": 0, "limit": 1}) == []
        assert database._stamp is None
        assert sqlite.commit_stamp(database.lookup_engine) is None, "remembered: not tried again"
    finally:
        database.dispose()


def test_a_header_being_written_keeps_nothing(database, session_id, executions, monkeypatch):
    lookup(database, session_id)
    stamp = database._stamp
    real = stamp._mapping
    half = sqlite._HEADER
    monkeypatch.setattr(stamp, "_mapping", real[:half] + bytes(half))  # the copies differ
    lookup(database, session_id)
    lookup(database, session_id)
    assert len(executions) == 3
    monkeypatch.setattr(stamp, "_mapping", real)
    lookup(database, session_id)
    assert len(executions) == 3


@pytest.mark.parametrize("usable", [True, False])
def test_this_process_keeps_its_locks_on_the_index_it_mapped(database, url, session_id, monkeypatch, usable):
    """Python's mmap keeps a duplicate of the descriptor and closes it when the mapping is
    collected; closing any descriptor of a file drops every POSIX lock the process holds on it.
    Were a mapping of an index found unusable let go, SQLite's dead-man switch on the index
    would go with it, and the next process to open the database would think itself alone and
    start the index afresh under this one's connections."""
    if not usable:
        monkeypatch.setattr(sqlite, "_VERSION", 0)  # as if the header were not SQLite's
    assert lookup(database, session_id) is not None
    assert (database._stamp is not None) is usable
    gc.collect()
    assert another_process_finds_the_index_held(url)


def another_process_finds_the_index_held(url) -> bool:
    """Whether a write lock on the WAL index's dead-man switch (byte 128, SQLite's unix VFS) is
    refused to another process: refused while any process has the database open."""
    result = in_another_process(url, "fd = os.open(path + '-shm', os.O_RDWR)\n"
                                     "try:\n"
                                     "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128, os.SEEK_SET)\n"
                                     "except OSError:\n"
                                     "    print('held')\n"
                                     "else:\n"
                                     "    print('free')")
    return result.stdout.strip() == "held"


def test_one_mapping_per_file_however_many_databases_read_it(url):
    first, second = Database.from_url(url), Database.from_url(url)
    try:
        first.read_all(_PAGE_OF_POSTS, {"offset": 0, "limit": 1})
        second.read_all(_PAGE_OF_POSTS, {"offset": 0, "limit": 1})
        assert first._stamp is second._stamp is not None
    finally:
        first.dispose()
        second.dispose()
    # Disposed, both, and the file is still held by this process: it stays mapped.
    assert not another_process_takes_it_out_of_wal(url)


def test_while_mapped_no_other_process_can_take_the_file_out_of_wal(database, url, session_id):
    """Writes outside WAL would not touch the index: SQLite refuses to leave WAL while this
    process holds the file, as it does while any connection is open."""
    lookup(database, session_id)
    assert not another_process_takes_it_out_of_wal(url)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as check:
        assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_another_process_could_take_a_file_no_one_holds_out_of_wal(tmp_path):
    """What the test above proves is this process's doing (a file nobody holds leaves WAL)."""
    path = tmp_path / "alone.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
    connection.close()
    assert another_process_takes_it_out_of_wal(f"sqlite:///{path}")


def another_process_takes_it_out_of_wal(url) -> bool:
    result = in_another_process(
        url, "print(sqlite3.connect(path, timeout=0.2).execute('PRAGMA journal_mode=DELETE').fetchone()[0])", check=False
    )
    assert result.returncode == 0 or "database is locked" in result.stderr, result.stderr
    return result.stdout.strip() == "delete"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_database_has_no_stamp(url):
    assert sqlite.commit_stamp(create_engine(url)) is None


def test_a_database_not_in_wal_has_no_stamp(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'rollback.sqlite'}")
    engine.connect().close()
    assert sqlite.commit_stamp(engine) is None
    engine.dispose()


def test_a_database_with_exclusive_locking_has_no_stamp(url):
    """SQLite keeps the index in the connection's own memory then: a -shm file a process that died
    left beside the database says nothing, and is never written again."""
    in_another_process(url, "sqlite3.connect(path).execute('SELECT 1 FROM users').fetchall()\nos._exit(0)")
    assert os.path.exists(url.removeprefix("sqlite:///") + "-shm")
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def exclusive(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA locking_mode=EXCLUSIVE")
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    assert sqlite.commit_stamp(engine) is None
    engine.dispose()


def test_a_vfs_that_keeps_the_index_in_memory_has_no_stamp(url):
    """The unix-excl VFS keeps the WAL index in this process's heap: a -shm file a process that
    died left beside the database is never written again, and a read kept by it would outlive
    every commit, this process's own included."""
    path = url.removeprefix("sqlite:///")
    in_another_process(url, "sqlite3.connect(path).execute('SELECT 1 FROM users').fetchall()\nos._exit(0)")
    assert os.path.exists(path + "-shm")
    database = Database.from_url(f"sqlite:///file:{path}?vfs=unix-excl&uri=true")
    try:
        users = User.__table__
        with database.own_transaction() as dbsession, dbsession.begin():
            dbsession.execute(users.insert().values(issuer="https://idp.example.test", subject="bob", name="Bob"))
        statement = select(users.c.name)
        assert database.read_all(statement, {}) == [("Bob",)]
        with database.own_transaction() as dbsession, dbsession.begin():
            dbsession.execute(update(User).values(name="Robert"))
        assert database.read_all(statement, {}) == [("Robert",)]
        assert database._stamp is None
    finally:
        database.dispose()


def test_an_error_finding_the_stamp_is_sqlalchemys(database, session_id, monkeypatch):
    """As the read's own: an outage answers 503 (errors.outage_errors), not 500. Nothing is
    remembered, so the next read looks for the stamp again."""
    from sqlalchemy import exc

    def locked(_dbapi_connection):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(sqlite, "_wal_index", locked)
    with pytest.raises(exc.OperationalError):
        lookup(database, session_id)
    monkeypatch.undo()
    assert lookup(database, session_id) is not None and database._stamp is not None


def test_postgresql_has_no_stamp():
    """Asked before any connection is made: none is."""
    assert sqlite.commit_stamp(create_engine("postgresql+psycopg://app@127.0.0.1:9/app")) is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_keeps_nothing(database, session_id):
    """A child has the parent's mapping but not its locks: its inherited stamp reads None."""
    lookup(database, session_id)
    assert database._stamp.read() is not None
    read, write = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of forking with threads; this child runs none
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report and leave at once, running nothing of pytest's
        os.close(read)
        os.write(write, b"none" if database._stamp.read() is None else b"kept")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"none"
    assert database._stamp.read() is not None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_child_forked_while_a_stamp_is_being_found_can_find_its_own(tmp_path):
    """Another thread of the parent's finding a stamp at the fork holds the lock: the child's
    first read of a new file must not wait for it for ever."""
    url = f"sqlite:///{tmp_path / 'child.sqlite'}"
    engine = get_engine(url)
    migrate(engine)
    read, write = os.pipe()
    holding, done = threading.Event(), threading.Event()

    def finding():
        with sqlite._LOCK:
            holding.set()
            done.wait(10)

    finder = threading.Thread(target=finding)
    finder.start()
    holding.wait(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report and leave at once, running nothing of pytest's
        os.close(read)
        free = sqlite._LOCK.acquire(timeout=2)
        os.write(write, b"free" if free else b"held")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    done.set()
    finder.join()
    engine.dispose()
    assert answer == b"free"
