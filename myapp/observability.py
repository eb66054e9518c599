"""What ties a log line, an audit record and an upstream call to one request: the request id,
and the log format (``myapp.log.format``: ``text`` or ``json``).

The id is the incoming ``X-Request-ID`` when it is well formed (a reverse proxy's), else a new
random one; it is answered in ``X-Request-ID``, sent to upstreams, written in every log line of
the request and stored with its audit records.
"""

import contextlib
import contextvars
import functools
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_HEADER = "X-Request-ID"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{8,128}")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("myapp_request_id", default=None)


# New ids are drawn from the operating system's random source 256 at a time: one system call
# (one hand-off of the GIL to another thread) per 256 requests instead of one per request. A
# process forked with ids left over (os.fork, whose after-fork hooks run) starts afresh, so a
# parent and its child never hand out the same one.
_ID_BATCH = 256
_fresh_ids: list[str] = []
os.register_at_fork(after_in_child=_fresh_ids.clear)


def new_request_id() -> str:
    """32 random hex digits."""
    try:
        return _fresh_ids.pop()  # atomic: two threads never get the same one
    except IndexError:
        batch = os.urandom(16 * _ID_BATCH).hex()
        _fresh_ids.extend(batch[i : i + 32] for i in range(32, len(batch), 32))
        return batch[:32]


def request_id_of(environ) -> str:
    incoming = environ.get("HTTP_X_REQUEST_ID", "")
    return incoming if _WELL_FORMED.fullmatch(incoming) else new_request_id()


def current_request_id() -> str | None:
    """The id of the request this thread is answering (None outside a request: scripts, the revoker)."""
    return _request_id.get()


@contextlib.contextmanager
def answering(request_id: str | None):
    """Log lines written meanwhile name ``request_id``: for a request's work done after its own
    code has returned and the tween has let go of its id (its answer, streaming)."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def request_id_tween_factory(handler, registry):
    def tween(request):
        request_id = request_id_of(request.environ)
        token = _request_id.set(request_id)
        try:
            response = handler(request)
        finally:
            _request_id.reset(token)
        # On the header list: WebOb's mapping would lowercase every name to set one.
        headerlist = response.headerlist
        if any(name.lower() == "x-request-id" for name, _ in headerlist):  # an upstream's own
            headerlist[:] = [(name, value) for name, value in headerlist if name.lower() != "x-request-id"]
        headerlist.append((REQUEST_ID_HEADER, request_id))
        return response

    return tween


def current_trace_id() -> str | None:
    """The trace id of the current span, when tracing is on (hex, as trace tools show it)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class RequestContext(logging.Filter):
    """Adds ``request_id`` and ``trace_id`` to every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id() or "-"
        record.trace_id = current_trace_id() or "-"
        return True


def configure_logging(log_format: str, handlers: list[logging.Handler] | None = None) -> None:
    """Give the handlers the ini file configured (the root logger's) the request context, and,
    for ``json``, one JSON object a line. Idempotent: an app made twice in one process (tests)
    does not stack filters.

    With ``json``, what Python would otherwise write to standard error as text goes through the
    log too, so that a log shipper reading JSON lines reads it: a warning (logger ``py.warnings``),
    an exception that ends a thread (``threading.excepthook``) or the main thread
    (``sys.excepthook``), and one Python could not raise, in a finalizer or a callback
    (``sys.unraisablehook``), each a line of logger ``myapp`` with its traceback in ``exc_info``.
    Not where the log has nowhere to write (no handler on the root logger: a warning would be lost
    instead of shown), and a hook that something else set (a test runner) is left alone."""
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, RequestContext) for f in handler.filters):
            handler.addFilter(RequestContext())
        if log_format == "json" and not isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(json_formatter())
    if log_format == "json" and logging.getLogger().hasHandlers():
        logging.captureWarnings(True)
        if not getattr(logging.Handler.handleError, "notes_failures", False):
            logging.Handler.handleError = _noting_failures(logging.Handler.handleError)
        if threading.excepthook is threading.__excepthook__:
            threading.excepthook = log_thread_exception
        if sys.excepthook is sys.__excepthook__:
            sys.excepthook = log_uncaught_exception
        if sys.unraisablehook is sys.__unraisablehook__:
            sys.unraisablehook = log_unraisable_exception


# Whether the hook at work on this thread had its record refused by a handler (below).
_hook = threading.local()


def _noting_failures(handle_error):
    """``logging.Handler.handleError``, which also notes, for a hook below at work on the same
    thread, that a handler failed to write its record: logging reports that failure itself and
    raises nothing, so the hook would not know its exception went untold."""

    @functools.wraps(handle_error)
    def noting(self, record):
        if getattr(_hook, "at_work", False):
            _hook.failed = True
        return handle_error(self, record)

    noting.notes_failures = True
    return noting


def _logged(log: Callable[[], None]) -> bool:
    """Whether ``log()`` got its record written: False when a filter raised, or a handler failed
    to write it (a full disk, a closed pipe), which logging reports and swallows."""
    _hook.at_work, _hook.failed = True, False
    try:
        log()
    except Exception:
        return False
    finally:
        _hook.at_work = False
    return not _hook.failed


def log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception no code of a thread caught, as a line of the log instead of a traceback written
    to standard error (``threading.excepthook``). Leaving a thread by SystemExit says nothing, as
    Python's own hook does; what the log could not write, Python's hook tells."""
    if issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "a thread"
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    if not _logged(lambda: logging.getLogger("myapp").error("uncaught exception in thread %s", name, exc_info=exc_info)):
        threading.__excepthook__(args)


def log_uncaught_exception(exc_type, exc_value, exc_traceback) -> None:
    """An exception that ends the main thread (``sys.excepthook``), as a line of the log. Ctrl-C
    is Python's to tell, as at a terminal, and so is what the log could not write."""
    exc_info = (exc_type, exc_value, exc_traceback)
    if issubclass(exc_type, KeyboardInterrupt) or not _logged(
        lambda: logging.getLogger("myapp").critical("uncaught exception", exc_info=exc_info)
    ):
        sys.__excepthook__(*exc_info)


def log_unraisable_exception(unraisable) -> None:
    """An exception Python could not raise (in ``__del__``, a weakref callback, a generator closed
    by the collector: ``sys.unraisablehook``), as a line of the log; what the log could not write,
    Python's hook tells. The object is told by its repr, made at once, and the traceback's frames
    are cleared once told: a handler that keeps records (a MemoryHandler) keeps nothing alive
    through them, the object being finalized least of all."""
    where = unraisable.err_msg or "Exception ignored in"
    try:
        what = repr(unraisable.object) if unraisable.object is not None else ""
    except Exception:
        what = f"<{type(unraisable.object).__name__} object>"
    exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    message = f"{where}: {what}" if what else where
    if not _logged(lambda: logging.getLogger("myapp").error("%s", message, exc_info=exc_info)):
        sys.__unraisablehook__(unraisable)
    if unraisable.exc_traceback is not None:
        traceback.clear_frames(unraisable.exc_traceback)


def json_formatter() -> JsonFormatter:
    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(trace_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )
    # ISO 8601 in UTC ("2026-12-06T16:40:29.472Z"), whatever the server's zone: lines of several
    # machines, or of the hour a clock goes back, sort, and log shippers read it as a date.
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def includeme(config):
    # The log's format is set by make_app, before the first line it logs.
    config.add_tween("myapp.observability.request_id_tween_factory", under="INGRESS")
