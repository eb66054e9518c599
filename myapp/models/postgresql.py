"""PostgreSQL connections (psycopg 3) whose every wait ends within a bound.

A server that is hung, or a network that stopped carrying its answers, takes a request and answers
nothing: the kernel acknowledges what was sent, so a connection waits for an answer as long as it
stays open, many minutes or for ever, and every waitress thread that needs the database with it.
What bounds each case (docs/reliability.md has the table):

- establishing a connection: libpq's ``connect_timeout``;
- a peer gone from the network: libpq's ``keepalives*`` (a connection idle in the pool, or waiting
  for an answer, found dead) and ``tcp_user_timeout`` (data sent and never acknowledged);
- a server that takes a request and answers nothing, which none of those notice: a deadline on
  each of the driver's waits (:class:`BoundedConnection`). psycopg hands every wait of a connection
  to ``Connection.wait`` and wakes it a few times a second even when nothing arrives; a wait past
  its deadline closes the connection and raises :class:`DidNotAnswer`, an ``OperationalError``:
  SQLAlchemy finds the connection closed, throws it away as it does any connection found dead, and
  the app answers 503 ``service_unavailable`` as for any outage. The pool's ping and ``ROLLBACK``,
  which wait for no lock, may have a shorter deadline than the statements (:func:`bound_waits`).
"""

import contextlib
from time import monotonic

import psycopg
from psycopg import pq
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

# libpq's own bounds, in its units (connect_timeout in whole seconds, tcp_user_timeout in ms),
# given to every bounded engine unless the URL sets them.
CONNECT_WITHIN = 5
LIBPQ_BOUNDS = {
    "connect_timeout": str(CONNECT_WITHIN),
    # A peer gone while its connection is idle or waiting: found dead in 30 + 3 × 10 s.
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
# libpq 12 and later: what was sent and is still unacknowledged after 30 s ends the connection.
TCP_USER_TIMEOUT = {"tcp_user_timeout": "30000"}


class DidNotAnswer(psycopg.OperationalError):
    """The database did not answer within the bound: the connection was closed, and is thrown away."""


class _Expired(Exception):
    pass


def _within(gen, until: float):
    """``gen``, a psycopg generator, as long as its waits end by ``until``. psycopg sends it
    ``Ready.NONE`` (falsy) each time its wait wakes without anything to read or write."""
    try:
        waiting = next(gen)
        while True:
            ready = yield waiting
            if not ready and monotonic() >= until:
                gen.close()
                raise _Expired
            waiting = gen.send(ready)
    except StopIteration as e:
        return e.value


class BoundedConnection(psycopg.Connection):
    """A psycopg connection whose every wait (a statement's answer, a commit, a rollback, a ping)
    ends within :attr:`within` seconds: by then it has its answer, or it is closed and the wait
    raises :class:`DidNotAnswer`. Subclassed per bound by :func:`bound_waits`."""

    within: float = 0.0

    @contextlib.contextmanager
    def waiting_at_most(self, seconds: float):
        """Each wait within ``seconds`` instead, until the block ends."""
        self.within = seconds
        try:
            yield
        finally:
            del self.within  # back to the class's bound

    def wait(self, gen, *args, **kwargs):
        try:
            return super().wait(_within(gen, monotonic() + self.within), *args, **kwargs)
        except _Expired:
            # Mid-statement: nothing can be sent on it again. The server rolls back what it began.
            self.pgconn.finish()
            raise DidNotAnswer(f"the database did not answer within {self.within:g} s") from None


def libpq_bounds(url: URL) -> dict:
    """libpq's timeouts for a connection to ``url``, except those its query string sets."""
    bounds = dict(LIBPQ_BOUNDS)
    if pq.version() >= 120000:
        bounds.update(TCP_USER_TIMEOUT)
    return {key: value for key, value in bounds.items() if key not in url.query}


def bound_waits(engine: Engine, within: float, *, lock_free_within: float | None = None) -> None:
    """Make ``engine``'s connections :class:`BoundedConnection`\\ s waiting at most ``within`` s,
    and at most ``lock_free_within`` s (if shorter) in the two waits that never wait for a lock:
    the pool's ping before it hands out an idle connection, and ``ROLLBACK``."""
    connection_class = type("BoundedConnection", (BoundedConnection,), {"within": within})

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, record, cargs, cparams):
        return connection_class.connect(*cargs, **cparams)

    @event.listens_for(engine, "handle_error")
    def _no_new_connection_after_a_ping_that_ran_out(context):
        # A dead connection's ping makes the pool try a new one, which a database that answers
        # nothing keeps for connect_timeout: twice the wait. The request's 503 comes now instead.
        if context.is_pre_ping and isinstance(context.original_exception, DidNotAnswer):
            context.is_disconnect = False

    if lock_free_within is None or lock_free_within >= within:
        return
    # The statements' long bound is there for a row a refresh holds; on these two it would only
    # keep a thread on a hung database. A ROLLBACK cut short loses nothing: the server rolls back
    # the connection it finds closed. The dialect is this engine's own (create_engine makes one per
    # engine); no event wraps either call.
    dialect = engine.dialect
    ping, rollback = dialect.do_ping, dialect.do_rollback

    def do_ping(dbapi_connection) -> bool:
        with dbapi_connection.waiting_at_most(lock_free_within):
            return ping(dbapi_connection)

    def do_rollback(connection) -> None:
        # SQLAlchemy hands it the pool's proxy of the driver's connection.
        with getattr(connection, "dbapi_connection", connection).waiting_at_most(lock_free_within):
            rollback(connection)

    dialect.do_ping, dialect.do_rollback = do_ping, do_rollback
