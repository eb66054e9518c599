"""Serve a WSGI app on a loopback port in a background thread, for tests that cross real HTTP."""

import contextlib
import threading

import waitress


@contextlib.contextmanager
def serve(app, *, threads: int = 8):
    """Yield the base URL (``http://127.0.0.1:PORT``) of ``app`` served by waitress."""
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads, ident="test")
    port = server.socket.getsockname()[1]
    thread = threading.Thread(target=server.run, name=f"serve-{port}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=5)
        thread.join(timeout=5)
