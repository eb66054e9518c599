"""OpenTelemetry traces (SPEC.md "Observability"), off unless ``myapp.otel.enabled``.

A span for each request and, inside it, the session lookup, each refresh (with how long it
waited for the lock), every call to a provider and to an upstream; W3C ``traceparent`` goes to
upstreams and providers. Spans carry names, routes, statuses and durations only: never a token,
cookie, code, verifier, secret, or a URL's query string. With tracing off, the API's no-op
tracer makes every span here cost a function call; in a request that is not sampled, no span is
made inside the request's own.
"""

import contextlib
import logging
import re
import time
from contextvars import ContextVar
from urllib.parse import unquote_plus, urlsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from myapp.settings import secret_parameter

log = logging.getLogger(__name__)
tracer = trace.get_tracer("myapp")
# Off unless a tracer provider was installed here (or by a test): then every helper below is a
# constant context manager, so a request pays next to nothing for tracing that is off.
_active = False


class _NoSpan:
    def set_attribute(self, key, value) -> None:
        pass

    def is_recording(self) -> bool:
        return False


_NO_SPAN = contextlib.nullcontext(_NoSpan())


# Whether this request's own span is sampled. When it is not (the other nine of one in ten), no
# span is made inside it: a parent-based sampler, the SDK's default, would drop each of them, after
# paying to make it. ``traceparent`` still goes out, the request's own, flagged not sampled, so
# upstreams and the provider follow the same decision. Outside a request (a background task),
# spans are made as before.
_sampled: ContextVar[bool] = ContextVar("myapp_request_sampled", default=True)

# W3C Trace Context's headers: a caller's go on to an upstream only as passed_on() says.
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
_W3C = TraceContextTextMapPropagator()
# What a caller's trace headers get wrong is the caller's: OpenTelemetry's parser would log each
# malformed tracestate member, up to 8 KiB of a stranger's text, at WARNING, for every such request.
# Unless the logging configuration says otherwise for them.
for _parser in ("opentelemetry.trace.span", "opentelemetry.trace.propagation.tracecontext"):
    if logging.getLogger(_parser).level == logging.NOTSET:
        logging.getLogger(_parser).setLevel(logging.ERROR)


def activate(on: bool = True) -> None:
    global _active
    _active = on


def span(name: str, attributes: dict | None = None):
    """``with span(...) as s:`` an internal span, or nothing at all while tracing is off."""
    return tracer.start_as_current_span(name, attributes=attributes) if _active and _sampled.get() else _NO_SPAN


def setup_tracing(settings) -> None:
    """Install the exporter the settings name, once per process (a second app made in the same
    process, as tests do, keeps the first one's)."""
    if not settings.enabled:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        activate()
        return
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    if settings.exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        hide_in_logs(query_secrets(settings.endpoint))
        exporter = OTLPSpanExporter(endpoint=settings.endpoint)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    activate()


# Where the exporter, the SDK's batch processor and the HTTP client under them log a failed export,
# the collector's URL in the words (its query, a key among them, with it).
EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter", "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk.trace.export", "opentelemetry.sdk._shared_internal", "urllib3.connectionpool",
)


def query_secrets(url: str) -> tuple[str, ...]:
    """The values of ``url``'s query parameters whose names say they may hold a secret (an
    ``api_key=...`` a collector takes: settings.secret_parameter, as myapp-show-config masks
    them), decoded, longest first."""
    values = set()
    for pair in urlsplit(url).query.split("&"):
        name, _, value = pair.partition("=")
        # A byte that is no UTF-8 (%FF, a cut %C3) kept as that byte (surrogateescape), which
        # the client writes as it came: read as U+FFFD, it was looked for as such (helper-138).
        decoded = unquote_plus(value, errors="surrogateescape")
        if secret_parameter(unquote_plus(name)) and decoded:
            values.add(decoded)
    return tuple(sorted(values, key=len, reverse=True))


def _spellings(secret: str) -> re.Pattern:
    """``secret`` however a URL may write it: each character as it is or %-escaped (its UTF-8
    bytes, hex in either case: only the hex, the characters as they are), a space as ``+`` too.
    The HTTP client writes the URL anew before it is logged (``%2b`` as ``%2B``, a space as
    ``%20``: helper-137). A byte that is no UTF-8 (surrogateescape's) only %-escaped."""
    def hex_of(byte: int) -> str:
        return "%" + "".join(f"[{d.upper()}{d.lower()}]" if d.isalpha() else d for d in f"{byte:02x}")

    def one(character: str) -> str:
        if 0xDC80 <= ord(character) <= 0xDCFF:
            return hex_of(ord(character) - 0xDC00)
        escaped = "".join(hex_of(byte) for byte in character.encode("utf-8", "surrogatepass"))
        return f"(?:{re.escape(character)}|{escaped}{'|[+]' if character == ' ' else ''})"
    return re.compile("".join(one(c) for c in secret))


class HiddenInLogs(logging.Filter):
    """Writes ``***`` for each of ``secrets``, however a URL spells it, in a record's words and its
    exception's text. Never fails the caller: a record it cannot read is left as it is (logging
    itself then says it could not format it, as without the filter: helper-137)."""

    def __init__(self, secrets: tuple[str, ...]):
        super().__init__()
        self.secrets = secrets
        self.patterns = tuple(_spellings(secret) for secret in secrets)

    def hide(self, text: str) -> tuple[str, bool]:
        hidden = text
        for pattern in self.patterns:
            hidden = pattern.sub("***", hidden)
        return hidden, hidden != text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message, found = self.hide(record.getMessage())
            if found:
                record.msg, record.args = message, None
            if record.exc_info and record.exc_info[1] is not None:
                text, found = self.hide(logging.Formatter().formatException(record.exc_info))
                if found:
                    record.exc_info, record.exc_text = None, text
        except Exception:  # noqa: BLE001 - a logging call's own mistake is logging's to report
            pass
        return True


def hide_in_logs(secrets: tuple[str, ...]) -> None:
    """What the collector's endpoint holds in its query (a key, as some collectors take it) is
    ``***`` wherever an export that failed is logged: the exporter wrote the URL, key and all, at
    WARNING, on every failed export (helper-136), where myapp-show-config masks it."""
    if not secrets:
        return
    for name in EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        logger.filters = [f for f in logger.filters if not isinstance(f, HiddenInLogs)]
        logger.addFilter(HiddenInLogs(secrets))


def inject(headers: dict) -> None:
    """Add ``traceparent`` (and ``tracestate``, if it has one) of the current span to an outgoing
    request: a caller's tracestate only if the request continued the caller's trace and it read."""
    if _active:
        propagate.inject(headers)


def passed_on(traceparent: str | None, tracestate: str | None) -> dict:
    """A caller's ``traceparent`` and ``tracestate`` for an upstream, with tracing off: unchanged,
    as a proxy that takes no part in the trace passes them, but only as OpenTelemetry reads them
    (W3C Trace Context): an invalid traceparent goes nowhere, nor the tracestate that came with
    it, which belongs to it; a tracestate that does not read (over 8,192 characters or 32 members,
    a member its grammar refuses, a key twice) is dropped. With tracing on, nothing: :func:`inject`
    sends the request's own traceparent, with the tracestate that goes with it."""
    if _active or traceparent is None:
        return {}
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    context = trace.get_current_span(_W3C.extract(carrier)).get_span_context()
    if not context.is_valid:
        return {}
    if not context.trace_state:
        return {"traceparent": traceparent}
    return carrier


def outgoing_span(name: str, *, kind_of: str, target: str | None, method: str):
    """A client span for a call to a provider or an upstream; ``target`` is its configured name,
    never a URL (None: a client made for no provider in particular, as tests make, names none)."""
    if not _active or not _sampled.get():
        return _NO_SPAN
    attributes = {"http.request.method": method}
    if target is not None:
        attributes[f"myapp.{kind_of}"] = target
    return tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes)


# HTTP's own methods (RFC 9110, and PATCH). The request line is the caller's: any other method is
# "_OTHER" and its span is named "HTTP", as OpenTelemetry's HTTP conventions say, so that made-up
# methods (any token, thousands of characters) add no span names or attribute values.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})


def request_tween_factory(handler, registry):
    """The server span of each request: its route pattern, never the address it was called with."""

    def tween(request):
        if not _active:
            return handler(request)
        context = propagate.extract({k[5:].replace("_", "-").lower(): v for k, v in request.environ.items()
                                     if k in ("HTTP_TRACEPARENT", "HTTP_TRACESTATE")})
        known = request.method in HTTP_METHODS
        method = request.method if known else "HTTP"
        with tracer.start_as_current_span(
            method, context=context, kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method if known else "_OTHER"},
        ) as span:
            if not span.is_recording():
                sampled = _sampled.set(False)
                try:
                    return handler(request)
                finally:
                    _sampled.reset(sampled)
            response = handler(request)
            route = getattr(request, "matched_route", None)
            if route is not None:
                span.update_name(f"{method} {route.pattern}")
                span.set_attribute("http.route", route.pattern)
            span.set_attribute("http.response.status_code", response.status_int)
            if response.status_int >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    return tween


class Stopwatch:
    def __init__(self):
        self.started = time.perf_counter()

    def milliseconds(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)


def includeme(config):
    setup_tracing(config.get_settings()["myapp"].otel)
    config.add_tween("myapp.tracing.request_tween_factory", under="myapp.observability.request_id_tween_factory")
