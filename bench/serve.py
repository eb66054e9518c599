"""Serve one benchmark target in its own process; prints ``listening on URL`` when ready.

    python bench/serve.py bff INI PORT [CPU_AFFINITY]   (as [server:main]'s cpu_affinity: auto, a CPU)
    python bench/serve.py bare-urllib3 UPSTREAM_BASE PORT
    python bench/serve.py bare-urllib3-myapp-server UPSTREAM_BASE PORT   (N served as myapp serves itself)
    python bench/serve.py bare-requests UPSTREAM_BASE PORT
    python bench/serve.py otlp-sink - PORT      (accepts OTLP/HTTP exports, keeps nothing)
"""

import faulthandler
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import waitress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

THREADS = 8


def main():
    kind, target, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logging.basicConfig(level=logging.WARNING)
    if kind == "bff":
        from pyramid.paster import get_app

        app = get_app(target, "main")
    elif kind == "otlp-sink":
        def app(environ, start_response):
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            start_response("200 OK", [("Content-Type", "application/x-protobuf"), ("Content-Length", "0")])
            return [b""]
    else:
        from bench.bare_proxy import make_app

        app = make_app(target, kind.removeprefix("bare-").removesuffix("-myapp-server"))
    if kind == "bff" and len(sys.argv) > 4:
        import myapp.server

        # As myapp's own server runner does it, before waitress starts its threads; claimed under
        # the bench's own name, so that a myapp running on the machine neither blocks it nor is.
        myapp.server.CLAIM_PREFIX = os.environ.get("BENCH_CLAIM_PREFIX", myapp.server.CLAIM_PREFIX)
        print(myapp.server.hold_to_one_cpu(myapp.server.parse_cpu_affinity(sys.argv[4]))[1], flush=True)
    listener = socket.create_server(("127.0.0.1", port))
    # myapp as it serves itself (myapp/server.py: egg:myapp#waitress, what its ini files use); the
    # bare proxies on waitress as it comes, unless told otherwise.
    if kind == "bff" or kind.endswith("-myapp-server"):
        import myapp.server

        create_server = myapp.server.create_server
    else:
        create_server = waitress.create_server
    server = create_server(
        app, sockets=[listener], threads=THREADS, outbuf_high_watermark=1024 * 1024, connection_limit=1000
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    faulthandler.register(signal.SIGUSR1)  # every thread's stack to the log: `make chaos` asks for it
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
