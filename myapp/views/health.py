import logging
import threading
import weakref
from time import monotonic

from pyramid.httpexceptions import HTTPNotFound
from pyramid.response import Response
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config

from myapp.errors import NotMigrated, describe_outage, outage_errors
from myapp.models import SCHEMA_REVISION, current_revision
from myapp.services.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

# A database or Redis that takes connections and then answers nothing (a server hung, a network
# dropping packets) would hold /readyz as long as the kernel (or the Redis client's socket timeout)
# waits: it is "not ready" sooner, and a hang holds a few checks and connections, not one per probe.
READY_WITHIN = 5.0
CHECKS_AT_ONCE = 3


@view_config(route_name="healthz", request_method="GET", renderer="json", permission=NO_PERMISSION_REQUIRED)
def healthz(request):
    return {"status": "ok"}


@view_config(route_name="readyz", request_method="GET", renderer="json", permission=NO_PERMISSION_REQUIRED)
def readyz(request):
    """Ready when every dependency answers within READY_WITHIN seconds: the database, and Redis when
    it is configured, checked at the same time."""
    checks = {"database": _latest_check(request.services.database.engine, _database_answers)}
    redis_client = request.services.redis
    if redis_client is not None:
        checks["redis"] = _latest_check(redis_client, _redis_answers)
    answers = {name: check.answer() for name, check in checks.items()}
    ready = all(value == "ok" for value in answers.values())
    request.response.status_int = 200 if ready else 503
    return {"status": "ok" if ready else "unavailable", "checks": answers}


def _database_answers(engine) -> None:
    """It answers, at this code's schema revision or a newer one (a rolling deployment migrates
    before it replaces the processes): one restored empty, or not migrated yet, is not ready
    (helper-142: /readyz said ok while every signed-in page failed)."""
    revision = current_revision(engine)
    if not (revision is not None and revision.isdigit() and int(revision) >= int(SCHEMA_REVISION)):
        raise NotMigrated(f"it is at schema revision {revision}, this code needs {SCHEMA_REVISION}")


def _redis_answers(client) -> None:
    client.ping()


def _latest_check(dependency, probe) -> "_Check":
    """The check of ``dependency`` this probe waits for: a check still waiting goes on alone, in its
    own thread, until the pool's, the connection's or the client's own timeout ends it. A probe
    shares the latest check while that is within its READY_WITHIN, and starts another only while
    fewer than CHECKS_AT_ONCE wait: a long hang holds that many threads and connections, not one for
    each probe, and one connection stuck alone (its server gone, its packets dropped) does not keep
    the process unready while the others answer."""
    with _checks_lock:
        waiting = [check for check in _checks.get(dependency, ()) if not check.done.is_set()]
        check = waiting[-1] if waiting else None
        if check is None or (check.started + READY_WITHIN <= monotonic() and len(waiting) < CHECKS_AT_ONCE):
            check = _Check(probe, dependency)
            waiting.append(check)
        _checks[dependency] = waiting
    return check


class _Check:
    """One check of a dependency (``probe(dependency)`` returns when it answers), in a thread of its own."""

    def __init__(self, probe, dependency):
        self.started = monotonic()
        self._answer: str | None = None
        self.done = threading.Event()
        try:
            threading.Thread(target=self._run, args=(probe, dependency), name="myapp readyz", daemon=True).start()
        except RuntimeError:  # the process may start no more threads (a container's limit of tasks)
            self._answer = "unavailable: no thread to check with"
            self.done.set()

    def _run(self, probe, dependency) -> None:
        try:
            probe(dependency)
            self._answer = "ok"
        except NotMigrated:
            self._answer = "unavailable: not migrated"
        except Exception as e:  # any failure means "not ready", whatever the driver raises
            self._answer = f"unavailable: {type(e).__name__}"
        finally:
            self.done.set()

    def answer(self) -> str:
        """"ok", or why not, by READY_WITHIN seconds after the check started."""
        self.done.wait(max(0.0, self.started + READY_WITHIN - monotonic()))
        return self._answer or f"unavailable: no answer within {READY_WITHIN:g} s"


# The checks of each dependency (an app's engine, its Redis client) still waiting, the latest last.
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
    try:
        live = request.session_store.count_live()
    except outage_errors() as e:
        # This process's counters are what an operator needs most in an outage: served all the
        # same, the live sessions (the one figure the database gives) as NaN, unknown; the whole
        # answer was a 503 page, and every counter lost for the outage's length (helper-136).
        log.warning("metrics served without the live sessions: %s", describe_outage(e))
        live = float("nan")
    exposition = request.services.metrics.exposition(live)
    return Response(body=exposition, content_type=CONTENT_TYPE.split(";")[0], charset="utf-8")
