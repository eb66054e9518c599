"""Database.read_row and read_all, the reads outside any transaction, against SQLAlchemy's own
execution of the same statements, on SQLite and PostgreSQL."""

import pytest
from sqlalchemy import bindparam, column, select, table
from sqlalchemy.exc import DBAPIError

from myapp.models import _KEPT_CURSOR, Database, Post, User
from myapp.models.meta import utcnow
from myapp.services.sessions import _BY_ID_HASH, SessionRecord, SessionStore, hash_session_id
from myapp.services.tokenset import TokenCipher
from myapp.settings import load_settings
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
    broken = select(column("x")).select_from(table("no_such_table"))
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
