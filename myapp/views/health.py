import threading
import weakref
from time import monotonic

from pyramid.httpexceptions import HTTPNotFound
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config
from sqlalchemy import text

from myapp.services.metrics import CONTENT_TYPE

# A database that takes connections and then answers nothing (a server hung, a network dropping
# packets) would hold /readyz as long as the kernel waits, many minutes: it is "not ready" sooner.
# (Redis has its own: the client's socket timeouts.)
READY_WITHIN = 5.0
CHECKS_AT_ONCE = 3


@view_config(route_name="healthz", request_method="GET", renderer="json", permission=NO_PERMISSION_REQUIRED)
def healthz(request):
    return {"status": "ok"}


@view_config(route_name="readyz", request_method="GET", renderer="json", permission=NO_PERMISSION_REQUIRED)
def readyz(request):
    """Ready when every dependency answers: the database, and Redis when it is configured."""
    checks = {"database": _database_answers(request.services.database.engine)}
    redis_client = request.services.redis
    if redis_client is not None:
        try:
            redis_client.ping()
            checks["redis"] = "ok"
        except Exception as e:  # connection refused, timeout, authentication: all "not ready"
            checks["redis"] = f"unavailable: {type(e).__name__}"
    ready = all(value == "ok" for value in checks.values())
    request.response.status_int = 200 if ready else 503
    return {"status": "ok" if ready else "unavailable", "checks": checks}


def _database_answers(engine) -> str:
    """"ok", or why not, within READY_WITHIN seconds; a check still waiting then goes on alone, in
    its own thread, until the pool's or the connection's own timeout ends it. A probe shares the
    latest check while that is within its READY_WITHIN, and starts another only while fewer than
    CHECKS_AT_ONCE wait: a long hang holds that many threads and pooled connections, not one for
    each probe, and one connection stuck alone (its server gone, its packets dropped) does not keep
    the process unready while the others answer."""
    with _checks_lock:
        waiting = [check for check in _checks.get(engine, ()) if not check.done.is_set()]
        check = waiting[-1] if waiting else None
        if check is None or (check.started + READY_WITHIN <= monotonic() and len(waiting) < CHECKS_AT_ONCE):
            check = _Check(engine)
            waiting.append(check)
        _checks[engine] = waiting
    check.done.wait(max(0.0, check.started + READY_WITHIN - monotonic()))
    return check.answer or f"unavailable: no answer within {READY_WITHIN:g} s"


class _Check:
    """One check of the database, in a thread of its own."""

    def __init__(self, engine):
        self.started = monotonic()
        self.answer: str | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(engine,), name="myapp readyz", daemon=True).start()

    def _run(self, engine) -> None:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            self.answer = "ok"
        except Exception as e:  # any failure means "not ready", whatever the driver raises
            self.answer = f"unavailable: {type(e).__name__}"
        finally:
            self.done.set()


# The checks of each engine (an app's) still waiting, the latest last.
_checks: "weakref.WeakKeyDictionary[object, list[_Check]]" = weakref.WeakKeyDictionary()
_checks_lock = threading.Lock()


@view_config(route_name="metrics", request_method="GET", permission=NO_PERMISSION_REQUIRED)
def metrics(request):
    """Prometheus text format, for the addresses and networks in myapp.metrics.allow only."""
    settings = request.services.settings.metrics
    if not settings.enabled:
        raise HTTPNotFound()
    if not settings.allows(request.remote_addr):
        return Response("Metrics are not served to this address.\n", status=403, content_type="text/plain")
    exposition = request.services.metrics.exposition(request.session_store.count_live())
    return Response(body=exposition, content_type=CONTENT_TYPE.split(";")[0], charset="utf-8")
