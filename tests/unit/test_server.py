"""myapp's server: waitress, refusing ambiguous request framing (tested on a raw socket, where the
framing is the point), and stopping with one line on settings that cannot work."""

import socket
from importlib.metadata import entry_points

import pytest

from myapp.server import create_server, serve_paste
from tests.support.servers import serve


class Recorder:
    """A WSGI app answering with the body it read; it records every request it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read()
        self.seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"], body))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]


def exchange(base_url: str, raw: bytes) -> bytes:
    """Send ``raw`` on one connection and read until the server closes it (or goes quiet)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(raw)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except TimeoutError:
            received += b"<still open>"
    return received


@pytest.fixture
def app():
    return Recorder()


@pytest.fixture
def url(app):
    with serve(app, create_server=create_server, channel_timeout=2) as url:
        yield url


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("order", ["cl-first", "te-first"])
def test_both_lengths_are_refused_and_the_connection_closed(app, url, order):
    headers = [b"Content-Length: 4", b"Transfer-Encoding: chunked"]
    if order == "te-first":
        headers.reverse()
    raw = b"POST /first HTTP/1.1\r\nHost: x\r\n" + b"\r\n".join(headers) + b"\r\n\r\n0\r\n\r\n" + SMUGGLED
    received = exchange(url, raw)
    assert received.startswith(b"HTTP/1.1 400 Bad Request")
    assert b"Connection: close" in received and b"<still open>" not in received
    assert received.count(b"HTTP/1.1") == 1  # nothing answered for what followed
    assert app.seen == []


def test_plain_waitress_would_have_answered_the_smuggled_request(app):
    """What the strict parser prevents, shown on the server it replaces."""
    raw = b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED
    with serve(app, channel_timeout=1) as url:
        exchange(url, raw)
    assert [path for _, path, _ in app.seen] == ["/first", "/smuggled"]


def test_chunked_requests_and_keep_alive_still_work(app, url):
    chunked = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    plain = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    received = exchange(url, chunked + plain)
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert app.seen == [("POST", "/a", b"hello"), ("POST", "/b", b"abc")]


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"trusted_proxy_headers": "x-forwarded-for"}, "trusted_proxy_headers has no meaning without setting trusted_proxy"),
        ({"trusted_proxy_count": "1"}, "trusted_proxy_count has no meaning without setting trusted_proxy"),
        ({"threads": "many"}, "invalid literal"),
    ],
)
def test_settings_that_cannot_work_stop_the_server_with_one_line(app, capsys, settings, words):
    with pytest.raises(SystemExit) as stopped:
        serve_paste(app, {}, listen="127.0.0.1:0", **settings)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("myapp: [server:main]: ") and words in err and "\n" not in err


def test_the_ini_files_use_it():
    [runner] = [e for e in entry_points(group="paste.server_runner") if e.name == "waitress" and e.value.startswith("myapp")]
    assert runner.load() is serve_paste
