"""The seam tests hand make_app(): a Database whose work all happens inside one test's connection."""

import contextlib

from sqlalchemy.orm import Session

from myapp.models import Database, get_tm_session_factory


class RolledBackDatabase(Database):
    """The app's three kinds of transaction, its own short ones included, all inside one test's
    connection, which the test rolls back. ``bind`` it to each test's connection."""

    def __init__(self, engine):
        super().__init__(engine, engine)
        self._connection = None
        self._tm_sessions = None

    def bind(self, connection) -> "RolledBackDatabase":
        self._connection = connection
        self._tm_sessions = get_tm_session_factory(connection)
        return self

    def request_session(self, request) -> Session:
        return self._tm_sessions(info={"request": request})

    def own_transaction(self) -> Session:
        return Session(bind=self._connection, join_transaction_mode="create_savepoint", expire_on_commit=False)

    def read(self):
        return contextlib.nullcontext(self._connection)

    def read_all(self, statement, params, *, as_of=None, lasts=None):
        # On the test's connection, this sees what the request wrote and did not commit, which
        # the app's read_all (a connection of its own) does not: only pages that write nothing
        # before it may use it (tests/functional/test_hot_path.py checks they open no transaction).
        # Nothing is kept (as_of, lasts): the test's connection sees each write at once.
        return self._connection.execute(statement, params).all()

    def read_row(self, statement, params):
        return self._connection.execute(statement, params).mappings().one_or_none()

    def dispose(self):
        """Nothing: the engine belongs to the test session."""
