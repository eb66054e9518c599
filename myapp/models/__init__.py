"""Database plumbing: the engines, the three kinds of transaction (:class:`Database`), the schema check."""

import collections
import contextlib
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import NamedTuple, TypeVar

import zope.sqlalchemy
import zope.sqlalchemy.datamanager
from sqlalchemy import Connection, Select, create_engine, event, exc, inspect, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, configure_mappers, sessionmaker
from sqlalchemy.sql import elements, functions, sqltypes, visitors

from myapp.errors import NotMigrated, describe_outage

from . import postgresql, sqlite
from .audit import AuditEvent
from .login import LoginTransaction, SeenLogoutToken
from .meta import Base
from .post import Post
from .revocation import TokenRevocation
from .session import SessionToken, UserSession
from .user import User

# The alembic head this code expects; tests/unit/models/test_migrations.py keeps it honest.
SCHEMA_REVISION = "0012"
MAX_RETRIED_BODY_BYTES = 1024 * 1024

__all__ = [
    "AuditEvent",
    "Base",
    "Database",
    "LoginTransaction",
    "Post",
    "SeenLogoutToken",
    "SessionToken",
    "TokenRevocation",
    "User",
    "UserSession",
    "SCHEMA_REVISION",
]

configure_mappers()

T = TypeVar("T")


class SchemaError(RuntimeError):
    """The database is not at the revision this code needs."""


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets readers proceed while one writer commits; several processes share the file.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# Requests each hold one connection from the request pool until they end; work that commits on
# its own (recording activity, the refresh lock) draws from a second pool, so that a request
# waiting for a refresh can never starve the refresh of a connection.
REQUEST_POOL = {"pool_size": 20, "max_overflow": 10, "pool_timeout": 30}
OWN_TRANSACTION_POOL = {"pool_size": 5, "max_overflow": 25, "pool_timeout": 10}
# The per-request session lookup: one statement, no transaction (so nothing to roll back when the
# connection goes back), no ping before it (a connection found dead is retried once instead).
# On PostgreSQL that is one round trip per request instead of three.
LOOKUP_POOL = {"pool_size": 20, "max_overflow": 10, "pool_timeout": 30, "pool_pre_ping": False,
               "pool_reset_on_return": None, "isolation_level": "AUTOCOMMIT"}
# How long each wait on PostgreSQL lasts at most (models/postgresql.py; docs/reliability.md). The
# lookup pool's reads never wait for a lock (a SELECT on PostgreSQL waits for no row lock): as
# /readyz, 5 s. Any other statement may wait for a session row a refresh holds (the refresh lock's
# own SELECT ... FOR UPDATE, a sign-out's, recording activity, a row referring to it): for as long
# as the refresh lock waits, 2 x myapp.oidc.http_timeout + 5 s, and WAIT_MARGIN more. The pools'
# ping before they hand out an idle connection and ROLLBACK wait for no lock: the lookup's bound.
LOOKUP_WITHIN = 5.0
WAIT_MARGIN = 5.0


# A table or a column that is not there: PostgreSQL's SQLSTATEs (undefined_table,
# undefined_column), SQLite's words.
_MISSING_SQLSTATES = frozenset({"42P01", "42703"})
_MISSING_IN_SQLITE = ("no such table", "no such column")


def not_migrated(error: BaseException, dialect: str) -> NotMigrated | None:
    """:class:`NotMigrated` when the driver's ``error`` says a statement named a table or column
    the database does not have (an outage: a 503 in SPEC.md's words, and a log line saying what to
    run), where PostgreSQL's error was a 500 (helper-142); else None."""
    said = str(error).strip()
    if getattr(error, "sqlstate", None) in _MISSING_SQLSTATES or (
        dialect == "sqlite" and (said.startswith(_MISSING_IN_SQLITE) or " has no column named " in said)
    ):
        return NotMigrated(describe_outage(error))
    return None


def _missing_schema(context) -> BaseException | None:
    """Every engine's ``handle_error`` hook: :func:`not_migrated` instead of the driver's error."""
    return not_migrated(context.original_exception, context.dialect.name)


def get_engine(url: str, *, within: float | None = None, lock_free_within: float | None = None, **kwargs) -> Engine:
    """An engine for ``url``; on PostgreSQL with ``within``, every wait of its connections ends
    within that many seconds (its pool's ping and ROLLBACK within ``lock_free_within``, if
    shorter), and libpq's own timeouts apply (models/postgresql.py)."""
    if url in ("sqlite://", "sqlite:///:memory:"):
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith(("pool_", "max_overflow"))}
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "handle_error", _missing_schema)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    parsed = make_url(url)
    bounded = within is not None and parsed.get_dialect().driver == "psycopg"
    if bounded:
        kwargs["connect_args"] = {**postgresql.libpq_bounds(parsed), **kwargs.get("connect_args", {})}
    engine = create_engine(url, **kwargs)
    event.listen(engine, "handle_error", _missing_schema)
    if bounded:
        postgresql.bound_waits(engine, within, lock_free_within=lock_free_within)
    return engine


def get_own_transaction_engine(
    url: str, *, within: float | None = None, lock_free_within: float | None = None
) -> Engine:
    """The engine for work that commits on its own. On SQLite, which has no row locks (PostgreSQL
    uses ``FOR UPDATE``), each such transaction starts with ``BEGIN IMMEDIATE``, taking the
    database's write lock: refreshes stay single-flight across processes sharing the file.
    """
    engine = get_engine(url, within=within, lock_free_within=lock_free_within, **OWN_TRANSACTION_POOL)
    if engine.dialect.name == "sqlite":
        begin_sqlite_transactions_with(engine, "BEGIN IMMEDIATE")
    return engine


def begin_sqlite_transactions_with(engine: Engine, statement: str) -> None:
    """Let SQLAlchemy, not pysqlite, begin transactions on this SQLite engine, with ``statement``."""

    @event.listens_for(engine, "connect")
    def _manual_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql(statement)


def get_tm_session_factory(engine_or_connection) -> sessionmaker[Session]:
    """Sessions that join the current thread's transaction: pyramid_tm commits or aborts them.

    Registered once on the factory (per session it would cost every request a tenth of a
    millisecond); waitress serves each request in one thread, whose transaction manager pyramid_tm
    begins and ends. Even a read-only request ends with COMMIT rather than ROLLBACK (the same cost):
    when tests run each request as a savepoint, work committed on its own inside it survives.
    """
    factory = sessionmaker(bind=engine_or_connection, expire_on_commit=False)
    if isinstance(engine_or_connection, Connection):
        factory.configure(join_transaction_mode="create_savepoint")
    zope.sqlalchemy.register(factory, initial_state=zope.sqlalchemy.datamanager.STATUS_CHANGED)
    return factory


class Database:
    """Where the app's database work happens, in three kinds of transaction.

    - ``request_session(request)``: the request's ORM session, committed or aborted by pyramid_tm;
    - ``own_transaction()``: a session for work that commits on its own (recording activity, the
      refresh lock), from a second pool so that requests waiting for a refresh cannot starve it;
    - ``read()``: a pooled connection for a short read, released at once;
    - ``read_row(statement, params)``: the per-request session lookup, on the driver's cursor;
    - ``read_all(statement, params)``: what a page that writes nothing shows, outside any transaction.

    On a SQLite file the last two keep what they read until the next commit, by any process
    (``models/sqlite.py``; docs/architecture.md, "Reads kept until the next commit").

    One instance per app, built from ``sqlalchemy.url``; tests hand ``main()`` one whose three
    kinds all run inside a connection that is rolled back.
    """

    def __init__(self, engine: Engine, own_engine: Engine, lookup_engine: Engine | None = None):
        self.engine = engine
        self.own_engine = own_engine
        self.lookup_engine = lookup_engine or engine
        self._request_sessions = get_tm_session_factory(engine)
        # The lookup engine's commit stamp, found on the first read (_UNKNOWN until then), and
        # what was read under the stamp it was read under.
        self._stamp: sqlite.CommitStamp | None | object = _UNKNOWN
        self._kept = _KeptReads(None)
        self._own_sessions = sessionmaker(bind=own_engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str, *, within: float | None = None, lookup_within: float | None = None) -> "Database":
        """The engines for ``url``. On PostgreSQL, each wait of the session lookup's pool ends
        within ``lookup_within`` seconds (LOOKUP_WITHIN without it), and so do the others' ping
        of an idle connection and ROLLBACK; each other wait of the others within ``within`` (none
        without it: a script's), so that a database that answers nothing costs a request a 503,
        not its thread."""
        lookup_within = LOOKUP_WITHIN if lookup_within is None else lookup_within
        engine = get_engine(url, within=within, lock_free_within=lookup_within, **REQUEST_POOL)
        if url in ("sqlite://", "sqlite:///:memory:"):  # one database per engine: share it
            return cls(engine, engine)
        return cls(
            engine,
            get_own_transaction_engine(url, within=within, lock_free_within=lookup_within),
            get_engine(url, within=lookup_within, **LOOKUP_POOL),
        )

    def request_session(self, request) -> Session:
        return self._request_sessions(info={"request": request})

    def own_transaction(self) -> Session:
        return self._own_sessions()

    def read(self) -> AbstractContextManager[Connection]:
        return self.engine.connect()

    def read_all(
        self, statement: Select, params: dict, *, as_of: datetime | None = None,
        lasts: Callable[[list[tuple]], datetime | None] | None = None,
    ) -> list[tuple]:
        """Every row ``statement`` selects, for a page that writes nothing, as named tuples with
        SQLAlchemy's types (equal to the rows SQLAlchemy's own execution gives): on the lookup
        pool's driver cursor, released at once, in no transaction. Such a page builds no ORM
        session, so pyramid_tm has nothing to commit, and no SQLAlchemy ``Connection`` either
        (with eight threads at once, a tenth of ``/posts``). It does not see what the request
        itself has written and not committed: never use it after a write.

        ``as_of`` and ``lasts``, for a statement about a moment (as "live now"): each of its time
        parameters is at a fixed distance from ``as_of``, and ``lasts(rows)`` is the first moment
        after ``as_of`` at which the same statement, its times moved as far, could select other
        rows with nothing committed meanwhile (None: never). On a SQLite file the rows stand for
        every moment from ``as_of`` until then, or until the next commit; elsewhere they change
        nothing.
        """
        if (as_of is None) != (lasts is None):
            raise TypeError("read_all: as_of and lasts go together")
        rows, _ = self._read(statement, params, as_of=as_of, lasts=lasts, made=True)
        return list(rows)  # the caller's own list: the rows in it may be kept, and are shared

    def read_row(self, statement: Select, params: dict) -> dict | None:
        """The one row ``statement`` selects (None without one), as a dict by column name, with
        the driver's own values (SQLite's datetimes as text: ``SessionRecord`` parses them).

        Every request runs this: straight on the driver's cursor it costs a fraction of a
        SQLAlchemy execution.
        """
        rows, columns = self._read(statement, params)
        # By the statement's own column names: psycopg builds a description object per column
        # on every call, a third of this read's CPU on PostgreSQL.
        return dict(zip(columns, rows[0])) if rows else None

    def _read(
        self, statement: Select, params: dict, *, as_of: datetime | None = None,
        lasts: Callable[[list], datetime | None] | None = None, made: bool = False,
    ) -> tuple[list, tuple[str, ...]]:
        """The rows ``statement`` selects, as the driver gives them (``made``: as ``read_all``
        gives them, :func:`_made_rows`), and its columns' names, on the cursor a connection of the
        lookup pool keeps; the statement is SQLAlchemy's, compiled once per dialect. A
        connection found dead (the database restarted) is thrown away with every one the pool
        made before it, and the read tried once more on a new one. Errors are SQLAlchemy's, so that an
        outage answers 503. On a SQLite file, kept as ``read_all`` says (``as_of``, ``lasts``: of
        the rows as returned), made: a kept read is not made again (``read_all``'s types: a page of
        20 posts parsed its 40 times on every request, a tenth of its work). Made rows are kept by
        the statement's row shape too: a statement of the same SQL with other types
        (``type_coerce``) is another read.
        """
        engine = self.lookup_engine
        row_shape = _row_shape(statement, engine.dialect) if made else None  # (named tuple, processors)
        sql, names, columns, literals, pure, moments, processors = _compiled(statement, engine.dialect)
        if literals:  # the values written into the statement (``limit(5)``), which params may override
            params = {**literals, **params}
        parameters = tuple(params[name] for name in names) if names is not None else params
        stamp = key = None
        # A timed read (as_of) may have time parameters; one that is not, none.
        if pure and (not moments if as_of is None else names is not None):
            made_as = row_shape[0] if row_shape is not None else None
            stamp, key, found = self._kept_read(sql, names, parameters, moments, as_of, made_as=made_as)
            if found is not None:
                return found
        # As SQLAlchemy's own execution sends them (UTCDateTime's naive UTC text on SQLite, as
        # stored); the key keeps the values as given.
        sent = parameters if not processors else _processed(names, parameters, processors)

        def read():
            connection = cursor = None
            try:
                connection = engine.raw_connection()
                cursor = _kept_cursor(connection)
                cursor.execute(sql, sent)
                # All of them: on SQLite that also ends the statement, and with it the read.
                return cursor.fetchall(), columns
            except engine.dialect.loaded_dbapi.Error as e:
                if connection is not None:
                    _drop_kept_cursor(connection)
                # No connection at all (the database is down) is an outage too, but not retried.
                disconnected = connection is not None and engine.dialect.is_disconnect(
                    e, connection.dbapi_connection, cursor
                )
                if disconnected:
                    # This one, and every connection the pool made before it, which died with it:
                    # those idle now are replaced at their next checkout, those other requests hold
                    # when they come back. As SQLAlchemy's own Connection does on a disconnect;
                    # Engine.dispose() would leave those to a pool thrown away, open until collected.
                    engine.pool._invalidate(connection, e)
                missing = not_migrated(e, engine.dialect.name)
                if missing is not None:
                    raise missing from e
                raise exc.DBAPIError.instance(
                    sql, None, e, engine.dialect.loaded_dbapi.Error, hide_parameters=True,
                    connection_invalidated=disconnected, dialect=engine.dialect,
                ) from e
            finally:
                if connection is not None:
                    connection.close()

        result = _once_more_if_disconnected(read)
        if row_shape is not None:
            result = _made_rows(result[0], *row_shape), result[1]
        if stamp is not None:
            until = lasts(result[0]) if lasts is not None else None
            if until is None or until > as_of:  # else true of this moment alone
                self._keep(stamp, key, _Kept(result, as_of, until))
        return result

    def _kept_read(
        self, sql, names, parameters, moments, as_of, *, made_as: type | None = None
    ) -> tuple[bytes | None, tuple | None, tuple | None]:
        """The commit stamp now (None: nothing is kept), the read's key (its SQL and parameters;
        a timed read's, :func:`_timed_key`; a made one's, marked apart from the driver's rows of the
        same read, and by the named tuple its rows are ``made_as``), and what was kept under both
        that stands for ``as_of``, if anything."""
        commits = self._stamp
        if commits is _UNKNOWN:
            commits = self._stamp = sqlite.commit_stamp(self.lookup_engine)
        stamp = commits.read() if commits is not None else None
        if stamp is None:
            return None, None, None
        key = (sql, parameters) if as_of is None else _timed_key(sql, names, parameters, moments, as_of)
        if made_as is not None:
            key = (key, _MADE, made_as)
        kept = self._kept
        entry = kept.reads.get(key) if kept.under == stamp else None
        if entry is None or (entry.since is not None and not entry.stands_for(as_of)):
            return stamp, key, None
        return stamp, key, entry.result

    def _keep(self, stamp: bytes, key: tuple, entry: "_Kept") -> None:
        """Keep ``entry`` under the stamp read before its read: had a commit come between, the rows
        are newer than it, and the next read, seeing the newer stamp, reads again. A full store is
        replaced whole, never emptied in place: another thread may be reading it."""
        size = _size(entry.result[0])
        kept = self._kept
        # One read again in place of one kept (a timed read for an earlier moment, or two threads
        # that read at once) is counted once.
        if kept.under == stamp and (replaced := kept.reads.pop(key, None)) is not None:
            kept.size -= _size(replaced.result[0])
        if kept.under != stamp or len(kept.reads) >= KEPT_READS or kept.size + size > KEPT_BYTES:
            kept = self._kept = _KeptReads(stamp)
        if size <= KEPT_BYTES // 16:
            kept.reads[key] = entry
            kept.size += size

    def dispose(self) -> None:
        self.engine.dispose()
        self.own_engine.dispose()
        self.lookup_engine.dispose()


_UNKNOWN = object()
_TIMED = object()  # in a timed read's key: never equal to an untimed read's
_MADE = object()  # in a made read's key (read_all's rows): never equal to the driver's rows' (read_row's)
# How many reads are kept under one commit stamp at most, and how much of their text (characters and
# bytes, counted by len(): up to four bytes a character in memory): emptied when full. A read of more
# than a sixteenth of that is not kept (a page of the longest posts the form allows, 21 x 20,000
# characters, is under it).
KEPT_READS = 1024
KEPT_BYTES = 8 * 1024 * 1024


class _Kept(NamedTuple):
    """A kept read: its rows (the driver's, or ``read_all``'s made of them) and columns, and for a
    timed read the moments it stands for, from ``since`` up to ``until`` (None: until the next
    commit)."""

    result: tuple[list, tuple[str, ...]]
    since: datetime | None
    until: datetime | None

    def stands_for(self, as_of: datetime) -> bool:
        """A timed read's: whether it is true at ``as_of``."""
        return self.since <= as_of and (self.until is None or as_of < self.until)


def _timed_key(sql: str, names: tuple[str, ...], parameters: tuple, moments: frozenset[str], as_of: datetime):
    """A timed read's key among the kept: its SQL and parameters, its times as their distance from
    the moment asked about (the same at every moment its rows stand for; a value that is no
    datetime, None, as it is), marked so that it never equals an untimed read's."""
    return sql, tuple(as_of - value if name in moments and isinstance(value, datetime) else value
                      for name, value in zip(names, parameters)), _TIMED


class _KeptReads:
    """What was read under one commit stamp (Database._read), by key (``Database._kept_read``)."""

    __slots__ = ("under", "reads", "size")

    def __init__(self, under: bytes | None):
        self.under = under
        self.reads: dict = {}
        self.size = 0


def _size(rows: list) -> int:
    """How much ``rows`` hold: the length of their text and bytes, and a little for each row."""
    return sum(64 + sum(len(value) for value in row if isinstance(value, str | bytes)) for row in rows)


# Where a pooled connection keeps the cursor its lookups run on. SQLAlchemy empties a pooled
# connection's ``info`` whenever it replaces the DBAPI connection, and the cursor with it.
_KEPT_CURSOR = "myapp.lookup_cursor"


def _kept_cursor(connection):
    """The cursor this pooled connection keeps for the lookups, made on its first one. A new
    psycopg cursor per read cost a third of the read's CPU; a connection is one thread's at a
    time, and so is its cursor."""
    cursor = connection.info.get(_KEPT_CURSOR)
    if cursor is None:
        cursor = connection.info[_KEPT_CURSOR] = connection.dbapi_connection.cursor()
    return cursor


def _drop_kept_cursor(connection) -> None:
    """After an error the cursor is not trusted again: the next read makes a new one."""
    cursor = connection.info.pop(_KEPT_CURSOR, None)
    if cursor is not None:
        with contextlib.suppress(Exception):
            cursor.close()


def _once_more_if_disconnected(read: Callable[[], T]) -> T:
    """``read()``, and once more when it failed on a connection found dead (the database
    restarted, or a cut): by then that connection and its siblings are marked dead, so the
    second try gets a new one. Any other error, or a second failure, is raised."""
    try:
        return read()
    except exc.DBAPIError as e:
        # One that waited out its bound is not tried again: that would double the wait.
        if not e.connection_invalidated or isinstance(e.orig, postgresql.DidNotAnswer):
            raise
    return read()


class _Compiled(NamedTuple):
    """``statement`` for one dialect: its SQL, its parameters' order when positional, the names
    of the columns it selects, in order (labels where it gives them), the values of the
    parameters it carries itself (a literal limit), by name, whether its rows depend on nothing
    but the data, the parameters and the time (:func:`_pure`), and the names of its time
    parameters: it is kept until the next commit when pure with none, and a timed read
    (``Database.read_all``'s ``as_of``) when pure; and the bind processor of each parameter whose
    type has one, by name."""

    sql: str
    names: tuple[str, ...] | None
    columns: tuple[str, ...]
    literals: dict
    pure: bool
    moments: frozenset[str]
    processors: dict[str, Callable]


@functools.cache
def _compiled(statement: Select, dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    columns = tuple(column.name for column in statement.selected_columns)
    if len(set(columns)) != len(columns):
        raise ValueError(f"read_row needs distinct column names, not {columns}")
    required = {name for name, bind in compiled.binds.items() if bind.required}
    literals = {name: value for name, value in compiled.params.items() if name not in required}
    return _Compiled(
        str(compiled), tuple(compiled.positiontup) if compiled.positional else None, columns, literals,
        _pure(statement), frozenset(name for name, bind in compiled.binds.items() if _is_of(bind.type, _MOMENTS)),
        {name: process for name, bind in compiled.binds.items()
         if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None},
    )


def _processed(names: tuple[str, ...] | None, parameters, processors: dict[str, Callable]):
    """``parameters`` (a tuple in ``names``' order, else a dict by name) as the driver is to get
    them: each through its type's bind processor. The driver's own conversion is not the type's:
    pysqlite writes an aware datetime as ``2030-01-01 12:00:00+00:00`` (no decimals at a whole
    second, its own zone), which SQLite compares as text with the stored naive UTC."""
    if names is not None:
        return tuple(value if (process := processors.get(name)) is None else process(value)
                     for name, value in zip(names, parameters))
    return {name: value if (process := processors.get(name)) is None else process(value)
            for name, value in parameters.items()}


# Functions whose value depends on nothing but their arguments. Any other (now(), random(), a
# clock in SQL) makes a statement's rows change with no commit.
_PURE_FUNCTIONS = frozenset({"count", "max", "min", "sum", "avg", "coalesce", "lower", "upper", "length", "abs"})


def _pure(statement: Select) -> bool:
    """Whether rows read once can stand for the same statement's, its parameters the same, until
    the next commit: no function but pure ones, and no SQL written out as text (``text()``,
    ``literal_column()``: it may hold a clock, as ``datetime('now')``, that no function element
    names). One with a time among its parameters is about a moment, as "live now", and is asked
    again only at another: it is kept only when its caller says for how long (``read_all``'s
    ``lasts``); otherwise keeping it would only fill memory."""
    return not any(
        (isinstance(element, functions.FunctionElement) and element.name.lower() not in _PURE_FUNCTIONS)
        or isinstance(element, elements.TextClause)
        # count(*)'s star is the one literal column that holds nothing but itself.
        or (isinstance(element, elements.ColumnClause) and element.is_literal and element.name != "*")
        for element in visitors.iterate(statement)
    )


_MOMENTS = (sqltypes.DateTime, sqltypes.Date, sqltypes.Time, sqltypes.Interval)


# Types whose values can be changed in place (a dict, a list, an unpickled object).
_MUTABLE = (sqltypes.JSON, sqltypes.ARRAY, sqltypes.PickleType)


def _is_of(type_, kinds: tuple[type, ...]) -> bool:
    """Whether ``type_``, or the type a TypeDecorator stores it as, is one of ``kinds``."""
    return isinstance(type_, kinds) or isinstance(getattr(type_, "impl", None), kinds)


@functools.cache
def _row_shape(statement: Select, dialect) -> tuple[type, tuple]:
    """The named tuple ``read_all`` gives for ``statement``'s rows, and the function each column's
    type turns the driver's value into SQLAlchemy's with (None where it takes it as it is)."""
    columns = _compiled(statement, dialect).columns
    for column in statement.selected_columns:
        # read_all's rows may be kept and shared by every request until the next commit: a value
        # one request could change in place must not be in them.
        if _is_of(column.type, _MUTABLE):
            raise TypeError(
                f"read_all: the column {column.name!r} gives values that can be changed in place "
                f"({type(column.type).__name__}): select it as text (cast(..., Text)) and parse it"
            )
    shape = collections.namedtuple("Row", columns, rename=True)
    processors = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None) for column in statement.selected_columns
    )
    return shape, processors


def _made_rows(rows: list, shape: type, processors: tuple) -> list:
    """The driver's ``rows`` as ``read_all`` gives them: ``shape``'s named tuples, each value
    through its column type's result processor (:func:`_row_shape`)."""
    if not any(processors):
        return [shape._make(row) for row in rows]
    return [
        shape._make([value if process is None else process(value) for process, value in zip(processors, row)])
        for row in rows
    ]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def check_schema(engine: Engine, config_file: str | None = None) -> None:
    """Refuse to serve a database that is unmigrated, outdated, or newer than this code."""
    try:
        revision = current_revision(engine)
    except NotMigrated:
        revision = None  # alembic_version there but not as alembic makes it: not migrated
    except SQLAlchemyError as e:
        # The driver's first line, closed: its others (a hint, a server's detail) would make it several lines.
        raise SchemaError(f"cannot reach the database ({describe_outage(e)})") from None
    if revision == SCHEMA_REVISION:
        return
    command = f"myapp-migrate {config_file or '<your ini file>'}"
    if revision is None:
        raise SchemaError(f"the database is not migrated; run: {command}")
    if revision.isdigit() and int(revision) > int(SCHEMA_REVISION):
        # Migrating cannot help (myapp-migrate refuses it too): say what can.
        raise SchemaError(
            f"the database is at schema revision {revision}, newer than this version of myapp knows "
            f"({SCHEMA_REVISION}): was it migrated by a newer version? Run that version, or restore the "
            "database from before its migration"
        )
    raise SchemaError(
        f"the database is at schema revision {revision}, this code needs {SCHEMA_REVISION}; run: {command}"
    )


def includeme(config):
    settings = config.get_settings()
    settings["tm.commit_veto"] = commit_veto
    # pyramid_tm would look the user up inside its own tween, where a database outage can only
    # become waitress's bare 500; the audit log says who did what instead.
    settings["tm.annotate_user"] = False
    settings["retry.activate_hook"] = retry_attempts
    config.include("pyramid_tm")
    config.add_request_method(None, name="tm")  # Request.tm instead: see there
    config.include("pyramid_retry")

    database = config.registry.get(Database)
    if database is None:
        app_settings = settings["myapp"]
        database = config.registry[Database] = Database.from_url(
            app_settings.database_url, within=app_settings.refresh_lock_timeout + WAIT_MARGIN
        )
    try:
        check_schema(database.engine, settings.get("config_file"))
    except SchemaError:
        database.dispose()
        raise


def commit_veto(request, response) -> bool:
    """pyramid_tm's veto: abort on an exception or a 4xx/5xx, unless the view kept its work.

    A view keeps its work with ``request.keep_transaction()`` after discarding everything else,
    so a refused request can still leave its audit record.
    """
    if getattr(request, "keeps_transaction", False):
        return False
    if getattr(request, "exc_info", None) is not None:
        return True
    return response.status.startswith(("4", "5"))


def retry_attempts(request) -> int | None:
    """pyramid_retry's hook: proxied API calls and large bodies are attempted once.

    Replaying a proxied call would repeat its effect upstream; and enabling retries makes
    pyramid_retry copy the whole request body first, which a streaming proxy must not do and
    which would spool an oversized form to disk before it is refused.
    """
    if request.environ.get("PATH_INFO", "").startswith("/api/"):
        return 1
    return 1 if (request.content_length or 0) > MAX_RETRIED_BODY_BYTES else None


def insert_ignoring_duplicates(dbsession: Session, model, values: dict, keys: list[str]) -> bool:
    """INSERT .. ON CONFLICT DO NOTHING on SQLite and PostgreSQL; True when a row was added."""
    dialect = dbsession.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    table = model.__table__
    statement = (
        insert(table).values(**values).on_conflict_do_nothing(index_elements=keys).returning(table.c.id)
    )
    # RETURNING, not rowcount: drivers report -1 for some INSERTs.
    return dbsession.execute(statement).first() is not None
