"""One pooled HTTP client for talking to the provider, with a deadline per call and one error type."""

import contextlib
import contextvars
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import requests
import urllib3
from authlib.integrations.requests_client import OAuth2Session
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from myapp import tracing

MAX_DOCUMENT_BYTES = 1024 * 1024

# The deadline (time.monotonic()) that every call to a provider made in a ``within()`` block
# ends by, and the watch of the call under way in this thread.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("myapp_provider_deadline", default=None)
_WATCH: contextvars.ContextVar["_Watch | None"] = contextvars.ContextVar("myapp_provider_watch", default=None)


class NoTimeLeft(requests.Timeout):
    """A call not made: the deadline of the enclosing :func:`within` had passed already."""


class CutShort(requests.Timeout):
    """A call cut off by the deadline of the enclosing :func:`within` (the refresh lock's time),
    before its own timeout: what it says of the server's speed is not known."""


class NoTimer(requests.ConnectionError):
    """A call not made: this process could start no thread for its timer."""


class HTTPFailure(Exception):
    """A call that did not produce a usable answer: unreachable, slow, an error status, or junk.

    ``unavailable`` is True when trying again later may help (connection refused, timeout, 5xx),
    False when the answer itself is wrong (4xx, malformed body).
    """

    def __init__(self, message: str, *, unavailable: bool, status: int | None = None, headers=None):
        super().__init__(message)
        self.unavailable = unavailable
        # The error status and its headers, when the server answered (a DPoP nonce challenge, say).
        self.status = status
        self.headers = headers or {}


def describe(error: requests.RequestException | urllib3.exceptions.HTTPError) -> HTTPFailure:
    """What went wrong, in words for a log line or an error page; ``urllib3``'s errors are what
    reading a streamed body raises."""
    if isinstance(error, requests.Timeout | urllib3.exceptions.TimeoutError):
        return HTTPFailure("timed out", unavailable=True)
    if isinstance(error, requests.ConnectionError | urllib3.exceptions.HTTPError):
        return HTTPFailure("connection failed", unavailable=True)
    if isinstance(error, requests.TooManyRedirects):
        return HTTPFailure("answered with a redirect, which is not followed", unavailable=False)
    if isinstance(error, requests.HTTPError) and error.response is not None:
        status = error.response.status_code
        return HTTPFailure(f"answered HTTP {status}", unavailable=status >= 500)
    return HTTPFailure(type(error).__name__, unavailable=True)


# What a call through requests raises: its own errors, and urllib3's from reading a streamed body.
_CALL_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError)


def time_left() -> float | None:
    """Seconds left before the deadline of the enclosing :func:`within`, None outside one."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def _deadline(seconds: float, now: float) -> float:
    """``seconds`` from ``now``, or the enclosing :func:`within`'s deadline if that comes first."""
    outer = _DEADLINE.get()
    return now + seconds if outer is None else min(outer, now + seconds)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Every call to a provider made in this block ends within ``seconds`` from now, or fails as
    timed out, besides its own bound. The refresh lock's holder runs in one, so that it never
    outlives the lock's lease."""
    token = _DEADLINE.set(_deadline(seconds, time.monotonic()))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class _Watch:
    """The connections one call uses, cut off (their sockets shut down) when its time is up:
    ``requests`` bounds each wait for the next bytes, not a call as a whole, so a server that
    sends a byte now and then could hold it for ever. A connection leaves the watch when it goes
    back to the pool, under the same lock as the cut: another call may take it from there at once,
    and must never have it cut under it. One that comes (or gets its socket) after the time is up
    is cut at once."""

    def __init__(self):
        self._lock = threading.Lock()
        self._connections: set = set()
        self._over = False
        self.expired = False
        # Whether a socket in use was shut down: what was read may then look whole and is not
        # (http.client takes a cut inside a head for its end, and a body without a length with it).
        self.cut = False

    def attach(self, connection) -> None:
        with self._lock:
            if self.expired:
                self._cut(connection)
            elif not self._over:
                self._connections.add(connection)
                connection.myapp_watch = self

    def detach(self, connection) -> None:
        with self._lock:
            self._connections.discard(connection)
            connection.myapp_watch = None

    def expire(self) -> None:
        with self._lock:
            if self._over:
                return
            self.expired = self._over = True
            for connection in self._connections:
                self._cut(connection)
            self._connections.clear()

    def _cut(self, connection) -> None:
        # The socket it connected with: http.client lets go of it (``sock`` None) as soon as an
        # answer says it will close the connection, and goes on reading the body through it. None
        # yet while connecting: the connection attaches itself again once connected.
        sock = connection.sock or connection.myapp_socket
        if sock is None:
            return
        try:
            # The plain socket's own: an SSLSocket's would first drop its TLS state under the
            # thread reading it. The read then ends at once; urllib3 closes a connection it failed
            # on, and replaces one it finds shut down when it takes it from the pool. A socket
            # closed already has no descriptor any more (OSError), never another's.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            return
        self.cut = True

    def end(self) -> None:
        with self._lock:
            self._over = True
            self._connections.clear()


class _Watched:
    """A urllib3 connection that puts itself under the watch of the call using it."""

    myapp_watch: _Watch | None = None
    myapp_socket: socket.socket | None = None

    def connect(self):
        connected = super().connect()
        self.myapp_socket = self.sock
        _watch_this(self)  # once it has a socket: cut at once if the time ran out while connecting
        return connected

    def request(self, *args, **kwargs):
        _watch_this(self)
        return super().request(*args, **kwargs)


def _watch_this(connection) -> None:
    watch = _WATCH.get()
    if watch is not None:
        watch.attach(connection)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _ReleasesWatched:
    """A pool whose connections leave their call's watch as they come back (``_put_conn`` is
    where every connection urllib3 keeps comes back, in urllib3 1.x and 2.x alike)."""

    def _put_conn(self, conn):
        watch = getattr(conn, "myapp_watch", None)
        if watch is not None:
            watch.detach(conn)
        return super()._put_conn(conn)


class _WatchedHTTPPool(_ReleasesWatched, HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(_ReleasesWatched, HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _Adapter(HTTPAdapter):
    """``requests``' adapter, on connections that a call's watch can cut off."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class HttpClient:
    """A pooled ``requests`` transport shared by every call to one provider; requests never follow
    redirects, and each call is over within its timeout (``myapp.oidc.http_timeout``) as a whole:
    see :meth:`bounded`. ``provider`` is that provider's configured name, for its spans."""

    def __init__(self, *, timeout: float, pool_maxsize: int = 32, provider: str | None = None):
        self.timeout = timeout
        self.provider = provider
        self.adapter = _Adapter(pool_connections=8, pool_maxsize=pool_maxsize, max_retries=0)
        self.session = requests.Session()
        self._mount(self.session)

    def _mount(self, session: requests.Session) -> None:
        session.trust_env = False
        # Every call, Authlib's token and revocation requests included: a redirect is an error.
        session.max_redirects = 0
        session.mount("https://", self.adapter)
        session.mount("http://", self.adapter)

    @contextlib.contextmanager
    def bounded(self, timeout: float | None = None) -> Iterator[float]:
        """One call: it ends within ``timeout`` (else this client's) or by the deadline of an
        enclosing :func:`within`, whichever comes first, and fails as ``requests.Timeout`` when
        it does not. Yields the time left, for ``requests``' own bound on each wait; the call's
        body is read inside the block too."""
        now = time.monotonic()
        own = now + (timeout or self.timeout)
        until = _deadline(timeout or self.timeout, now)
        if until <= now:
            raise NoTimeLeft("no time left for another call to the provider")
        watch = _Watch()
        timer = threading.Timer(until - now, watch.expire)
        timer.daemon = True
        try:
            timer.start()
        except RuntimeError:  # no thread to be had
            raise NoTimer("no thread for the call's timer") from None
        token = _WATCH.set(watch)
        took_too_long = (requests.Timeout if until >= own else CutShort)(f"the call took longer than {until - now:g} s")
        try:
            yield until - now
        except _CALL_ERRORS:
            # Cut off, or a wait that ran out with the call's time (requests says "Read timed
            # out" as a ConnectionError when it reads a body).
            if watch.expired or time.monotonic() >= until:
                raise took_too_long from None
            raise
        else:
            if watch.cut:
                raise took_too_long
        finally:
            timer.cancel()
            watch.end()
            _WATCH.reset(token)

    def get_json(
        self, url: str, *, document: str, headers: dict | None = None, timeout: float | None = None,
        answered: Callable[[Mapping[str, str]], None] | None = None,
    ) -> dict:
        """GET a JSON object of bounded size; raise :class:`HTTPFailure` for anything else.
        ``answered`` is given the headers of an answer 200 (userinfo's ``DPoP-Nonce``).

        Its span is ``provider <document>`` (``discovery``, ``jwks``, ``userinfo``), named by what
        it fetches as the provider's POSTs are, with the provider's name and the answer's status:
        never the URL, its query or the headers."""
        headers = {"Accept": "application/json", **(headers or {})}
        with tracing.outgoing_span(f"provider {document}", kind_of="provider", target=self.provider, method="GET") as span:
            tracing.inject(headers)
            return self._get_json(url, headers, timeout, span, answered)

    def _get_json(self, url: str, headers: dict, timeout: float | None, span, answered=None) -> dict:
        try:
            with self.bounded(timeout) as left, self.session.get(
                url,
                headers=headers,
                timeout=left,
                allow_redirects=False,
                stream=True,
            ) as response:
                span.set_attribute("http.response.status_code", response.status_code)
                if response.status_code != 200:
                    raise HTTPFailure(
                        f"answered HTTP {response.status_code}",
                        unavailable=response.status_code >= 500,
                        status=response.status_code,
                        headers=response.headers,
                    )
                body = response.raw.read(MAX_DOCUMENT_BYTES + 1, decode_content=True)
                if answered is not None:
                    answered(response.headers)
        except _CALL_ERRORS as e:
            raise describe(e) from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise HTTPFailure("answered with a document over 1 MiB", unavailable=False)
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested past Python's limit
            raise HTTPFailure("answered with something that is not JSON", unavailable=False) from None
        if not isinstance(document, dict):
            raise HTTPFailure("answered with JSON that is not an object", unavailable=False)
        return document

    def oauth2_session(self, **kwargs) -> OAuth2Session:
        """An Authlib client for one exchange, on the shared connection pool."""
        session = OAuth2Session(default_timeout=self.timeout, **kwargs)
        self._mount(session)
        return session

    def close(self) -> None:
        self.session.close()
        self.adapter.close()
