"""The BFF proxy: ``/api/{upstream}/{path}`` forwarded with a fresh access token, nothing else.

Only configured upstreams are reachable and the target URL is built from the configured base URL
and the path below it, never from ``Host`` or anything else the browser sends. The browser's
credentials and forwarding headers stay here; the upstream's cookies stay there, and so do its
challenges that would have the browser ask for a password (only Bearer and DPoP ones pass).
Bodies are spooled (to disk beyond 1 MiB) so a request can be replayed after a refresh or a DPoP
nonce challenge (once each), and responses stream back in chunks, never held whole in memory. A
token bound to the session's key (RFC 9449) goes as ``Authorization: DPoP`` with a fresh proof.
"""

import json
import logging
import re
import tempfile
import unicodedata
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from myapp import tracing
from myapp.errors import APIError, ErrorCode
from myapp.observability import answering, current_request_id, new_request_id, request_id_of
from myapp.services.dpop import Nonces, challenge_error
from myapp.services.http1 import ConnectionPool, Response, TimedOut, Timeout, Unreachable, UpstreamError
from myapp.services.stepup import (
    PIECE_ENDS,
    parse_challenge,
    readable_challenge,
    stream_safe,
    trimmed,
    visible,
)
from myapp.services.tokenset import Credential
from myapp.settings import Upstream

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
SPOOL_IN_MEMORY = 1024 * 1024
MAX_JSON_BYTES = 1024 * 1024
# Answers that never have a body (RFC 9110 sections 15.3.5, 15.4.5): a Content-Length on one names
# no body to come (a 304's may be its representation's), and waitress, given one, waits for that
# body, finds it short, and closes the browser's connection with a warning.
BODILESS_STATUSES = frozenset({204, 304})
# RFC 9110's hop-by-hop headers, and every one that waitress refuses from an application ("trailers").
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
     "trailers", "transfer-encoding", "upgrade"}
)
# Only these browser headers go upstream (plus a upstream's own `forward_headers`): content
# negotiation, caching. Everything else stays here, whatever tricks it carries
# (X-HTTP-Method-Override, X-Original-URL, the CSRF token, credentials). traceparent and
# tracestate go only as W3C Trace Context has it (tracing.passed_on and tracing.inject).
FORWARDED_REQUEST_HEADERS = frozenset(
    {"accept", "accept-encoding", "accept-language", "cache-control", "content-encoding", "content-language",
     "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "pragma", "prefer", "range",
     "user-agent", "x-requested-with"}
)
# The upstream's cookies stay there, and it does not get to weaken this site's own policies, nor
# set one for the whole origin (NEL and Report-To: browsers would report every request to this
# origin, with its URL, to wherever the upstream says; Set-Login, the origin's FedCM login status,
# read from a same-origin fetch's answer too; Service-Worker-Allowed, a worker's scope), nor those
# that act on a page loaded from it (none is: /api/ needs X-CSRF, which no navigation sends).
# Link stays: APIs page with it (RFC 8288 rel="next"), and browsers act on it for documents only.
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {
    "set-cookie", "set-cookie2", "strict-transport-security", "clear-site-data", "content-security-policy",
    "content-security-policy-report-only", "x-frame-options", "x-content-type-options", "referrer-policy", "alt-svc",
    "nel", "report-to", "set-login", "service-worker-allowed",
    "refresh", "reporting-endpoints", "permissions-policy", "permissions-policy-report-only",
    "feature-policy", "document-policy", "document-policy-report-only", "require-document-policy",
    "origin-agent-cluster", "accept-ch", "critical-ch", "speculation-rules", "supports-loading-mode",
    "cross-origin-opener-policy", "cross-origin-opener-policy-report-only", "cross-origin-embedder-policy",
    "cross-origin-embedder-policy-report-only",
}
# The challenges of an upstream's WWW-Authenticate that reach the browser: Bearer and DPoP, which
# browser code reads (SPEC.md's step-up and DPoP sections) and browsers leave alone. Any other
# scheme may have the browser act for this site's origin: ask for a password and remember it
# (Basic, Digest), sign in with the person's Windows credentials (NTLM, Negotiate), or fetch a
# token unasked (PrivateToken), whoever controls the upstream.
BROWSER_CHALLENGE_SCHEMES = frozenset({"bearer", "dpop"})
# A list's comma, an auth-param's quoted value (RFC 9110 section 11.2: only after "="), whose
# commas separate nothing, and group 1 empty when it is never closed; or a quote that opens none.
_COMMA_OR_QUOTED_VALUE = re.compile(r'=[ \t]*+"(?:[^"\\]++|\\.)*+("?)|,|"')
# A list element that starts a challenge: a scheme, then nothing, or whitespace and no "=" (then
# it is an auth-param's name).
_CHALLENGE_START = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)(?:[ \t]++(?!=)|\Z)")
# Encoded separators; NUL and every other control (a server that strips a segment reads "..%09" as
# ".."); ";" (Tomcat, Jetty and Spring read "..;" as ".."); "?" and "#" (a server that decodes the
# path and splits it again reads "..%3Fx" as ".." and a query); and a "%" that starts no escape
# (urllib3 would then encode every "%" of the path, turning "%41" into "%2541").
_FORBIDDEN_ENCODED = re.compile(r"%(2f|5c|3b|3f|23|[01][0-9a-f]|7f)|%(?![0-9a-f]{2})", re.IGNORECASE)
# An escape left once a segment is decoded (%252e, %25C0%25AE, IIS's %u002e): an upstream or a
# gateway that decodes twice would read what the first decoding's checks never saw.
_ENCODED_TRICK = re.compile(r"%([0-9a-f]{2}|u[0-9a-f]{4})", re.IGNORECASE)
_BEYOND_ASCII = re.compile(r"[^\x00-\x7f]+")
# RFC 3986 section 3.3: what a path holds unescaped, besides letters, digits and "-._~".
_PCHAR = "/!$&'()*+,;=:@"
# RFC 9110 section 5.6.2: what a header name may be. A value may hold no control character but tab.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]*\Z")
# RFC 9112 section 4: a reason phrase is tabs, spaces, visible characters and obs-text.
_REASON = re.compile(r"[\t -~\x80-\xff]*\Z")
# Pure functions of a header's exact name, remembered for the names seen (bounded: past the limit
# they are worked out each time): the WSGI environ key's header name ("" for a key that is none),
# and a response header name's lower-case form (None when it is dropped whatever its value).
_NAME_MEMO_LIMIT = 2048
_ENVIRON_NAMES: dict[str, str] = {}
_RESPONSE_NAMES: dict[str, str | None] = {}


def _environ_name(key: str) -> str:
    """Worked out and remembered; callers look in ``_ENVIRON_NAMES`` first (the hot path)."""
    name = key[5:].replace("_", "-").lower() if key.startswith("HTTP_") else ""
    if len(_ENVIRON_NAMES) < _NAME_MEMO_LIMIT:
        _ENVIRON_NAMES[key] = name
    return name


def _response_name(name: str) -> str | None:
    """Worked out and remembered; callers look in ``_RESPONSE_NAMES`` first (the hot path)."""
    lower = name.lower()
    if lower in DROPPED_RESPONSE_HEADERS or lower.startswith("access-control-") or not _HEADER_NAME.match(name):
        lower = None
    if len(_RESPONSE_NAMES) < _NAME_MEMO_LIMIT:
        _RESPONSE_NAMES[name] = lower
    return lower


def browser_challenges(value: str) -> str:
    """An upstream's ``WWW-Authenticate`` value with the challenges of
    :data:`BROWSER_CHALLENGE_SCHEMES` only, each as it came ("" when none is left). What belongs
    to no challenge (auth-params before the first) goes too, and so does a value whose quoted
    string is never closed: where it ends cannot be told, nor what a browser would read after it.
    Nor can it when a quote stands elsewhere than after "=": libsoup (WebKitGTK's browsers), which
    splits challenges at commas, takes any quote to open or close a quoted string, and would read
    ``Bearer x"y, a="z, Basic realm="r"`` (one Bearer challenge here) as a Basic one after a
    Bearer, as it would two such lines, which it joins. (Not :func:`myapp.services.stepup.challenges`,
    which reads auth-params leniently for a step-up: this reading decides what a browser may see,
    as strictly as the strictest browser reads it, and keeps each challenge's own text.)"""
    challenges: list[list] = []  # [scheme, start, end]
    start, unattached = 0, False
    ends = []
    for match in _COMMA_OR_QUOTED_VALUE.finditer(value):
        if match.group() == ",":
            ends.append(match.start())
        elif match.group() == '"' or not match.group(1):
            return ""
    ends.append(len(value))
    for end in ends:
        element = value[start:end].strip(" \t")
        if element:
            started = _CHALLENGE_START.match(element)
            if started:
                challenges.append([started.group(1).lower(), start, end])
            elif challenges:
                challenges[-1][2] = end
            else:
                unattached = True
        start = end + 1
    kept = [value[first:last].strip(" \t") for scheme, first, last in challenges if scheme in BROWSER_CHALLENGE_SCHEMES]
    if len(kept) == len(challenges) and not unattached:
        return value
    return ", ".join(kept)


@dataclass(frozen=True)
class Route:
    """How calls to one upstream go out, worked out once: its own connection pool (held here
    rather than looked up by URL on every call), the request target of its base URL, its
    timeouts, and which browser headers it gets."""

    upstream: Upstream
    pool: ConnectionPool
    base_target: str
    timeout: Timeout
    forwarded: frozenset[str]
    # What ``/api/{upstream}`` with nothing below it calls, and its request target: the base URL
    # as written (Upstream.bare_url), without the "/" the settings end ``base_url`` with if so.
    bare_url: str = ""
    bare_target: str = ""

    @classmethod
    def to(cls, upstream: Upstream, pool: ConnectionPool | None = None) -> "Route":
        base = urlsplit(upstream.base_url)
        bare_url = upstream.bare_url or upstream.base_url
        return cls(
            upstream=upstream,
            pool=pool or ConnectionPool(upstream.base_url, maxsize=32),
            # As written (the pool percent-encodes the whole target once, as it did the whole URL).
            base_target=base.path + (f"?{base.query}" if base.query else ""),
            bare_url=bare_url,
            bare_target=urlsplit(bare_url).path,
            timeout=Timeout(connect=min(upstream.timeout, 10), read=upstream.timeout),
            forwarded=(FORWARDED_REQUEST_HEADERS | upstream.forward_headers) - tracing.TRACE_HEADERS,
        )


@dataclass
class Outgoing:
    """A request ready to send upstream; ``body`` can be rewound for the one retry. ``below`` is
    the checked path below the upstream's base URL, with its query."""

    route: Route
    method: str
    below: str
    headers: dict
    body: object = None
    # ``/api/{upstream}`` with nothing below it, not even "/": the base URL as written (SPEC.md:
    # the path below the base URL passes through), "/" and all or not (Route.bare_url).
    bare: bool = False
    # The DPoP nonce the last proof carried (None: none, or no proof), and whether this request
    # already answered a nonce challenge (once per request, whatever else happens).
    sent_nonce: str | None = None
    nonce_retried: bool = False

    @property
    def upstream(self) -> Upstream:
        return self.route.upstream

    @property
    def url(self) -> str:
        """The whole URL: what a DPoP proof names."""
        return (self.route.bare_url if self.bare else self.route.upstream.base_url) + self.below

    @property
    def target(self) -> str:
        """What the request line carries, to the upstream's own pool."""
        return (self.route.bare_target if self.bare else self.route.base_target) + self.below

    def rewind(self):
        if self.body is not None:
            self.body.seek(0)

    def close(self):
        if self.body is not None:
            self.body.close()


def upstream_failure(upstream_name: str, error: UpstreamError) -> APIError:
    """What the browser gets for a call the upstream failed before the browser had anything
    (SPEC.md: 502 for a connection failure, 504 for a timeout), logged as one line."""
    if isinstance(error, Unreachable):
        log.warning("upstream %s could not be reached: %s", upstream_name, error)
        return APIError(502, ErrorCode.UPSTREAM_UNAVAILABLE, "The API could not be reached.")
    log.warning("upstream %s: %s", upstream_name, error)
    if isinstance(error, TimedOut):
        return APIError(504, ErrorCode.UPSTREAM_TIMEOUT, "The API did not answer in time.")
    return APIError(502, ErrorCode.UPSTREAM_UNAVAILABLE, "The API connection failed.")


class AnswerCutShort(Exception):
    """The upstream's answer broke off (or stalled) after the browser had its status line and the
    body's first piece (the view reads that piece before answering: ``Proxy.first_piece``).

    Raised out of the body so that the server aborts the browser's connection: a body sent
    chunked would otherwise end with a terminating chunk, and the browser would take a cut
    answer for a whole one. Logged here as one line; ``myapp.server`` keeps waitress from logging
    it again as a traceback."""


class StreamedBody:
    """A WSGI app_iter over the upstream response, from its ``first`` piece (already read);
    ``close()`` hands the connection back."""

    def __init__(self, response: Response, outgoing: Outgoing, first: bytes):
        response.stream()  # the browser has its answer's head: each part may take the read timeout
        self.response = response
        self.outgoing = outgoing
        self.first = first
        self.finished = not first
        self.request_id = current_request_id()  # the body streams after the request's code has returned

    def __iter__(self) -> Iterator[bytes]:
        if self.finished:
            return
        chunk, sent, self.first = self.first, 0, b""  # not kept for the stream's whole life
        while True:
            sent += len(chunk)
            yield chunk
            try:
                chunk = self.response.read(CHUNK)
            except UpstreamError as e:
                name = self.outgoing.upstream.name
                with answering(self.request_id):
                    log.warning("upstream %s: its answer broke off after %d bytes of the body: %s", name, sent, e)
                raise AnswerCutShort(f"the answer of upstream {name} broke off after {sent} bytes") from None
            if not chunk:
                self.finished = True
                return

    def close(self):
        if self.finished:
            self.response.release_conn()
        else:
            self.response.close()  # a half-read connection cannot be reused
        self.outgoing.close()


def subpath(environ: Mapping, upstream_name: str) -> str:
    """The still-%-encoded path below ``/api/{upstream}/``, refused when it could escape the base URL."""
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if raw:
        raw = raw.split("?", 1)[0]
        if not raw.startswith("/"):
            try:
                raw = urlsplit(raw).path
            except ValueError:  # "http://[/api/...": no server of ours hands that over
                raise _bad_path() from None
    else:
        # Decoded already (a server that keeps no raw path: wsgiref, WebTest): escaped again, so
        # that what decoding made of %3F, %23 or %20 is neither forwarded as a query or fragment
        # nor refused as a raw character, and the checks below read it as they read a raw path.
        raw = quote(_bytes_of(environ.get("PATH_INFO", "")), safe=_PCHAR)
    prefix = f"/api/{upstream_name}"
    mount = environ.get("SCRIPT_NAME")
    if mount and (environ.get("REQUEST_URI") or environ.get("RAW_URI")):
        # The raw target names the path the app is mounted at too (waitress's url_prefix, which
        # is SCRIPT_NAME; helper-133): every call there was refused as a path that could leave
        # the base URL. Written as it came, or %-escaped as a browser writes it.
        escaped = quote(_bytes_of(mount), safe=_PCHAR)
        prefix = (escaped if raw.startswith(escaped) else mount) + prefix
    if not raw.startswith(prefix) or raw[len(prefix) : len(prefix) + 1] not in ("", "/"):
        raise _bad_path()
    path = _escaped_beyond_ascii(raw[len(prefix) + 1 :])
    # A raw "#" would end the path there for the upstream (and the query with it).
    if any(c < "!" or c == "\x7f" or c in "\\;#" for c in path) or _FORBIDDEN_ENCODED.search(path):
        raise _bad_path()
    for segment in path.split("/"):  # ASCII by now
        if "%" in segment or "." in segment:
            decoded = unquote(segment)
            if _could_step_out(decoded):
                raise _bad_path()
    return path


def _escaped_beyond_ascii(text: str) -> str:
    """Bytes beyond ASCII that came as they are (WSGI hands them over as Latin-1 text) %-escaped,
    as a browser sends them: the checks then read them as UTF-8, and the upstream gets the bytes
    that came (the pool would otherwise escape the Latin-1 reading's UTF-8, 'é' as %C3%83%C2%A9)."""
    if text.isascii():
        return text
    return _BEYOND_ASCII.sub(lambda run: quote(_bytes_of(run.group()), safe=""), text)


def _bytes_of(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:  # text, not bytes (a server that is not PEP 3333's)
        return text.encode("utf-8", "surrogatepass")


def _could_step_out(segment: str) -> bool:
    """Whether a path segment (decoded) is, or could be read as, ``.`` or ``..``, or holds an
    escape a second decoding would read. Besides the segment as it is, the readings of lenient
    servers: whitespace, controls and trailing dots trimmed (Windows, IIS, :func:`trimmed`); for
    one that is not ASCII, Unicode's compatibility forms (NFKC: ``\uff0e\uff0e``, ``\u2025``,
    ``x\uff0f..``, ``..\uff1fx``) split where a server might split or end it (``¥`` and ``₩``
    too, which Windows' best fit turns into ``\\``: ``a¥..¥secret``, and ``∕``, which it turns
    into ``/``); and the reading of one
    that drops what it cannot see (``.\u0301.``, :func:`visible`), refused for ``..`` only: a
    ``.`` cannot step out. Readers that drop every character they cannot decode, or each byte's
    high bit, are not modelled: ordinary words read as ``..`` to them (``ม.ค.``, ``jazyků...``)."""
    if _only_dots(segment) or _ENCODED_TRICK.search(segment):
        return True
    if segment.isascii():
        return False
    if not stream_safe(segment):
        return True  # no text holds such a run of combining characters, and normalizing it is slow
    normalized = unicodedata.normalize("NFKC", segment)
    if _ENCODED_TRICK.search(normalized) or any(_only_dots(piece) for piece in PIECE_ENDS.split(normalized)):
        return True
    # Normalized and split like that (".\u200b.\uff1fx", "\u2025\u0301"); NFKC makes no dot,
    # separator or visible character of what this reading drops, so it covers the segment as it is.
    return any(_parent(piece) for piece in PIECE_ENDS.split(visible(normalized)))


def _only_dots(segment: str) -> bool:
    """``.``, ``..``, ``...``, ``.. ``, ``..\t``: dots, with what a lenient server trims."""
    return "." in segment and not trimmed(segment)


def _parent(segment: str) -> bool:
    """``..`` and what a lenient server reads so: :func:`_only_dots`, with two dots at least."""
    return _only_dots(segment) and segment.count(".") >= 2


# Visible ASCII but "#": RFC 3986's query characters, and the %-escapes of any others.
_SENDABLE_QUERY = re.compile(r"[!-\"$-~]*\Z")
# A "%" that starts no escape ("100%", "%zz"): sent as "%25", what a lenient reader takes it for.
# Left as it is, the pool would escape every "%" of the query, "%2B" as "%252B", changing the rest.
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


PATH_NOT_ALLOWED = "This path is not allowed."


def _bad_path():
    return APIError(400, ErrorCode.BAD_PATH, PATH_NOT_ALLOWED)


class Proxy:
    def __init__(
        self,
        *,
        upstreams: Mapping[str, Upstream],
        max_body_bytes: int,
        public_url: str,
        pools: Mapping[str, ConnectionPool] | None = None,
    ):
        self.upstreams = upstreams
        self.max_body_bytes = max_body_bytes
        parts = urlsplit(public_url)
        self.forwarded_proto, self.forwarded_host = parts.scheme, parts.netloc
        pools = pools or {}
        self.routes = {name: Route.to(upstream, pools.get(name)) for name, upstream in upstreams.items()}
        # The latest DPoP-Nonce each upstream gave, in this process.
        self.nonces = Nonces()

    def close(self) -> None:
        """Close every pooled upstream connection (an app that ends: scripts, tests)."""
        for route in self.routes.values():
            route.pool.close()

    def refuses_provider(self, upstream_name: str, provider: str) -> bool:
        """Whether the upstream of that name takes no calls from sessions of ``provider`` (its
        ``providers`` setting): 403 ``wrong_provider``."""
        upstream = self.upstreams.get(upstream_name)
        return upstream is not None and not upstream.accepts(provider)

    def upstream(self, name: str) -> Upstream:
        upstream = self.upstreams.get(name)
        if upstream is None:
            raise APIError(404, ErrorCode.UNKNOWN_UPSTREAM, "There is no API by that name.")
        return upstream

    def prepare(self, environ: Mapping, *, upstream_name: str, client_addr: str | None) -> Outgoing:
        """Check and translate the browser's request; no byte of the body is sent yet."""
        upstream = self.upstream(upstream_name)
        method = environ["REQUEST_METHOD"]
        if method not in upstream.methods:
            raise APIError(
                405,
                ErrorCode.METHOD_NOT_ALLOWED,
                f"{method} is not allowed for this API.",
                headers={"Allow": ", ".join(sorted(upstream.methods))},
            )
        route = self.routes[upstream.name]
        below = subpath(environ, upstream.name)
        # Nothing below /api/{upstream}: with its "/" (the path then ends with it) the base URL's
        # "/", without it the base URL without one.
        bare = not below and not environ.get("PATH_INFO", "").endswith("/")
        query = environ.get("QUERY_STRING")
        if query:
            # Passed on as it came, %-escapes and all (whatever they encode); only what cannot go
            # into a request line, or would end it early, is refused.
            query = _escaped_beyond_ascii(query)
            if "%" in query:
                query = _LONE_PERCENT.sub("%25", query)
            if not _SENDABLE_QUERY.match(query):
                raise APIError(400, ErrorCode.BAD_REQUEST, "This query string cannot be passed on.")
            below += "?" + query
        headers = self._request_headers(environ, route, client_addr)
        body = self._spool_body(environ)
        if body is not None:
            headers["Content-Length"] = str(body.tell())
            body.seek(0)
        return Outgoing(route=route, method=method, below=below, headers=headers, body=body, bare=bare)

    def _request_headers(self, environ: Mapping, route: Route, client_addr: str | None) -> dict:
        headers = {}
        allowed = route.forwarded
        connection = environ.get("HTTP_CONNECTION")
        connection_named = {t.strip().lower() for t in connection.split(",")} if connection else ()
        names = _ENVIRON_NAMES
        for key, value in environ.items():
            name = names.get(key)
            if name is None:
                name = _environ_name(key)
            if name and name in allowed and name not in connection_named:
                headers[name] = value
        traceparent = environ.get("HTTP_TRACEPARENT")
        if traceparent is not None and "traceparent" not in connection_named:
            tracestate = environ.get("HTTP_TRACESTATE") if "tracestate" not in connection_named else None
            headers.update(tracing.passed_on(traceparent, tracestate))
        if environ.get("CONTENT_TYPE") and "content-type" not in connection_named:
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers["X-Request-ID"] = current_request_id() or request_id_of(environ)
        headers["X-Forwarded-For"] = client_addr or ""
        headers["X-Forwarded-Proto"] = self.forwarded_proto
        headers["X-Forwarded-Host"] = self.forwarded_host
        return headers

    def _spool_body(self, environ: Mapping):
        length = environ.get("CONTENT_LENGTH")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if length and not (length.isascii() and length.isdigit()):
            # Digits and nothing else (RFC 9110 section 8.6): int() would also take "+5", "1_0",
            # " 7" or Arabic-Indic digits, and -1, which another WSGI server might pass on.
            raise APIError(400, "bad_request", "Content-Length is not a number.")
        length = int(length) if length else None
        if length is not None and length > self.max_body_bytes:
            raise self._too_large()
        if not length and not chunked:
            return None
        source = environ["wsgi.input"]
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        remaining = length if length is not None else self.max_body_bytes + 1
        while remaining > 0:
            chunk = source.read(min(CHUNK, remaining))
            if not chunk:
                break
            spool.write(chunk)
            remaining -= len(chunk)
            if spool.tell() > self.max_body_bytes:
                spool.close()
                raise self._too_large()
        return spool

    def _too_large(self):
        return APIError(
            413, ErrorCode.PAYLOAD_TOO_LARGE, f"The request body is larger than {self.max_body_bytes} bytes."
        )

    def send(self, outgoing: Outgoing, credential: Credential) -> Response:
        headers = outgoing.headers
        for name in [name for name in headers if name.lower() == "dpop"]:
            del headers[name]  # only the proof made here, whatever else put one there
        headers["Authorization"] = f"{credential.scheme} {credential.token}"
        if credential.dpop is not None:
            if not outgoing.upstream.dpop:
                # Settings refuse this pairing; a token bound to a key is never sent as Bearer.
                raise APIError(502, ErrorCode.UPSTREAM_UNAVAILABLE, "This API takes no DPoP-bound token.")
            outgoing.sent_nonce = self.nonces.get(outgoing.url)

            def proof() -> str:
                return credential.dpop.proof(
                    outgoing.method, outgoing.url, access_token=credential.token, nonce=outgoing.sent_nonce
                )

            headers["DPoP"] = proof()
            # A proof is good for one sending: sent again on a new connection, it is made anew.
            resend = lambda: {**headers, "DPoP": proof()}  # noqa: E731
        else:
            resend = None
        with tracing.outgoing_span(
            f"upstream {outgoing.upstream.name}", kind_of="upstream", target=outgoing.upstream.name, method=outgoing.method
        ) as span:
            tracing.inject(outgoing.headers)
            response = self._urlopen(outgoing, resend)
            span.set_attribute("http.response.status_code", response.status)
        if response.status == 407:
            # Something between here and the upstream wants proxy credentials: none the browser
            # has or should be asked for, and a 407 from anything but its own proxy is a failed
            # request to it. The upstream cannot be reached (SPEC.md: 502).
            response.close()
            log.warning("upstream %s answered 407: a proxy on the way asks for credentials", outgoing.upstream.name)
            raise APIError(502, ErrorCode.UPSTREAM_UNAVAILABLE, "The API could not be reached.")
        return response

    def _urlopen(self, outgoing: Outgoing, resend: Callable[[], dict] | None = None) -> Response:
        """Sent as it is: never redirected, never retried but for a kept-alive connection that
        was closed before the answer (services/http1.py); the one retry after a refresh (or a DPoP
        nonce) is ours."""
        route = outgoing.route
        try:
            return route.pool.urlopen(
                outgoing.method,
                outgoing.target,
                body=outgoing.body,
                headers=outgoing.headers,
                timeout=route.timeout,
                resend=resend,
            )
        except UpstreamError as e:
            raise upstream_failure(outgoing.upstream.name, e) from None

    def exchange(self, outgoing: Outgoing, token: Callable[..., Credential]) -> Response:
        """Send with the session's token; on 401, refresh once and send the same request again."""
        credential = token()
        response = self._send_answering_nonce(outgoing, credential)
        if response.status != 401:
            return response
        try:
            authenticate = response.headers.get("WWW-Authenticate")
            if not readable_challenge(authenticate):
                # It may say that no refresh can help (RFC 9470, a refused proof): none is made.
                log.warning(
                    "upstream %s answered 401 with a WWW-Authenticate header of %d characters, too long "
                    "to read; passed back without a refresh", outgoing.upstream.name, len(authenticate),
                )
                return response
            challenge = parse_challenge(authenticate)
            if challenge is not None:
                # RFC 9470: the token is fine, the sign-in behind it is not strong or recent enough.
                # No refresh can fix that; the browser is sent to sign in again, asking for it.
                self._discard(response)
                raise challenge
            error = challenge_error(authenticate)
            if error == "invalid_dpop_proof" or (
                credential.dpop is not None and error is not None and error != "invalid_token"
            ):
                # The proof was refused (invalid_dpop_proof, or a nonce again after the retry), or a
                # Bearer token was, for want of one (SPEC.md: invalid_dpop_proof is never a reason to
                # refresh): a new token would be refused the same way. The 401 goes back; no refresh.
                if credential.dpop is None:
                    log.warning("upstream %s wants a DPoP proof (%s); a Bearer token was sent, passed back without"
                                " a refresh", outgoing.upstream.name, error)
                else:
                    log.warning("upstream %s refused the DPoP proof: %s", outgoing.upstream.name, error)
                return response
            fresh = token(stale=credential.token)
        except BaseException:
            # A step-up challenge (drained above), a refresh that failed (an outage, a revoked
            # grant), or anything else: nothing reads this 401 now.
            response.close()
            raise
        if fresh.token == credential.token:
            return response  # no newer token to try: the upstream's 401 goes back as it is
        self._discard(response)
        outgoing.rewind()
        return self._send_answering_nonce(outgoing, fresh)

    def _send_answering_nonce(self, outgoing: Outgoing, credential: Credential) -> Response:
        """Send; with DPoP, keep the nonce the upstream gives and answer its ``use_dpop_nonce``
        challenge once, with a fresh proof carrying that nonce (RFC 9449 section 9)."""
        response = self.send(outgoing, credential)
        if credential.dpop is None:
            return response
        asked = (
            response.status == 401
            and not outgoing.nonce_retried
            and challenge_error(response.headers.get("WWW-Authenticate")) == "use_dpop_nonce"
        )
        if self.nonces.retry_with(outgoing.url, response.headers.get("DPoP-Nonce"), sent=outgoing.sent_nonce, asked=asked):
            outgoing.nonce_retried = True
            self._discard(response)
            outgoing.rewind()
            response = self.send(outgoing, credential)
            self.nonces.remember(outgoing.url, response.headers.get("DPoP-Nonce"))
        return response

    @staticmethod
    def _discard(response: Response) -> None:
        response.drain_conn()

    @staticmethod
    def small_body(response: Response, method: str, upstream_name: str) -> bytes | None:
        """A response body of at most one chunk, read whole (None for anything else, streamed)."""
        length = response.headers.get("Content-Length", "")
        if (
            method == "HEAD" or response.status in BODILESS_STATUSES
            or not length.isascii() or not length.isdigit() or int(length) > CHUNK
        ):
            return None
        body = Proxy._read(response, upstream_name)
        response.release_conn()
        return body

    @staticmethod
    def first_piece(response: Response, upstream_name: str) -> bytes:
        """The first piece of a body that streams (b"" for none)."""
        return Proxy._read(response, upstream_name, CHUNK)

    @staticmethod
    def _read(response: Response, upstream_name: str, amount: int | None = None) -> bytes:
        """Read before the browser has anything: a failure is still a 504 or a 502."""
        try:
            return response.read(amount)
        except UpstreamError as e:
            response.close()
            raise upstream_failure(upstream_name, e) from None

    @staticmethod
    def status_line(response: Response) -> str:
        """The upstream's status and reason phrase; a reason with a control character (llhttp takes
        any byte but CR and LF there) is left out, and WebOb gives the standard one."""
        reason = response.reason or ""
        if reason and not (reason.isascii() and reason.isprintable()) and not _REASON.match(reason):
            reason = ""
        return f"{response.status} {reason}".strip()

    @staticmethod
    def response_headers(response: Response) -> list[tuple[str, str]]:
        """The upstream's headers that may reach the browser: none of the dropped kinds, none that
        a WSGI server would refuse (a malformed name or value, an unreadable Content-Length)."""
        connection_named = {t.strip().lower() for t in response.headers.get("Connection", "").split(",")}
        lengths = response.headers.getlist("Content-Length")
        length_usable = (
            len(set(lengths)) == 1 and lengths[0].isascii() and lengths[0].isdigit()
            and response.status not in BODILESS_STATUSES
        )
        kept = []
        names = _RESPONSE_NAMES
        for name, value in response.headers.items():
            lower = names[name] if name in names else _response_name(name)
            if lower is None or lower in connection_named:
                continue
            if not (value.isascii() and value.isprintable()) and not _HEADER_VALUE.match(value):
                continue
            if lower == "www-authenticate":
                value = browser_challenges(value)
                if not value:
                    continue
            if lower == "content-length":
                if not length_usable:
                    continue
                length_usable = False  # once, however often the upstream repeated it
            kept.append((name, value))
        return kept

    def get_json(self, upstream_name: str, path: str, token: Callable[..., Credential]):
        """GET a small JSON document from an upstream for a server-rendered page; None if unusable."""
        upstream = self.upstream(upstream_name)
        outgoing = Outgoing(
            route=self.routes[upstream.name],
            method="GET",
            below=path,
            headers={"Accept": "application/json", "X-Request-ID": current_request_id() or new_request_id()},
        )
        response = self.exchange(outgoing, token)
        try:
            body = response.read_at_most(MAX_JSON_BYTES)
        except UpstreamError:
            response.close()
            return None
        response.release_conn()
        if response.status != 200 or len(body) > MAX_JSON_BYTES:
            return None
        try:
            return json.loads(decoded(body, response.headers.get("Content-Encoding"), MAX_JSON_BYTES))
        except (ValueError, RecursionError):  # RecursionError: nested past Python's limit
            return None


# Content-Encoding → zlib's wbits for it; "identity" and none are as they are.
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decoded(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A body the server-side caller reads (never a proxied one: those pass as they are),
    decompressed to at most ``limit`` bytes; ValueError for a coding it does not know, a body
    that does not decompress, or one that would be larger (a decompression bomb stops there)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    wbits = _DECODERS.get(encoding)
    if wbits is None:
        raise ValueError(f"unknown content coding {encoding!r}")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise ValueError("a body that does not decompress") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise ValueError("a body larger than allowed once decompressed")
    return data
