"""The provider's HTTP client: every call over within its timeout as a whole, and every way a
provider's answer can fail (a stall, a cut, a trickle) is an HTTPFailure, never urllib3's own error.

The servers here are raw sockets on loopback (tests/support/raw_server.py), each answering the
way one test needs. The time
bounds asserted are generous (seconds where the call takes a fraction of one); they tell a call
that was cut off from one that waited for the server, which would take the trickle's whole 30 s.
"""

import json
import socket
import threading
import time

import pytest
import requests

from myapp.services import http
from myapp.services.http import HttpClient, HTTPFailure, within
from myapp.services.oidc import ProviderUnavailable
from myapp.services.oidc.metadata import ProviderDocuments
from tests.support.raw_server import RawServer, trickle
from tests.unit.services.test_oidc import Clock, make_client

DOCUMENT = json.dumps({"ok": True}).encode()


@pytest.fixture
def serve():
    servers = []

    def make(answer):
        server = RawServer(answer)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def ok(connection, head):
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(DOCUMENT), DOCUMENT))
    return True


def fails(call, expected: str, within_seconds: float):
    started = time.monotonic()
    with pytest.raises(HTTPFailure) as info:
        call()
    assert str(info.value) == expected
    assert info.value.unavailable
    assert time.monotonic() - started < within_seconds
    return info.value


def test_a_body_that_stalls_is_a_timeout(serve):
    # urllib3 raised its own ReadTimeoutError from the body's read: a 500 where a 503 belongs.
    def stall(connection, head):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(3)

    server = serve(stall)
    fails(lambda: HttpClient(timeout=0.5).get_json(server.url + "/jwks", document="jwks"), "timed out", 2.5)


def test_a_body_cut_short_is_a_failed_connection(serve):
    def cut(connection, head):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ke")

    server = serve(cut)
    fails(lambda: HttpClient(timeout=5).get_json(server.url + "/jwks", document="jwks"), "connection failed", 4)


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_trickle_is_cut_off_at_the_timeout(serve, part):
    """A byte every 0.1 s never lets a wait reach the timeout; the call as a whole still ends."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"

    def slow(connection, head):
        if part == "body":
            connection.sendall(answer)
        trickle(connection, (answer if part == "head" else b"") + b" " * 1000, server.stopped)

    server = serve(slow)
    fails(lambda: HttpClient(timeout=1).get_json(server.url + "/.well-known/openid-configuration", document="jwks"), "timed out", 5)


def test_the_connection_cut_off_is_never_used_again(serve):
    calls = []

    def first_slow(connection, head):
        calls.append(head)
        if len(calls) == 1:
            trickle(connection, b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200, server.stopped)
            return
        return ok(connection, head)

    server = serve(first_slow)
    client = HttpClient(timeout=1)
    fails(lambda: client.get_json(server.url + "/a", document="jwks"), "timed out", 5)
    assert client.get_json(server.url + "/b", document="jwks") == {"ok": True}
    assert client.get_json(server.url + "/c", document="jwks") == {"ok": True}
    assert server.connections == 2  # a new one after the cut, then kept


def test_a_call_that_ends_in_time_is_left_alone(serve):
    """The watch of a finished call never touches the kept connection: the next call reuses it."""
    server = serve(ok)
    client = HttpClient(timeout=0.5)
    assert client.get_json(server.url + "/a", document="jwks") == {"ok": True}
    time.sleep(0.8)  # past the first call's deadline
    assert client.get_json(server.url + "/b", document="jwks") == {"ok": True}
    assert server.connections == 1


def test_a_call_s_deadline_never_cuts_the_connection_another_call_took_from_the_pool(serve):
    """A call's timer may fire after the call gave its connection back and another call took it:
    that call must not be cut off. Here the first call's time runs out while the second, on the
    same kept connection, waits for its answer."""
    client = HttpClient(timeout=30)
    first = []

    def answer(connection, head):
        if head.startswith(b"GET /second "):
            first[0].expire()  # the first call's timer, firing late
        return ok(connection, head)

    server = serve(answer)
    with client.bounded():
        first.append(http._WATCH.get())
        assert client.session.get(server.url + "/first", timeout=5).json() == {"ok": True}
        assert client.get_json(server.url + "/second", document="jwks") == {"ok": True}  # another call, same connection
    assert first[0].expired and server.connections == 1


def test_within_ends_every_call_in_it_by_its_deadline(serve):
    def slow(connection, head):
        trickle(connection, b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 300, server.stopped)

    server = serve(slow)
    client = HttpClient(timeout=60)
    with within(0.5):
        with client.bounded() as left:
            assert left <= 0.5
        with within(30), client.bounded() as left:  # an inner block cannot extend it
            assert left <= 0.5
        fails(lambda: client.get_json(server.url + "/a", document="jwks"), "timed out", 4)


def test_no_time_left_fails_before_calling(serve):
    server = serve(ok)
    with within(0):
        fails(lambda: HttpClient(timeout=5).get_json(server.url + "/a", document="jwks"), "timed out", 1)
    assert server.connections == 0
    with within(-1), pytest.raises(requests.Timeout):
        with HttpClient(timeout=5).bounded():
            pass


def test_without_within_a_call_has_its_own_timeout():
    assert http._DEADLINE.get() is None
    with HttpClient(timeout=7).bounded() as left:
        assert 6 < left <= 7
    with HttpClient(timeout=7).bounded(2) as left:
        assert 1 < left <= 2


def test_a_token_endpoint_that_trickles_is_a_timeout(serve):
    """The token, revocation and PAR calls go through Authlib's session: bounded the same way."""
    def provider(connection, head):
        issuer = server.url
        if head.startswith(b"GET /.well-known/openid-configuration "):
            document = json.dumps({
                "issuer": issuer, "authorization_endpoint": issuer + "/authorize", "token_endpoint": issuer + "/token",
                "jwks_uri": issuer + "/jwks", "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }).encode()
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(document), document))
            return True
        connection.sendall(b"HTTP/1.1 200 OK\r\n")
        trickle(connection, b"Content-Type: application/json\r\n" + b"X: y\r\n" * 300, server.stopped)

    server = serve(provider)
    # Cut in the middle of the head, after its status line: http.client reads that as the head's
    # end and an empty body, a whole 200 answer; it is the time running out all the same.
    client = make_client(type("Provider", (), {"issuer": server.url})(), Clock(), http_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="timed out"):
        client.refresh("rt")
    assert time.monotonic() - started < 5
    client.http.close()


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_cut_that_looks_like_an_end_is_a_timeout(serve, part):
    """Cut after the status line, or in a body without a length, the answer looks whole to
    http.client (found by review: "not JSON", a misconfigured provider, where it is a timeout)."""
    def slow(connection, head):
        connection.sendall(b"HTTP/1.1 200 OK\r\n")
        if part == "head":
            trickle(connection, b"X: y\r\n" * 300, server.stopped)
        else:
            connection.sendall(b"Content-Type: application/json\r\nConnection: close\r\n\r\n")
            trickle(connection, b'{"a": "' + b"x" * 300, server.stopped)

    server = serve(slow)
    fails(lambda: HttpClient(timeout=1).get_json(server.url + "/jwks", document="jwks"), "timed out", 5)


def test_a_deadline_that_passes_while_connecting_cuts_the_call_once_connected(serve, monkeypatch):
    """The socket exists only once connected: a deadline passing during a slow name lookup found
    nothing to cut, and the call then ran on unbounded (found by review: 7.5 s for a 1 s timeout)."""
    resolve = socket.getaddrinfo

    def slow_lookup(*args, **kwargs):
        time.sleep(1.2)
        return resolve(*args, **kwargs)

    def slow(connection, head):
        trickle(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n" + b" " * 300, server.stopped)

    server = serve(slow)
    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    fails(lambda: HttpClient(timeout=1).get_json(server.url.replace("127.0.0.1", "localhost") + "/jwks", document="jwks"), "timed out", 4)


def test_the_documents_lock_is_waited_for_no_longer_than_the_deadline(serve):
    """A thread fetching discovery holds the provider's documents for up to its own timeout; the
    refresh lock's holder (inside within()) must not wait past its deadline behind it."""
    fetching = threading.Event()

    def slow(connection, head):
        fetching.set()
        trickle(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n" + b" " * 300, server.stopped)

    server = serve(slow)
    documents = ProviderDocuments(issuer=server.url, http=HttpClient(timeout=3))
    other = []

    def fetch():
        try:
            documents.metadata()
        except ProviderUnavailable as e:
            other.append(e)

    thread = threading.Thread(target=fetch)
    thread.start()
    assert fetching.wait(10)  # the other thread holds the documents, fetching
    started = time.monotonic()
    with within(0.5), pytest.raises(ProviderUnavailable, match="being fetched"):
        documents.metadata()
    assert time.monotonic() - started < 2
    thread.join()
    assert len(other) == 1 and "timed out" in str(other[0])  # its own call, cut at its 3 s


def test_no_thread_for_the_timer_is_a_failed_connection_not_a_500(serve, monkeypatch):
    server = serve(ok)

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Timer, "start", no_thread)
    fails(lambda: HttpClient(timeout=1).get_json(server.url + "/a", document="jwks"), "connection failed", 2)
    assert http._WATCH.get() is None
