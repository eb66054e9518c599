"""The proxy's HTTP/1.1 client: kept-alive connections to one upstream, each request written in
one piece, each answer parsed by llhttp (through httptools), the parser Node.js itself uses.

It replaced urllib3 on the proxy's path because a proxied call spent more CPU in urllib3 and
http.client than in all of myapp's own work: per call about 300 µs against 50 µs here, measured
in one process against the development stack (docs/benchmarks.md). urllib3 checks every header
through several layers, then http.client parses the answer's headers with the email package.
Here the request is one ``bytes`` (every name and value checked once), and the answer's framing
(status line, headers, Content-Length, chunks, 1xx) is llhttp's, in C and strict: no lenient
mode is turned on, so a framing urllib3 would have guessed at (conflicting lengths, a bare CR or
LF, Content-Length with Transfer-Encoding) is refused, and so is a transfer coding other than
chunked alone (llhttp takes chunks off, nothing here would take a gzip off), and a status that
llhttp reads but HTTP has not (below 100, above 599).

What is ours is the connection's life: a connection goes back to its pool only after a complete
answer that keeps it alive; one found closed or readable while idle is dropped; and a kept-alive
connection that the upstream closed just as it was reused (the race every pooled client has) is
replaced once by a new one for an idempotent request, before any byte of an answer arrived.
"""

import collections
import functools
import re
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
from urllib3.util import parse_url

CHUNK = 64 * 1024
# The most of an answer (to a 401, or a DPoP nonce challenge) read to keep its connection.
DRAIN_LIMIT = 1024 * 1024
# RFC 9110 section 5.6.2 (a token: a method, a header name) and 5.5 (a header value: no control
# character but tab).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*\Z")
# A request target as the pool puts it on the wire: encoded, so visible ASCII only.
_TARGET = re.compile(r"/[!-~]*\Z")
# http.client sends Content-Length: 0 for these when there is no body; some servers ask for it (411).
_METHODS_EXPECTING_BODY = frozenset({"POST", "PUT", "PATCH"})
# What an answer's head may hold, as http.client allowed it: beyond, the answer is refused.
MAX_HEADERS = 100
MAX_HEAD_BYTES = 256 * 1024
# RFC 9110 section 9.2.2: what may be sent again when a connection failed before its answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Targets seen are remembered encoded, the short ones only and up to a number (at most 512 KiB).
_TARGET_MEMO_LIMIT = 2048
_TARGET_MEMO_LENGTH = 256


class UpstreamError(Exception):
    """The call did not get a usable answer; the message says why, with nothing of the request."""


class Unreachable(UpstreamError):
    """No connection could be made (refused, no route, the name did not resolve)."""


class TimedOut(UpstreamError):
    """Connecting, sending, waiting for the next part of the answer, or for the whole of what is
    read before the browser has anything, took longer than allowed."""


class Broken(UpstreamError):
    """The connection failed or the answer was malformed (TLS, framing, closed mid-answer)."""


class _Stale(Exception):
    """A kept-alive connection failed before any byte of an answer: the upstream had closed it."""


@dataclass(frozen=True)
class Timeout:
    """``connect``: for a new connection (and its TLS handshake). ``read``: the longest wait for
    the next bytes of an answer, and for all of an answer that is read before it is streamed (its
    head, a body read whole), counted from when the request went out: an upstream that trickles
    a byte at a time cannot hold a call for longer than that."""

    connect: float
    read: float


class Headers:
    """An answer's headers in their order and spelling; ``get`` and ``getlist`` ignore case."""

    __slots__ = ("_by_name", "_items")

    def __init__(self, items: list[tuple[str, str]]):
        self._items = items
        self._by_name: dict[str, list[str]] | None = None

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def getlist(self, name: str) -> list[str]:
        if self._by_name is None:
            by_name: dict[str, list[str]] = {}
            for key, value in self._items:
                by_name.setdefault(key.lower(), []).append(value)
            self._by_name = by_name
        return self._by_name.get(name.lower(), [])

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.getlist(name)
        return ", ".join(values) if values else default

    def __contains__(self, name: str) -> bool:
        return bool(self.getlist(name))


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The system's CAs, the host name checked, HTTP/1.1 offered: one context for every pool of
    the process, which only wraps sockets with it. Loading the CAs costs about 50 ms of CPU, which
    a context per upstream paid for each at every start of the app."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class ConnectionPool:
    """Connections to one upstream's origin, made when needed and kept (up to ``maxsize`` idle)."""

    def __init__(self, base_url: str, *, maxsize: int = 32, ssl_context: ssl.SSLContext | None = None):
        parts = urlsplit(base_url)
        self.scheme = parts.scheme.lower()
        if self.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL with a host: {base_url!r}")
        default_port = 443 if self.scheme == "https" else 80
        self.host = parts.hostname
        self.port = parts.port or default_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        if self.scheme == "https" and ssl_context is None:
            ssl_context = default_tls()
        self.ssl_context = ssl_context if self.scheme == "https" else None
        self.maxsize = maxsize
        self.closed = False
        self._idle: collections.deque[socket.socket] = collections.deque()
        self._targets: dict[str, str] = {}

    def urlopen(
        self,
        method: str,
        target: str,
        *,
        headers: dict,
        body=None,
        timeout: Timeout,
        resend: Callable[[], dict] | None = None,
    ) -> "Response":
        """Send the request and read the answer's head; the body is the caller's to read.
        ``target`` is the path and query as written: it is percent-encoded here, as urllib3 does
        it (the DPoP proof names the same encoding, services/dpop.py). ``resend``, when given,
        writes the headers anew for the one sending again on a fresh connection (below): a DPoP
        proof is good for one request, and an upstream that read the first one before closing
        would refuse the same proof twice (RFC 9449 section 11.1)."""
        wire = self.wire_target(target)
        head = request_head(method, wire, self.host_header, headers, body is None)
        sock = self._idle_connection()
        if sock is not None:
            try:
                return self._exchange(sock, method, head, body, timeout)
            except _Stale:
                if method not in IDEMPOTENT:
                    raise Broken("the kept-alive connection was closed before the answer") from None
                if body is not None:
                    body.seek(0)
                if resend is not None:
                    head = request_head(method, wire, self.host_header, resend(), body is None)
        try:
            return self._exchange(self._connect(timeout), method, head, body, timeout)
        except _Stale:
            raise Broken("the connection was closed before the answer") from None

    def wire_target(self, target: str) -> str:
        encoded = self._targets.get(target)
        if encoded is None:
            # As the path of a URL, as the DPoP proof's htu reads it (services/dpop.py): on its
            # own, a target starting with "//" would be read as an authority and lose a segment.
            try:
                encoded = parse_url(f"http://upstream{target}").request_uri if target.startswith("/") else None
            except ValueError:
                encoded = None
            if encoded is None or not _TARGET.match(encoded):
                raise Broken("the request target cannot be sent")
            if len(self._targets) < _TARGET_MEMO_LIMIT and len(target) <= _TARGET_MEMO_LENGTH:
                self._targets[target] = encoded
        return encoded

    def close(self) -> None:
        """Close every idle connection; those in use are closed when they come back."""
        self.closed = True
        while True:  # other threads may pop too (a put, a request): no check then pop
            try:
                sock = self._idle.pop()
            except IndexError:
                return
            _close(sock)

    def put(self, sock: socket.socket) -> None:
        """Keep an idle connection. No lock: two threads may both find room for one more, and a
        ``close()`` may run between the check and the append; both are put right after it."""
        if self.closed or len(self._idle) >= self.maxsize:
            _close(sock)
            return
        self._idle.append(sock)
        if self.closed:
            self.close()  # closed meanwhile: nothing stays kept in a closed pool
            return
        while len(self._idle) > self.maxsize:
            try:
                _close(self._idle.popleft())  # the least recently used goes
            except IndexError:
                break

    def _idle_connection(self) -> socket.socket | None:
        """The most recently used idle connection that is still open and silent."""
        while True:
            try:
                sock = self._idle.pop()
            except IndexError:
                return None
            if not _readable(sock):
                return sock
            _close(sock)  # closed by the upstream (EOF), or it sent what nobody asked for

    def _connect(self, timeout: Timeout) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout.connect)
        except TimeoutError:
            raise TimedOut("connecting took too long") from None
        except OSError as e:
            raise Unreachable(f"could not connect: {e.strerror or type(e).__name__}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
            except TimeoutError:
                _close(sock)
                raise TimedOut("the TLS handshake took too long") from None
            except OSError as e:  # ssl.SSLError, a certificate that does not verify, a reset
                _close(sock)
                raise Broken(f"TLS failed: {getattr(e, 'reason', None) or type(e).__name__}") from None
        return sock

    def _exchange(self, sock: socket.socket, method: str, head: bytes, body, timeout: Timeout) -> "Response":
        response = Response(self, sock, method, timeout.read)
        try:
            if sock.gettimeout() != timeout.read:  # a system call that lets go of the GIL: once per connection
                sock.settimeout(timeout.read)
            _send(sock, head, body)
        except TimeoutError:
            response.close()
            raise TimedOut("sending took too long") from None
        except OSError:
            # The upstream may have answered early and closed (a 413 before the whole body):
            # that answer, if there is one, is the one to pass on.
            response.reusable = False
        try:
            response.begin()
        except BaseException:
            response.close()
            raise
        return response


class Response:
    """An answer whose head has been read; ``read`` gives its body as it arrives.
    ``release_conn`` hands a connection whose answer was read to the end back to the pool
    (otherwise it is closed); ``close`` closes it whatever is left.

    ``within`` (seconds, the read timeout) bounds everything read from ``begin`` until ``stream``
    is called, the head included, however it trickles in; after ``stream``, only the wait for
    each next part is bounded (by the socket's timeout), so that a long download or feed lasts
    as long as it does."""

    def __init__(self, pool: ConnectionPool | None, sock: socket.socket, method: str, within: float | None = None):
        self._pool = pool
        self._sock: socket.socket | None = sock
        self._within = within
        self._wait = within  # the socket's timeout, as far as this answer has changed it
        self._deadline: float | None = None
        self._head_only = method == "HEAD"
        self._parser = httptools.HttpResponseParser(self)
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._pieces: collections.deque[bytes] = collections.deque()
        self._received = 0
        self._head_done = False
        self._complete = False
        self._keep_alive = False
        self._until_close = False
        self._too_large = False
        self._refused: str | None = None
        self._quiet = 0  # bytes since the body last gave any: a trailer's, or a chunk's framing
        self.reusable = True
        self.status = 0
        self.reason = ""
        self.headers = Headers([])

    # llhttp's callbacks, through httptools (header names and values come whole; the status text may not).
    def on_status(self, text: bytes) -> None:
        self._reason += text

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a chunked body's trailer fields: not passed on
        if len(self._raw_headers) >= MAX_HEADERS:
            self._too_large = True
        else:
            self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            # RFC 9110 section 15: three digits, 100 to 599. llhttp reads any three digits; an
            # answer beyond is not HTTP, and neither is the framing it goes on with.
            self._refused = f"a status of {status}"
            return
        if 100 <= status < 200 and status != 101:  # 100 Continue, 103 Early Hints: the answer follows
            self._raw_headers, self._reason = [], b""
            return
        self.status = status
        self._head_done = True
        self._keep_alive = self._parser.should_keep_alive()
        names = {name.lower() for name, _ in self._raw_headers}
        if self._head_only:
            self._complete = True  # no body follows an answer to HEAD, whatever its Content-Length says
            # ... by the rules. An upstream that answers HEAD as it answers GET sends a body all the
            # same, perhaps a moment later, and a kept connection would hand that body to the next
            # request as its answer, perhaps another person's. HEAD is rare: its connection goes.
            self._keep_alive = False
        elif status in (204, 304) and (b"content-length" in names or b"transfer-encoding" in names):
            # The same for a 204 or 304 that names a body's framing: by the rules it has no body,
            # and llhttp ends it with its head; an upstream that sends one anyway may send it late.
            self._keep_alive = False
        chunked = b"transfer-encoding" in names
        bodied = not self._head_only and status not in (204, 304)
        if chunked and bodied and self._codings() != [b"chunked"]:
            # "gzip, chunked", "gzip": llhttp takes the chunks off, not the gzip, and the browser
            # would get compressed bytes as the content, with nothing saying so. ("chunked,": an
            # empty element, which llhttp reads as not chunked.)
            self._refused = "a transfer coding other than chunked"
            return
        self._until_close = status not in (204, 304) and b"content-length" not in names and not chunked

    def on_body(self, data: bytes) -> None:
        self._quiet = 0
        if not self._head_done:
            self._refused = self._refused or "an informational answer with a body"
        elif self._complete:
            self.reusable = False  # a body after an answer to HEAD: the connection cannot be trusted
        else:
            self._pieces.append(data)

    def on_message_begin(self) -> None:
        if self._complete:
            self.reusable = False  # a second answer nobody asked for

    def on_message_complete(self) -> None:
        if self._head_done:
            self._complete = True

    def _codings(self) -> list[bytes]:
        codings = b",".join(v for n, v in self._raw_headers if n.lower() == b"transfer-encoding")
        return [coding.strip().lower() for coding in codings.split(b",")]

    def begin(self) -> None:
        if self._within is not None:
            self._deadline = time.monotonic() + self._within
        while not self._head_done:
            self._receive()
        if self.status == 101:
            raise Broken("an upgrade nobody asked for")
        self.reason = self._reason.decode("latin-1")
        self.headers = Headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in self._raw_headers])
        self._raw_headers = []

    def stream(self) -> None:
        """From here on the body goes on as it arrives: no deadline for the whole of it, and each
        wait the read timeout again (the deadline may have shortened it)."""
        self._deadline = None
        if self._wait != self._within and self._sock is not None:
            self._sock.settimeout(self._within)
            self._wait = self._within

    def _before_deadline(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimedOut(f"the answer was not in within {self._within:g} s")
        # The socket waits at most what is left. Not set again while it is about what the read
        # timeout already allows (a system call, and one that lets go of the GIL): the deadline
        # is overrun by a tenth at most.
        if left < self._wait * 0.9:
            self._sock.settimeout(left)
            self._wait = left

    def _receive(self) -> None:
        """One read from the socket, fed to the parser."""
        if self._deadline is not None:
            self._before_deadline()
        try:
            data = self._sock.recv(CHUNK)
        except TimeoutError:
            if self._deadline is not None and self._wait < self._within:  # waited what was left
                raise TimedOut(f"the answer was not in within {self._within:g} s") from None
            raise TimedOut("the answer took too long") from None
        except OSError as e:
            if not self._received:
                raise _Stale() from None
            raise Broken(f"the connection failed: {e.strerror or type(e).__name__}") from None
        if not data:
            self.reusable = False
            if self._head_done and self._until_close:
                self._complete = True  # a body without a length ends where the connection does
                return
            if not self._received:
                raise _Stale()
            raise Broken("the connection was closed mid-answer")
        self._received += len(data)
        if not self._head_done and self._received > MAX_HEAD_BYTES:
            raise Broken(f"an answer's head of more than {MAX_HEAD_BYTES} bytes")
        if self._head_done:
            self._quiet += len(data)
            if self._quiet > MAX_HEAD_BYTES:
                raise Broken(f"more than {MAX_HEAD_BYTES} bytes of an answer's framing or trailer")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            if not self._complete:
                raise Broken(f"a malformed answer: {type(e).__name__}") from None
            self.reusable = False  # bytes after the answer
        except httptools.HttpParserUpgrade:
            raise Broken("an upgrade nobody asked for") from None
        if self._too_large:
            raise Broken(f"an answer's head of more than {MAX_HEADERS} fields")
        if self._refused is not None:
            raise Broken(f"a malformed answer: {self._refused}")

    def read(self, amt: int | None = None) -> bytes:
        """The next part of the body, at most ``amt`` bytes, as soon as there is any (b"" at its
        end); all of it when ``amt`` is None."""
        if amt is None:
            while not self._complete:
                self._receive()
            data = b"".join(self._pieces)
            self._pieces.clear()
            return data
        while not self._pieces and not self._complete:
            self._receive()
        if not self._pieces:
            return b""
        piece = self._pieces.popleft()
        if len(piece) > amt:
            self._pieces.appendleft(piece[amt:])
            piece = piece[:amt]
        return piece

    def read_at_most(self, limit: int) -> bytes:
        """The body, or its first ``limit + 1`` bytes when it is longer (then the connection is closed)."""
        pieces, size = [], 0
        while size <= limit:
            piece = self.read(CHUNK)
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
        if size > limit:
            self.close()
        return b"".join(pieces)[: limit + 1]

    def release_conn(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._complete and self._keep_alive and self.reusable and self._pool is not None:
            self._pool.put(sock)
        else:
            _close(sock)

    def drain_conn(self) -> None:
        """Read what is left of an answer nobody needs (up to ``DRAIN_LIMIT``) and hand the connection back."""
        try:
            left = DRAIN_LIMIT
            while self._sock is not None and left > 0:
                piece = self.read(CHUNK)
                if not piece:
                    break
                left -= len(piece)
        except UpstreamError:
            self.close()
        self.release_conn()

    @property
    def closed(self) -> bool:
        """Whether the answer let go of its connection (to the pool or closed)."""
        return self._sock is None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            _close(sock)


def request_head(method: str, target: str, host: str, headers: dict, bodiless: bool) -> bytes:
    """The request line and headers, every name and value checked: nothing a header carries
    can start another header or another request."""
    if not _TOKEN.match(method):
        raise Broken("the request method cannot be sent")
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    has_length = False
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise Broken("a request header's name cannot be sent")
        if not _HEADER_VALUE.match(value):
            raise Broken(f"the request header {name} has a value that cannot be sent")
        lower = name.lower()
        if lower == "host":
            continue
        has_length = has_length or lower == "content-length"
        lines.append(f"{name}: {value}\r\n")
    if bodiless and not has_length and method in _METHODS_EXPECTING_BODY:
        lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise Broken("a request header is not Latin-1") from None


def _send(sock: socket.socket, head: bytes, body) -> None:
    if body is None:
        sock.sendall(head)
        return
    first = body.read(CHUNK)
    sock.sendall(head + first)  # one write for a small request, as most are
    while chunk := body.read(CHUNK):
        sock.sendall(chunk)


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read: its end (the upstream closed it) or
    bytes nobody asked for. Either way it is not to be used again."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass

