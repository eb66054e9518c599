"""Database.read_row and read_all, the reads outside any transaction, against SQLAlchemy's own
execution of the same statements, on SQLite and PostgreSQL."""

from datetime import timedelta

import pytest
from sqlalchemy import bindparam, column, literal_column, select, table
from sqlalchemy.exc import DBAPIError

from myapp.errors import NotMigrated
from myapp.models import _KEPT_CURSOR, Database, Post, User, _compiled
from myapp.models.meta import utcnow
from myapp.services.sessions import _BY_ID_HASH, _LIVE_COUNT_OF_USER, SessionRecord, SessionStore, hash_session_id
from myapp.services.tokenset import TokenCipher
from myapp.settings import load_settings
from myapp.views.posts import _PAGE_OF_POSTS, _RECENT_POSTS_OF
from tests.conftest import TEST_KEY, base_settings


@pytest.fixture
def database(committed_database_url):
    database = Database.from_url(committed_database_url)
    yield database
    database.dispose()


@pytest.fixture
def session_row(committed, committed_database_url):
    user = User(issuer="https://idp.example.test", subject="alice", name="", email="alice@example.test",
                groups=["staff", "ops"])
    committed.add(user)
    committed.flush()
    settings = load_settings(base_settings(committed_database_url)).session
    store = SessionStore(dbsession=committed, cipher=TokenCipher([TEST_KEY]), settings=settings)
    raw_id, _ = store.create(user=user)
    committed.commit()
    return raw_id


def test_read_row_names_columns_as_sqlalchemy_does(database, committed, session_row):
    params = {"id_hash": hash_session_id(session_row)}
    read = database.read_row(_BY_ID_HASH, params)
    expected = dict(committed.execute(_BY_ID_HASH, params).mappings().one())
    assert read.keys() == expected.keys()
    assert "user_issuer" in read and "user_groups" in read
    record, expected_record = SessionRecord.from_columns(read), SessionRecord.from_columns(expected)
    assert record == expected_record
    assert record.user_groups == ("staff", "ops") and record.user_name == "alice@example.test"


def test_read_row_without_a_row_is_none(database, committed):
    assert database.read_row(_BY_ID_HASH, {"id_hash": "0" * 64}) is None


def test_read_row_refuses_a_statement_with_two_columns_of_one_name(database):
    doubled = select(User.__table__.c.id, Post.__table__.c.id).where(User.__table__.c.id == bindparam("x"))
    with pytest.raises(ValueError, match="distinct column names"):
        database.read_row(doubled, {"x": 1})


def test_read_all_reads_what_is_committed_with_sqlalchemys_types(database, committed):
    user = User(issuer="https://idp.example.test", subject="bob", name="Bob")
    committed.add(user)
    committed.flush()
    committed.add_all([Post(owner_id=user.id, title=f"t{n}", body="", created_at=utcnow()) for n in range(3)])
    committed.commit()
    statement = select(Post.__table__.c.title, Post.__table__.c.created_at).where(
        Post.__table__.c.owner_id == bindparam("owner")
    ).order_by(Post.__table__.c.title)
    rows = database.read_all(statement, {"owner": user.id})
    assert [r.title for r in rows] == ["t0", "t1", "t2"]
    assert rows == committed.execute(statement, {"owner": user.id}).all()


def test_read_all_gives_the_rows_sqlalchemy_gives_for_the_pages_statements(database, committed, session_row):
    """The posts list (a join, an offset and a limit as parameters), the dashboard's posts (a limit
    written into the statement) and its count of live sessions, each as SQLAlchemy executes it."""
    user = committed.execute(select(User).where(User.subject == "alice")).scalar_one()
    committed.add_all(
        [Post(owner_id=user.id, title=f"t{n}", body="b" * n, created_at=utcnow(), updated_at=utcnow()) for n in range(7)]
    )
    committed.commit()
    reads = [
        (_PAGE_OF_POSTS, {"offset": 2, "limit": 4}),
        (_RECENT_POSTS_OF, {"owner_id": user.id}),
        (_LIVE_COUNT_OF_USER, {"now": utcnow(), "idle_since": utcnow() - timedelta(hours=1), "user_id": user.id}),
    ]
    for statement, params in reads:
        rows = database.read_all(statement, params)
        expected = committed.execute(statement, params).all()
        assert rows == expected and len(rows) == len(expected) > 0
        assert [row._asdict() for row in rows] == [dict(row._mapping) for row in expected]
    assert len(database.read_all(_RECENT_POSTS_OF, {"owner_id": user.id})) == 5  # the limit written in it


def test_a_parameter_given_overrides_a_value_written_into_the_statement(database, committed, session_row):
    statement = select(User.__table__.c.subject).where(User.__table__.c.subject == "alice")
    assert database.read_all(statement, {}) == [("alice",)]
    literal = next(iter(_compiled(statement, database.lookup_engine.dialect).literals))
    assert database.read_all(statement, {literal: "nobody"}) == []


def test_a_failed_read_all_is_sqlalchemys_error_and_the_next_read_works(database, session_row):
    with pytest.raises(DBAPIError):
        database.read_all(select(literal_column("no_such_function(1)")), {})
    params = {"id_hash": hash_session_id(session_row)}
    assert SessionRecord.from_columns(database.read_row(_BY_ID_HASH, params)).user_subject == "alice"


@pytest.mark.parametrize(
    "said, dialect",
    [("no such table: posts", "sqlite"), ("no such column: posts.version", "sqlite"),
     ("table posts has no column named version", "sqlite")],
)
def test_what_sqlite_says_of_a_missing_table_or_column_is_not_migrated(said, dialect):
    import sqlite3

    from myapp.models import not_migrated

    assert isinstance(not_migrated(sqlite3.OperationalError(said), dialect), NotMigrated)
    assert not_migrated(sqlite3.OperationalError("database is locked"), dialect) is None
    assert not_migrated(sqlite3.OperationalError(said), "postgresql") is None  # PostgreSQL's is its SQLSTATE


def test_a_read_of_a_table_the_database_lacks_is_not_migrated_and_the_next_read_works(database, session_row):
    """helper-142: a database emptied or replaced under the running app was a 500 on PostgreSQL;
    it is an outage (503) that says what to run, on the raw reads as on SQLAlchemy's."""
    with pytest.raises(NotMigrated, match="run myapp-migrate"):
        database.read_all(select(column("x")).select_from(table("no_such_table")), {})
    params = {"id_hash": hash_session_id(session_row)}
    assert SessionRecord.from_columns(database.read_row(_BY_ID_HASH, params)).user_subject == "alice"


def test_read_row_keeps_one_cursor_per_pooled_connection(database, session_row):
    """A psycopg cursor costs a third of the read to make: each pooled connection keeps its own."""
    params = {"id_hash": hash_session_id(session_row)}
    assert database.read_row(_BY_ID_HASH, params) is not None
    kept = kept_cursor(database)
    assert kept is not None
    assert database.read_row(_BY_ID_HASH, params) is not None
    assert kept_cursor(database) is kept


def test_after_a_failed_read_the_next_one_works_on_a_new_cursor(database, session_row):
    params = {"id_hash": hash_session_id(session_row)}
    database.read_row(_BY_ID_HASH, params)
    before = kept_cursor(database)
    broken = select(literal_column("no_such_function(1)"))
    with pytest.raises(DBAPIError):
        database.read_row(broken, {})
    record = SessionRecord.from_columns(database.read_row(_BY_ID_HASH, params))
    assert record.user_subject == "alice"
    assert kept_cursor(database) is not before


def kept_cursor(database):
    """The cursor the lookup pool's (only) connection keeps, as the next read would find it."""
    connection = database.lookup_engine.raw_connection()
    try:
        return connection.info.get(_KEPT_CURSOR)
    finally:
        connection.close()
