"""Serve the development stack alone: ``python -m myapp.devstack --port 9000 --redirect-uri ...``.

Prints one line, ``devstack listening on http://HOST:PORT``, once it accepts connections, so a
parent process can wait for it (``--port 0`` picks a free port). Stop it with SIGINT or SIGTERM.
"""

import argparse
import signal
import socket
import sys

import waitress

from myapp.devstack import make_app
from myapp.devstack.settings import IDP_PATH, PREFIX
from myapp.settings import SettingsError


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m myapp.devstack", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument("--threads", type=int, default=8, help="waitress threads (default 8)")
    parser.add_argument("--issuer", help=f"devstack.idp.issuer (default http://HOST:PORT{IDP_PATH})")
    parser.add_argument("--client-id", help="devstack.idp.client_id")
    parser.add_argument("--client-secret", help="devstack.idp.client_secret (env:NAME and file:/path work)")
    parser.add_argument("--redirect-uri", action="append", default=[], help="devstack.idp.redirect_uris (repeatable)")
    parser.add_argument(
        "--post-logout-redirect-uri",
        action="append",
        default=[],
        help="devstack.idp.post_logout_redirect_uris (repeatable)",
    )
    parser.add_argument("--backchannel-logout-uri", help="devstack.idp.backchannel_logout_uri")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other setting, e.g. --set idp.rotate_refresh_tokens=false (the devstack. prefix is optional)",
    )
    return parser.parse_args(argv)


def settings_from(args, port: int) -> dict:
    settings = {
        "devstack.idp.issuer": args.issuer or f"http://{args.host}:{port}{IDP_PATH}",
        "devstack.idp.client_id": args.client_id,
        "devstack.idp.client_secret": args.client_secret,
        "devstack.idp.redirect_uris": " ".join(args.redirect_uri),
        "devstack.idp.post_logout_redirect_uris": " ".join(args.post_logout_redirect_uri),
        "devstack.idp.backchannel_logout_uri": args.backchannel_logout_uri,
    }
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(f"--set {item!r}: write NAME=VALUE")
        name = name.strip()
        settings[name if name.startswith(PREFIX) else PREFIX + name] = value.strip()
    return {name: value for name, value in settings.items() if value is not None}


def main(argv=None) -> int:
    args = parse_args(argv)
    listener = socket.create_server((args.host, args.port))
    port = listener.getsockname()[1]
    try:
        app = make_app(settings_from(args, port))
    except SettingsError as e:
        listener.close()
        print(f"myapp.devstack: {e}", file=sys.stderr)
        return 2
    # Every BFF process keeps a pool of connections to the demo API open: `make bench` runs more
    # than a dozen, more than waitress's default limit of 100 connections would let in.
    server = waitress.create_server(app, sockets=[listener], threads=args.threads, connection_limit=1000)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"devstack listening on http://{args.host}:{port}", flush=True)
    try:
        server.run()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
