"""The proxy's HTTP/1.1 client against loopback servers that answer exactly what each test
scripts: connections kept and dropped, framing refused, timeouts, TLS.

What the whole app does with these answers (the statuses and error codes the browser sees) is
tests/functional/test_proxy.py.
"""

import collections
import contextlib
import io
import socket
import ssl
import threading
import time

import pytest

from myapp.services.dpop import target_uri
from myapp.services.http1 import (
    DRAIN_LIMIT,
    MAX_HEADERS,
    Broken,
    ConnectionPool,
    TimedOut,
    Timeout,
    Unreachable,
    request_head,
)
from tests.support.keys import server_certificate

TIMEOUT = Timeout(connect=2, read=2)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Upstream:
    """A loopback server: each connection it accepts is served by ``serve(upstream, connection,
    number)`` in a thread of its own; what it read is kept in ``requests`` as (number, head, body)."""

    def __init__(self, serve, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"):
        self.serve, self.tls = serve, tls
        self.listener = socket.create_server((host, 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.requests: list[tuple[int, bytes, bytes]] = []
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    connection = self.tls.wrap_socket(connection, server_side=True)
                except OSError:
                    connection.close()
                    continue
            self.accepted += 1
            self.connections.append(connection)
            threading.Thread(target=self._serve, args=(connection, self.accepted), daemon=True).start()

    def _serve(self, connection, number):
        with contextlib.suppress(OSError):
            self.serve(self, connection, number)

    def read_request(self, connection, number) -> bytes | None:
        """One request from the connection (its head and, by Content-Length, its body); None at its end."""
        data = b""
        while b"\r\n\r\n" not in data:
            piece = connection.recv(65536)
            if not piece:
                return None
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
        )
        while len(body) < length:
            piece = connection.recv(65536)
            if not piece:
                break
            body += piece
        self.requests.append((number, head, body))
        return head

    def close(self):
        self.listener.close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.close()


def answering(*answers: bytes, then_close: bool = False):
    """Serve each request of a connection with the next answer (the last one again past the end)."""

    def serve(upstream, connection, number):
        index = 0
        while upstream.read_request(connection, number) is not None:
            connection.sendall(answers[min(index, len(answers) - 1)])
            index += 1
            if then_close:
                connection.close()
                return

    return serve


@pytest.fixture
def upstream():
    made = []

    def make(serve, tls=None, host="127.0.0.1") -> Upstream:
        server = Upstream(serve, tls, host)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def pools():
    made = []

    def make(server: Upstream, scheme="http", **kw) -> ConnectionPool:
        pool = ConnectionPool(f"{scheme}://127.0.0.1:{server.port}/", **kw)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()


def get(pool, target="/x", method="GET", body=None, headers=None):
    answer = pool.urlopen(method, target, headers=headers or {}, body=body, timeout=TIMEOUT)
    data = answer.read()
    answer.release_conn()
    return answer, data


def test_a_connection_is_kept_and_used_again(upstream, pools):
    server = upstream(answering(OK))
    pool = pools(server)
    for _ in range(3):
        answer, body = get(pool)
        assert (answer.status, answer.reason, body) == (200, "OK", b"ok")
    assert server.accepted == 1
    head = server.requests[0][1].decode()
    assert head.startswith("GET /x HTTP/1.1\r\n") and f"\r\nHost: 127.0.0.1:{server.port}" in head


def test_an_answer_that_closes_its_connection_is_not_kept(upstream, pools):
    server = upstream(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", then_close=True))
    pool = pools(server)
    get(pool), get(pool)
    assert server.accepted == 2


def test_an_http10_answer_is_not_kept(upstream, pools):
    server = upstream(answering(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    pool = pools(server)
    get(pool), get(pool)
    assert server.accepted == 2


def test_an_idle_connection_the_upstream_closed_is_dropped_before_use(upstream, pools):
    server = upstream(answering(OK, then_close=True))
    pool = pools(server)
    get(pool)
    time.sleep(0.1)  # the upstream's close has arrived: the idle connection reads as ended
    assert get(pool)[1] == b"ok"
    assert server.accepted == 2 and len(server.requests) == 2


def test_an_idle_connection_with_bytes_nobody_asked_for_is_dropped(upstream, pools):
    server = upstream(answering(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    pool = pools(server)
    assert get(pool)[1] == b"ok"
    time.sleep(0.1)
    assert get(pool)[1] == b"ok"
    assert server.accepted == 2


def closes_the_second_request_unanswered(upstream, connection, number):
    """Answers one request, then reads the next and closes without a byte: the race of a
    kept-alive connection that the upstream closed just as it was used again."""
    upstream.read_request(connection, number)
    connection.sendall(OK)
    if number == 1:
        upstream.read_request(connection, number)
        connection.close()
    else:
        answering(OK)(upstream, connection, number)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_an_idempotent_request_on_a_connection_closed_unanswered_is_sent_once_more(upstream, pools, method):
    server = upstream(closes_the_second_request_unanswered)
    pool = pools(server)
    get(pool)
    answer, body = get(pool, method=method, body=io.BytesIO(b"same"), headers={"Content-Length": "4"})
    assert (answer.status, body) == (200, b"ok")
    assert [(number, body) for number, _, body in server.requests[1:]] == [(1, b"same"), (2, b"same")]


def test_a_request_sent_again_takes_the_headers_resend_writes(upstream, pools):
    """A DPoP proof is good for one sending: the proxy writes the headers anew for the second."""
    server = upstream(closes_the_second_request_unanswered)
    pool = pools(server)
    written = []

    def resend():
        written.append(len(written) + 2)
        return {"X-Proof": str(written[-1])}

    answer = pool.urlopen("GET", "/x", headers={"X-Proof": "1"}, timeout=TIMEOUT, resend=resend)
    answer.read(), answer.release_conn()
    assert written == []  # sent once, answered: nothing written again
    answer = pool.urlopen("GET", "/x", headers={"X-Proof": "1"}, timeout=TIMEOUT, resend=resend)
    assert (answer.status, answer.read()) == (200, b"ok")
    answer.release_conn()
    proofs = [[line for line in head.split(b"\r\n") if line.startswith(b"X-Proof")] for _, head, _ in server.requests]
    assert proofs == [[b"X-Proof: 1"], [b"X-Proof: 1"], [b"X-Proof: 2"]]


def test_a_post_on_a_connection_closed_unanswered_is_not_sent_again(upstream, pools):
    """RFC 9110 section 9.2.2: the upstream may have acted on it."""
    server = upstream(closes_the_second_request_unanswered)
    pool = pools(server)
    get(pool)
    with pytest.raises(Broken, match="closed before the answer"):
        get(pool, method="POST", body=io.BytesIO(b"once"), headers={"Content-Length": "4"})
    assert [head.split(b" ")[0] for _, head, _ in server.requests] == [b"GET", b"POST"]


def test_a_new_connection_closed_unanswered_is_broken_and_not_retried(upstream, pools):
    def closes(upstream, connection, number):
        upstream.read_request(connection, number)
        connection.close()

    server = upstream(closes)
    with pytest.raises(Broken):
        get(pools(server))
    assert server.accepted == 1


def test_a_chunked_body_arrives_as_it_is_sent_and_its_trailer_stays_behind(upstream, pools):
    gate = threading.Event()

    def chunked(upstream, connection, number):
        upstream.read_request(connection, number)
        connection.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        gate.wait(5)
        connection.sendall(b"6\r\nsecond\r\n0\r\nX-Checksum: 1\r\n\r\n")
        answering(OK)(upstream, connection, number)

    server = upstream(chunked)
    pool = pools(server)
    answer = pool.urlopen("GET", "/x", headers={}, timeout=TIMEOUT)
    assert answer.read(1024) == b"first"  # before the rest was even sent
    gate.set()
    assert answer.read(3) == b"sec" and answer.read(1024) == b"ond" and answer.read(1024) == b""
    assert "X-Checksum" not in answer.headers
    answer.release_conn()
    assert get(pool)[1] == b"ok" and server.accepted == 1


def test_a_body_without_a_length_ends_with_its_connection(upstream, pools):
    server = upstream(answering(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", then_close=True))
    pool = pools(server)
    assert get(pool)[1] == b"until the end"
    get(pool)
    assert server.accepted == 2


def test_a_body_cut_short_is_broken(upstream, pools):
    server = upstream(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfive!", then_close=True))
    answer = pools(server).urlopen("GET", "/x", headers={}, timeout=TIMEOUT)
    assert answer.status == 200
    with pytest.raises(Broken, match="closed mid-answer"):
        answer.read()
    answer.close()


def test_an_answer_to_head_has_no_body_whatever_its_length_says(upstream, pools):
    server = upstream(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"))
    pool = pools(server)
    answer, body = get(pool, method="HEAD")
    assert (answer.status, answer.headers.get("Content-Length"), body) == (200, "1000", b"")
    get(pool, method="HEAD")
    assert server.accepted == 2  # an answer to HEAD never keeps its connection (below)


@pytest.mark.parametrize(
    "method, head",
    [
        pytest.param("HEAD", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n", id="HEAD, without a length"),
        pytest.param("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n", id="HEAD, with a length"),
        pytest.param("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\n", id="304 with a length"),
        pytest.param("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n", id="204 with a length"),
        pytest.param("GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", id="304 chunked"),
        # No body to decode: its codings are not refused (helper-39).
        pytest.param("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", id="HEAD, gzip"),
        pytest.param("GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", id="304 gzip"),
    ],
)
def test_a_body_sent_late_after_an_answer_that_has_none_never_becomes_the_next_requests_answer(
    upstream, pools, method, head
):
    """An answer to HEAD, a 204 or a 304 has no body by the rules, whatever its head says. An
    upstream that answers HEAD as it answers GET, or a 204/304 that names a length or chunks, may
    send one all the same, here a moment later and shaped as a whole answer: on a kept connection
    the next request, perhaps another person's, would read it as its own."""
    injected = b"HTTP/1.1 200 OK\r\nX-Injected: 1\r\nContent-Length: 8\r\n\r\ninjected"

    def answers_then_sends_more(upstream, connection, number):
        while (request := upstream.read_request(connection, number)) is not None:
            if b"/first" in request:
                connection.sendall(head)
                time.sleep(0.05)
                connection.sendall(injected)
            else:
                connection.sendall(OK)

    server = upstream(answers_then_sends_more)
    pool = pools(server)
    answer, body = get(pool, target="/first", method=method)
    assert (answer.status, body) == (int(head[9:12]), b"")
    time.sleep(0.01)  # the injected answer arrives after the idle check would look
    answer, body = get(pool)
    assert (body, answer.headers.get("X-Injected")) == (b"ok", None)
    assert server.accepted == 2


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_a_204_or_304_without_a_length_keeps_its_connection(upstream, pools, status):
    server = upstream(answering(b"HTTP/1.1 " + status + b"\r\nETag: \"a\"\r\n\r\n", OK))
    pool = pools(server)
    assert get(pool)[0].status == int(status[:3])
    assert get(pool)[1] == b"ok"
    assert server.accepted == 1


def test_informational_answers_are_skipped(upstream, pools):
    server = upstream(answering(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    ))
    answer, body = get(pools(server))
    assert (answer.status, body, answer.headers.items()) == (200, b"ok", [("Content-Length", "2")])


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", "upgrade"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok", "malformed"),
        (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok", "malformed"),
        (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "malformed"),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", "malformed"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * (MAX_HEADERS + 1) + b"Content-Length: 2\r\n\r\nok", "fields"),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * (300 * 1024) + b"\r\n\r\n", "bytes"),
        (b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok", "a status of 99"),
        (b"HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok", "a status of 0"),
        # RFC 9110 section 15: 100 to 599; llhttp reads any three digits.
        (b"HTTP/1.1 600 Beyond\r\nContent-Length: 2\r\n\r\nok", "a status of 600"),
        (b"HTTP/1.1 999 Beyond\r\nContent-Length: 2\r\n\r\nok", "a status of 999"),
        # A body on an informational answer must not become part of the final one.
        (b"HTTP/1.1 150 Odd\r\nContent-Length: 9\r\n\r\n<script>1" + OK, "informational answer with a body"),
        # helper-37: the chunks came off, the gzip did not, and nothing said the body was compressed.
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "other than chunked"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
         "other than chunked"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok", "other than chunked"),
        # llhttp reads "chunked," as not chunked (until the connection closes): refused, not guessed.
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n", "other than chunked"),
    ],
)
def test_an_answer_whose_framing_cannot_be_trusted_is_broken(upstream, pools, raw, why):
    server = upstream(answering(raw, then_close=True))
    with pytest.raises(Broken, match=why):
        get(pools(server))


def test_an_upstream_that_does_not_answer_in_time_has_timed_out(upstream, pools):
    stop = threading.Event()

    def silent(upstream, connection, number):
        upstream.read_request(connection, number)
        stop.wait(10)

    server = upstream(silent)
    pool = pools(server)
    started = time.monotonic()
    with pytest.raises(TimedOut):
        pool.urlopen("GET", "/x", headers={}, timeout=Timeout(connect=2, read=0.3))
    stop.set()
    assert time.monotonic() - started < 5


def test_a_kept_connection_reads_with_the_timeout_of_the_request_it_carries(upstream, pools):
    stop = threading.Event()

    def answers_once_then_stalls(upstream, connection, number):
        upstream.read_request(connection, number)
        connection.sendall(OK)
        upstream.read_request(connection, number)
        stop.wait(10)

    server = upstream(answers_once_then_stalls)
    pool = pools(server)
    first = pool.urlopen("GET", "/x", headers={}, timeout=Timeout(connect=10, read=10))
    assert first.read() == b"ok"
    first.release_conn()  # kept, with a read timeout of 10 s
    started = time.monotonic()
    with pytest.raises(TimedOut):
        pool.urlopen("GET", "/x", headers={}, timeout=Timeout(connect=2, read=0.3))
    stop.set()
    assert server.accepted == 1  # the same connection, with the new timeout
    assert time.monotonic() - started < 5


def test_a_trailer_is_bounded_like_a_head(upstream, pools):
    huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Huge: " + b"a" * (1024 * 1024)
    server = upstream(answering(huge + b"\r\n\r\n", then_close=True))
    answer = pools(server).urlopen("GET", "/x", headers={}, timeout=TIMEOUT)
    with pytest.raises(Broken, match="trailer"):
        answer.read()
    answer.close()


def test_a_body_that_stalls_has_timed_out(upstream, pools):
    stop = threading.Event()

    def stalls(upstream, connection, number):
        upstream.read_request(connection, number)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfive!")
        stop.wait(10)

    server = upstream(stalls)
    answer = pools(server).urlopen("GET", "/x", headers={}, timeout=Timeout(connect=2, read=0.3))
    assert answer.read(10) == b"five!"
    with pytest.raises(TimedOut):
        answer.read(10)
    stop.set()
    answer.close()


def trickling(head: bytes, then: bytes = b"", every: float = 0.05):
    """Serve each request with ``head``, then ``then`` one byte at a time, ``every`` seconds apart:
    each byte well within the read timeout, the whole far beyond it."""
    stop = threading.Event()

    def serve(upstream, connection, number):
        upstream.read_request(connection, number)
        connection.sendall(head)
        for byte in then:
            if stop.wait(every):
                return
            connection.sendall(bytes([byte]))

    return serve, stop


@pytest.mark.parametrize(
    "head, then",
    [
        pytest.param(b"", b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000 + b"\r\n\r\n", id="its head"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b"b" * 1000, id="a body read whole"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\nc\r\n" * 200, id="chunks read whole"),
    ],
)
def test_an_answer_that_trickles_in_has_timed_out_when_the_read_timeout_has_passed(upstream, pools, head, then):
    """The read timeout bounds each wait and the whole of what is read before anything goes on:
    otherwise a byte every 50 ms (here) or every 29 s (against 30) holds the call, and the thread
    serving it, for as long as the upstream likes."""
    serve, stop = trickling(head, then)
    server = upstream(serve)
    started = time.monotonic()
    with pytest.raises(TimedOut, match="not in within 0.5 s"):
        answer = pools(server).urlopen("GET", "/x", headers={}, timeout=Timeout(connect=2, read=0.5))
        try:
            answer.read()
        finally:
            answer.close()
    stop.set()
    assert 0.5 <= time.monotonic() - started < 1.5


def test_an_answer_drained_while_it_trickles_is_closed_at_the_read_timeout(upstream, pools):
    serve, stop = trickling(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 1000\r\n\r\n", b"d" * 1000)
    server = upstream(serve)
    answer = pools(server).urlopen("GET", "/x", headers={}, timeout=Timeout(connect=2, read=0.5))
    started = time.monotonic()
    answer.drain_conn()
    stop.set()
    assert answer.closed and time.monotonic() - started < 1.5


def test_a_streamed_body_may_last_longer_than_the_read_timeout_while_each_part_comes_in_time(upstream, pools):
    serve, stop = trickling(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n", b"e" * 20, every=0.05)
    server = upstream(serve)
    answer = pools(server).urlopen("GET", "/x", headers={}, timeout=Timeout(connect=2, read=0.3))
    answer.stream()
    started, body = time.monotonic(), b""
    while piece := answer.read(10):
        body += piece
    assert body == b"e" * 20 and time.monotonic() - started > 0.3
    answer.release_conn()
    stop.set()


def test_a_streamed_body_waits_the_whole_read_timeout_for_each_part_after_a_slow_head(upstream, pools):
    """The deadline shortened the socket's wait while the head trickled in; once the body streams,
    each part may take the read timeout again."""
    stop = threading.Event()

    def slow_head_then_a_pause(upstream, connection, number):
        upstream.read_request(connection, number)
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n":
            time.sleep(0.5 / 40)
            connection.sendall(bytes([byte]))
        time.sleep(0.8)  # more than what was left of the deadline, less than the read timeout
        connection.sendall(b"ok")
        stop.wait(5)

    server = upstream(slow_head_then_a_pause)
    answer = pools(server).urlopen("GET", "/x", headers={}, timeout=Timeout(connect=2, read=1.0))
    answer.stream()
    assert answer.read(10) == b"ok"
    answer.release_conn()
    stop.set()


def test_nothing_listening_is_unreachable():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    pool = ConnectionPool(f"http://127.0.0.1:{port}/")
    with pytest.raises(Unreachable, match="could not connect"):
        pool.urlopen("GET", "/x", headers={}, timeout=TIMEOUT)


def test_an_early_answer_to_a_body_it_would_not_read_is_passed_on(upstream, pools):
    """A 413 sent before the whole body arrived, the connection then closed: that answer, not a
    broken pipe, is what the caller gets."""

    def refuses(upstream, connection, number):
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536)
        connection.sendall(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        connection.shutdown(socket.SHUT_WR)
        time.sleep(0.2)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
        connection.close()

    server = upstream(refuses)
    body = io.BytesIO(b"x" * (16 * 1024 * 1024))
    answer, _ = get(pools(server), method="POST", body=body, headers={"Content-Length": str(16 * 1024 * 1024)})
    assert answer.status == 413


def test_a_body_goes_whole_after_the_head(upstream, pools):
    server = upstream(answering(OK))
    payload = bytes(range(256)) * 1000
    get(pools(server), method="PUT", body=io.BytesIO(payload), headers={"Content-Length": str(len(payload))})
    assert server.requests[0][2] == payload


def test_an_unneeded_answer_is_drained_to_keep_its_connection_up_to_a_limit(upstream, pools):
    big = DRAIN_LIMIT + 65536
    server = upstream(answering(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\n\r\nnope!",
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n" % big + b"x" * big,
        OK,
    ))
    pool = pools(server)
    pool.urlopen("GET", "/x", headers={}, timeout=TIMEOUT).drain_conn()
    pool.urlopen("GET", "/x", headers={}, timeout=TIMEOUT).drain_conn()  # too much to read: closed
    assert server.accepted == 1
    assert get(pool)[1] == b"nope!" and server.accepted == 2  # a new connection, served from its first answer


def test_a_pool_keeps_at_most_maxsize_idle_connections_and_none_once_closed(upstream, pools):
    server = upstream(answering(OK))
    pool = pools(server, maxsize=2)
    answers = [pool.urlopen("GET", "/x", headers={}, timeout=TIMEOUT) for _ in range(3)]
    for answer in answers:
        answer.read()
        answer.release_conn()
    assert len(pool._idle) == 2
    late = pool.urlopen("GET", "/x", headers={}, timeout=TIMEOUT)
    pool.close()
    late.read()
    late.release_conn()
    assert len(pool._idle) == 0


class RacingIdle(collections.deque):
    """The pool's idle list, where ``before_append`` runs what other threads did between
    ``put``'s check and its append (``put`` takes no lock)."""

    before_append = None

    def append(self, sock):
        if self.before_append is not None:
            step, self.before_append = self.before_append, None
            step()
        super().append(sock)


def test_a_put_racing_close_keeps_nothing_in_the_closed_pool():
    pool = ConnectionPool("http://127.0.0.1:9/")
    pool._idle = RacingIdle()
    pool._idle.before_append = pool.close
    mine, other = socket.socketpair()
    pool.put(mine)
    assert pool.closed and len(pool._idle) == 0 and mine.fileno() == -1
    other.close()


def test_puts_racing_each_other_keep_at_most_maxsize_the_most_recent():
    pool = ConnectionPool("http://127.0.0.1:9/", maxsize=2)
    pool._idle = RacingIdle()
    pairs = [socket.socketpair() for _ in range(4)]
    socks = [a for a, _ in pairs]
    pool.put(socks[0])
    # Two other threads found room too, and appended first.
    pool._idle.before_append = lambda: pool._idle.extend(socks[1:3])
    pool.put(socks[3])
    assert list(pool._idle) == socks[2:4]
    assert [s.fileno() == -1 for s in socks] == [True, True, False, False]
    pool.close()
    for _, b in pairs:
        b.close()


def test_the_request_head_is_checked_and_carries_what_http_client_sent():
    assert request_head("PROPFIND", "/", "h", {}, bodiless=True).startswith(b"PROPFIND / HTTP/1.1\r\n")
    head = request_head("POST", "/a?b=1", "api.example", {"Accept": "*/*", "host": "evil.example"}, bodiless=True)
    assert head == b"POST /a?b=1 HTTP/1.1\r\nHost: api.example\r\nAccept: */*\r\nContent-Length: 0\r\n\r\n"
    assert b"Content-Length" not in request_head("GET", "/", "h", {}, bodiless=True)
    assert request_head("GET", "/", "h", {"X-Tab": "a\tb", "X-Latin": "caf\xe9"}, bodiless=True).endswith(
        b"X-Tab: a\tb\r\nX-Latin: caf\xe9\r\n\r\n"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Injected": "a\r\nX-Evil: 1"},
        {"X-Injected": "a\nb"},
        {"X-Injected": "a\rb"},
        {"X-Nul": "a\x00b"},
        {"X-Name\r\nEvil": "1"},
        {"": "1"},
        {"X Space": "1"},
        {"X-Wide": "\u2603"},
    ],
)
def test_a_header_that_could_start_another_header_or_request_is_never_sent(headers):
    with pytest.raises(Broken):
        request_head("GET", "/", "h", headers, bodiless=True)


@pytest.mark.parametrize("method", ["GET /evil HTTP/1.1\r\nX:", "GET ", "", "G\nET", "GÉT"])
def test_a_method_that_is_not_a_token_is_never_sent(method):
    with pytest.raises(Broken, match="method"):
        request_head(method, "/", "h", {}, bodiless=True)


def test_the_target_is_encoded_as_urllib3_did_and_as_the_dpop_proof_names_it():
    pool = ConnectionPool("http://api.example:8080/")
    for written, wire in [
        # An upstream mounted at "/" and a path with an empty segment: the path stays whole, never
        # read as an authority (which would drop "anything" and dodge a step-up rule on its path).
        ("//anything/transfers", "//anything/transfers"),
        ("//a:b@c/x?q=1", "//a:b@c/x?q=1"),
        ("//h:abc/x", "//h:abc/x"),  # not a port to parse: a path, passed on (no 500)
        ("/a\r\nb", "/a%0D%0Ab"),
        ("/v1/a b", "/v1/a%20b"),
        ("/v1/café", "/v1/caf%C3%A9"),
        ("/v1/%7euser/%2a", "/v1/%7Euser/%2A"),
        ("/v1/x?q=a b&r=é", "/v1/x?q=a%20b&r=%C3%A9"),
        ("/v1/x?already=%20", "/v1/x?already=%20"),
    ]:
        assert pool.wire_target(written) == wire
        assert target_uri("http://api.example:8080" + written).endswith(wire.split("?")[0])
    with pytest.raises(Broken, match="target"):
        pool.wire_target("no-slash")
    assert ConnectionPool("http://[::1]:8080/").host_header == "[::1]:8080"
    assert ConnectionPool("https://api.example/").host_header == "api.example"
    with pytest.raises(ValueError):
        ConnectionPool("ftp://api.example/")


def test_https_pools_share_one_context_that_checks_certificates_and_host_names():
    """Loading the system's authorities costs about 50 ms: once per process, not once per upstream."""
    first, second = ConnectionPool("https://a.example/"), ConnectionPool("https://b.example:8443/")
    assert first.ssl_context is second.ssl_context
    assert first.ssl_context.verify_mode == ssl.CERT_REQUIRED and first.ssl_context.check_hostname
    assert ConnectionPool("http://a.example/").ssl_context is None


@pytest.fixture
def tls(tmp_path):
    ca, certificate, key = server_certificate(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(certificate, key)
    client_side = ssl.create_default_context(cafile=str(ca))
    return server_side, client_side


def test_https_upstreams_are_verified_with_the_systems_authorities(upstream, pools, tls):
    server_side, client_side = tls
    server = upstream(answering(OK), tls=server_side)
    with pytest.raises(Broken, match="TLS failed"):
        get(pools(server, scheme="https"))  # the test CA is not one the system trusts
    pool = pools(server, scheme="https", ssl_context=client_side)
    assert get(pool)[1] == b"ok" and get(pool)[1] == b"ok"
    assert server.accepted == 1  # one kept connection (the refused handshake never counted)


def test_a_certificate_for_another_host_is_refused(upstream, tls):
    """The certificate names 127.0.0.1 and localhost; the upstream is configured as 127.0.0.2."""
    server_side, client_side = tls
    try:
        server = upstream(answering(OK), tls=server_side, host="127.0.0.2")
    except OSError:
        pytest.skip("127.0.0.2 is not this machine's loopback")
    pool = ConnectionPool(f"https://127.0.0.2:{server.port}/", ssl_context=client_side)
    with pytest.raises(Broken, match="TLS failed"):
        get(pool)
