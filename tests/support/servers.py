"""Real HTTP on loopback for tests: any WSGI app in a waitress thread, shut down cleanly."""

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import waitress
from waitress.channel import HTTPChannel


@contextmanager
def running_wsgi(
    make: Callable[[str], Callable],
    *,
    threads: int = 8,
    listener: socket.socket | None = None,
    create_server: Callable = waitress.create_server,
    **options,
) -> Iterator[str]:
    """Serve ``make(base_url)`` on a free loopback port (or ``listener``); yields the base URL."""
    listener = listener or socket.create_server(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        app = make(base_url)
    except BaseException:
        listener.close()
        raise
    server = create_server(app, sockets=[listener], threads=threads, **options)
    thread = threading.Thread(target=server.run, name=f"waitress {base_url}", daemon=True)
    thread.start()
    def close_everything():
        for dispatcher in list(server._map.values()):
            # A channel's handle_close also closes its output buffers (temporary files past 1 MiB).
            (dispatcher.handle_close if isinstance(dispatcher, HTTPChannel) else dispatcher.close)()

    try:
        yield base_url
    finally:
        # Closed from the server's own loop thread (a trigger thunk), so the loop ends cleanly.
        try:
            server.trigger.pull_trigger(close_everything)
        except OSError:
            # The loop already closed its trigger (it ended, or is ending): close from here.
            close_everything()
        thread.join(timeout=10)
        server.task_dispatcher.shutdown()


def serve(app, *, threads: int = 8, **options):
    """Serve an app that does not need to know its own URL."""
    return running_wsgi(lambda base_url: app, threads=threads, **options)


@contextmanager
def socket_server(handler: type[socketserver.BaseRequestHandler]) -> Iterator[str]:
    """A threaded TCP server on a free loopback port, one ``handler`` per connection; yields its
    base URL. It looks for the request to stop every 10 ms: at socketserver's default of 500 ms,
    every test with a raw upstream waited half a second for it to end."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def canned_http_server(response: bytes):
    """:func:`socket_server` answering every request with ``response`` as-is (then closing)."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            self.wfile.write(response)

    return socket_server(Handler)
