"""A server on a raw loopback socket, for answers no HTTP server library would give: a stall in
the middle of a body, a cut, a trickle of a byte at a time."""

import socket
import threading

TRICKLE_SECONDS = 30


class RawServer:
    """Answers each connection with ``answer(connection, request_head)`` in a thread of its own."""

    def __init__(self, answer):
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopped = threading.Event()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection):
        with connection:
            try:
                while True:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = connection.recv(65536)
                        if not chunk:
                            return
                        head += chunk
                    if self.answer(connection, head) is not True:  # True: keep the connection
                        return
            except OSError:
                return

    def close(self):
        self.stopped.set()
        self.listener.close()


def trickle(connection, data: bytes, stopped: threading.Event):
    """``data`` a byte at a time, a byte every 0.1 s (never a wait long enough to time out), for
    TRICKLE_SECONDS at most."""
    for byte in data[: int(TRICKLE_SECONDS / 0.1)]:
        if stopped.wait(0.1):
            return
        connection.sendall(bytes([byte]))
