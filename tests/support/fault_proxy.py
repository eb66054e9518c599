"""A TCP proxy on loopback that a test or the chaos run can break and mend: a dependency
(PostgreSQL, Redis, a provider, an upstream) becoming unreachable, slow or resetting connections
mid-run, as a firewall, a restart or an overloaded server would make it."""

import contextlib
import socket
import struct
import threading
import time

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


class FaultProxy:
    """Forwards every connection to ``target`` until told otherwise:

    - :meth:`cut`: open connections are reset and new ones are reset on arrival (unreachable);
    - :meth:`reset_answers`: requests still arrive, but each answer is replaced by a reset, so the
      client cannot know whether its request was carried out;
    - :meth:`slow`: each answer waits ``seconds`` before its first byte is passed on;
    - :meth:`hang`: requests still arrive (and are acknowledged), answers are held until
      :meth:`restore`, new connections included: a server hung, or a network that stopped
      carrying its answers;
    - :meth:`restore`: back to forwarding.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self.resetting = threading.Event()  # answers are reset
        self.delay = 0.0
        self.answering = threading.Event()  # cleared while answers are held (hang)
        self.answering.set()
        self.connections_reset = 0
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name=f"fault-proxy-{self.port}").start()

    def cut(self) -> None:
        """Every open connection is reset, and new ones are reset, until :meth:`restore`."""
        self.cut_off.set()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            _reset(connection)

    def reset_answers(self) -> None:
        """Each answer is replaced by a reset of both connections, until :meth:`restore`."""
        self.resetting.set()

    def slow(self, seconds: float) -> None:
        """Each answer is held ``seconds`` before it starts, until :meth:`restore`."""
        self.delay = seconds

    def hang(self) -> None:
        """Every answer is held, on open connections and new ones, until :meth:`restore`."""
        self.answering.clear()

    def restore(self) -> None:
        self.delay = 0.0
        self.answering.set()
        self.resetting.clear()
        self.cut_off.clear()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.answering.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                self.connections_reset += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._connections.update((client, upstream))
            answer_due = threading.Event()  # set by a request, cleared by the first byte of its answer
            threading.Thread(target=self._pump, args=(client, upstream, answer_due, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, answer_due, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answer_due: threading.Event, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if not answers:
                    answer_due.set()
                elif answer_due.is_set():
                    answer_due.clear()
                    if self.delay:
                        time.sleep(self.delay)
                if answers and not self.answering.is_set():
                    self.answering.wait()
                if answers and self.resetting.is_set():
                    self.connections_reset += 1
                    _reset(source)
                    _reset(sink)
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(source)
                self._connections.discard(sink)
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()


def _reset(connection: socket.socket) -> None:
    """Abort ``connection``; shutdown() first wakes a thread blocked reading it (close() alone would
    leave the connection open until that read returned)."""
    with contextlib.suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        connection.close()
