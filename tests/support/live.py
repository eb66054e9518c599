"""The whole product on real sockets: the BFF (in a thread or in its own processes), the
development provider, a real database, and a browser that signs in by typing a name."""

import contextlib
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urljoin

import requests

from myapp import main
from myapp.services import Services
from tests.conftest import ROOT, TEST_KEY
from tests.devstack.flows import sign_in as type_name_at_provider
from tests.devstack.server import CLIENT_ID, CLIENT_SECRET, running_devstack
from tests.support.servers import running_wsgi

COOKIE = "session"
# As production.ini: waitress keeps at most about this much of a response in memory per connection.
OUTBUF = 1024 * 1024


def bff_settings(database_url: str, public_url: str, devstack_url: str, **overrides) -> dict:
    return {
        "sqlalchemy.url": database_url,
        "myapp.public_url": public_url,
        "myapp.oidc.issuer": devstack_url + "/_dev/idp",
        "myapp.oidc.client_id": CLIENT_ID,
        "myapp.oidc.client_secret": CLIENT_SECRET,
        # Plain http on loopback: a development setup, which production settings would refuse.
        "myapp.environment": "development",
        "myapp.session.cookie_secure": "false",
        "myapp.session.cookie_name": COOKIE,
        "myapp.tokens.encryption_keys": TEST_KEY,
        "myapp.upstreams": f"demo = {devstack_url}/_dev/api",
        **overrides,
    }


def listener() -> tuple[socket.socket, str]:
    sock = socket.create_server(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def devstack_for(*bff_urls: str, **settings):
    """The development provider, registered for the given BFF origins; yields its base URL."""
    with running_devstack(
        outbuf_high_watermark=OUTBUF,
        **{
            "devstack.idp.redirect_uris": " ".join(f"{u}/auth/callback" for u in bff_urls),
            "devstack.idp.post_logout_redirect_uris": " ".join(f"{u}/" for u in bff_urls),
            "devstack.api.leeway": "0",
            **settings,
        }
    ) as url:
        yield url


@contextlib.contextmanager
def bff_in_thread(database_url: str, sock: socket.socket, public_url: str, devstack_url: str, **overrides):
    app = main({}, **bff_settings(database_url, public_url, devstack_url, **overrides))
    try:
        with running_wsgi(lambda base: app, listener=sock, threads=32, outbuf_high_watermark=OUTBUF) as url:
            yield url, app
    finally:
        app.registry[Services].close()


def write_ini(path: Path, settings: dict) -> Path:
    lines = ["[app:main]", "use = egg:myapp"]
    for key, value in settings.items():
        value = str(value).replace("%", "%%").replace("\n", "\n    ")
        lines.append(f"{key} = {value}")
    lines += ["", "[loggers]", "keys = root", "[handlers]", "keys = console", "[formatters]", "keys = plain",
              "[logger_root]", "level = WARN", "handlers = console", "[handler_console]", "class = StreamHandler",
              "args = (sys.stderr,)", "formatter = plain", "[formatter_plain]", "format = %%(levelname)s %%(name)s %%(message)s"]
    path.write_text("\n".join(lines) + "\n")
    return path


# The ports free_port has given out in this process.
_GIVEN_PORTS: set[int] = set()


def _own_ports() -> range | None:
    """The ports this process may choose from: below the kernel's ephemeral range, which it hands
    out to every socket bound to port 0 and every outgoing connection in every process, and of
    those, under pytest-xdist, every Nth, N being the number of test processes. None when the
    range cannot be read or leaves no room below it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    start = max(1024, low - 12000)
    if low - start < 2000:
        return None
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return range(start + (index - start) % count, low, count)


def free_port() -> int:
    """A port free now, for a server this process is about to start, and none it was given before.

    The port is closed until that server binds it. A port from the kernel (port 0) could be handed
    again meanwhile, to this process or any other (the kernel may give a port just closed out at
    once): two servers asked to listen on one port, and the second fails to start. So it is chosen
    below the kernel's ephemeral range, among the ports of this test process alone."""
    choices = _own_ports()
    for _ in range(1000):
        if choices is None:
            with socket.create_server(("127.0.0.1", 0)) as sock:
                port = sock.getsockname()[1]
        else:
            port = random.choice(choices)
            if port in _GIVEN_PORTS:
                continue
            try:
                socket.create_server(("127.0.0.1", port)).close()
            except OSError:
                continue  # someone else's
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port
    raise RuntimeError("no free port found in 1000 tries")


@contextlib.contextmanager
def bff_processes(ini: Path, ports: list[int]):
    """One process serving ``ini`` per port, each told its own public URL; yields their URLs.
    They start side by side (each takes about a second to import and make the app)."""
    processes, urls = [], [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for port, url in zip(ports, urls):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "tests.support.run_app", str(ini), str(port)],
                cwd=ROOT,
                env={**os.environ, "MYAPP_PUBLIC_URL": url},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ))
        for process in processes:
            line = process.stdout.readline()
            if not line.startswith("listening on "):
                raise RuntimeError(f"the app did not start: {line}{process.stdout.read()}")
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()


def sign_in(bff_url: str, name: str, browser: requests.Session | None = None) -> requests.Session:
    """Sign in through the BFF and the provider's sign-in page, as a person would."""
    browser = browser or requests.Session()
    start = browser.get(bff_url + "/login", allow_redirects=False)
    assert start.status_code == 303, start.text
    callback = type_name_at_provider(browser, start.headers["Location"], name)
    done = browser.get(urljoin(bff_url, callback), allow_redirects=False)
    assert done.status_code == 303, done.text
    return browser


def api(browser: requests.Session, url: str, method: str = "GET", **kw) -> requests.Response:
    headers = {"X-CSRF": "1", **kw.pop("headers", {})}
    return browser.request(method, url, headers=headers, **{"timeout": 30, **kw})
