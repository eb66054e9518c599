"""Serve myapp from an ini file in its own process: ``python -m tests.support.run_app INI [PORT]``.

Prints ``listening on http://127.0.0.1:PORT`` once ready. Exits on SIGTERM.
"""

import signal
import socket
import sys

import waitress
from pyramid.paster import get_app, setup_logging


def main():
    ini = sys.argv[1]
    setup_logging(ini)
    app = get_app(ini, "main")
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    listener = socket.create_server(("127.0.0.1", port))
    server = waitress.create_server(app, sockets=[listener], threads=16)
    signal.signal(signal.SIGTERM, lambda *_: server.close() or sys.exit(0))
    print(f"listening on http://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
