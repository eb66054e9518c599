"""The seam tests hand main(): a Database whose work all happens inside one test's connection."""

import contextlib

from sqlalchemy.orm import sessionmaker

from myapp.models import Database, get_tm_session_factory


class RolledBackDatabase(Database):
    """The app's three kinds of transaction, its own short ones included, all inside one test's
    connection, which the test rolls back. ``bind`` it to each test's connection."""

    def __init__(self, engine):
        super().__init__(engine, engine)
        self._connection = None

    def bind(self, connection) -> "RolledBackDatabase":
        self._connection = connection
        self._request_sessions = get_tm_session_factory(connection)
        self._own_sessions = sessionmaker(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        return self

    def read(self):
        return contextlib.nullcontext(self._connection)

    def dispose(self):
        """Nothing: the engine belongs to the test session."""
