"""`make loadtest`: two myapp processes on PostgreSQL, 100 people signing in, browsing pages and
calling the API for 60 s while access tokens expire every 30 s.

Passes when there were no errors, no session was lost, the provider never saw a rotated
refresh token reused, every refresh the provider granted is one a session stored (none wasted
or duplicated), and each session refreshed once per token expiry (a session whose last call came
just before its last expiry may have one fewer). Numbers go to bench/loadtest.json and docs/benchmarks.md.
"""

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urljoin

import requests
from cryptography.fernet import Fernet
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import Processes, free_port, migrate, postgres_schema, write_ini  # noqa: E402
from bench.run import bff_settings as run_settings  # noqa: E402
from myapp.models import UserSession  # noqa: E402
from tests.devstack.flows import sign_in as type_name_at_provider  # noqa: E402

CLIENT_ID, CLIENT_SECRET = "loadtest", "loadtest-client-secret"
TOKEN_LIFETIME = 30
LEEWAY = 5


class User(threading.Thread):
    """One person: signs in, then clicks around both processes until the deadline."""

    def __init__(self, number, bffs, schedule, stats):
        super().__init__(name=f"user-{number}", daemon=True)
        self.number, self.bffs, self.schedule, self.stats = number, bffs, schedule, stats
        self.browser = requests.Session()
        self.csrf = None

    def call(self, method, path, bff=None, **kw):
        bff = bff or random.choice(self.bffs)
        started = time.monotonic()
        try:
            response = self.browser.request(method, bff + path, allow_redirects=False, timeout=60, **kw)
        except requests.RequestException as e:
            self.stats.error(f"{method} {path}: {type(e).__name__}")
            return None
        self.stats.latency(path, time.monotonic() - started)
        return response

    def run(self):
        try:
            self.sign_in()
        except Exception as e:  # a failed sign-in is an error to report, whatever raised it
            self.sign_in_failed(e)
            self.schedule.signed_in.wait()
            return
        self.schedule.signed_in.wait()
        self.schedule.go.wait()
        while time.monotonic() < self.schedule.deadline:
            self.act()
            time.sleep(random.uniform(0.3, 1.0))
        self.finish()

    def sign_in_failed(self, error: Exception):
        self.stats.error(f"sign-in: {type(error).__name__}: {error}")

    def finish(self):
        final = self.call("GET", "/auth/user", headers={"X-CSRF": "1"})
        if final is None or final.status_code != 200:
            self.stats.lost(self.number)

    def sign_in(self):
        bff = self.bffs[self.number % len(self.bffs)]
        start = self.browser.get(bff + "/login", allow_redirects=False, timeout=60)
        callback = type_name_at_provider(self.browser, start.headers["Location"], f"user{self.number}")
        done = self.browser.get(urljoin(bff, callback), allow_redirects=False, timeout=60)
        if done.status_code != 303:
            raise RuntimeError(f"callback answered {done.status_code}")
        self.csrf = self.browser.get(bff + "/auth/user", headers={"X-CSRF": "1"}, timeout=60).json()["csrf_token"]
        # Done with the provider: let go of its connection (a browser would, too, in time).
        self.browser.close()

    def act(self):
        roll = random.random()
        if roll < 0.25:
            self.expect(self.call("GET", "/"), 200, "/")
        elif roll < 0.4:
            self.expect(self.call("GET", "/posts"), 200, "/posts")
        elif roll < 0.5:
            self.expect(self.call("GET", "/account/sessions"), 200, "/account/sessions")
        elif roll < 0.85:
            self.expect(self.call("GET", "/api/demo/notes", headers={"X-CSRF": "1"}), 200, "/api/demo/notes")
        elif roll < 0.95:
            bff = random.choice(self.bffs)
            response = self.call(
                "POST", "/api/demo/notes", bff, json={"text": f"note {uuid.uuid4().hex[:8]}"},
                headers={"X-CSRF": "1", "Origin": bff},
            )
            self.expect(response, 201, "POST /api/demo/notes")
        else:
            self.expect(self.call("GET", "/auth/user", headers={"X-CSRF": "1"}), 200, "/auth/user")

    def expect(self, response, status, what):
        if response is None:
            return
        self.stats.count(response.status_code)
        if response.status_code != status:
            location = response.headers.get("Location", "")
            if "signed-out" in location or "/login" in location or response.status_code == 401:
                self.stats.lost(self.number)
            self.stats.error(f"{what}: {response.status_code} {location or response.text[:80]}")


class Schedule:
    """Everyone signs in, then everyone works until the same deadline."""

    def __init__(self, users: int):
        self.signed_in = threading.Barrier(users + 1)
        self.go = threading.Event()
        self.deadline = 0.0


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.errors = Counter()
        self.statuses = Counter()
        self.lost_users = set()
        self.latencies = []

    def error(self, what):
        with self.lock:
            self.errors[what] += 1

    def lost(self, number):
        with self.lock:
            self.lost_users.add(number)

    def count(self, status):
        with self.lock:
            self.statuses[status] += 1

    def latency(self, path, seconds):
        with self.lock:
            self.latencies.append(seconds)


def bff_settings(database_url: str, issuer: str, upstream: str, **more) -> dict:
    """bench.run's settings, each process told its own public URL, access tokens refreshed LEEWAY s early."""
    return run_settings(
        database_url, public_url="env:MYAPP_PUBLIC_URL", issuer=issuer, upstream=upstream,
        client=(CLIENT_ID, CLIENT_SECRET), key=Fernet.generate_key().decode(),
        **{"myapp.tokens.refresh_leeway": str(LEEWAY)}, **more,
    )


def devstack_args(port: int, bffs: list[str], work: Path, *more: str, lifetime: int = TOKEN_LIFETIME) -> list[str]:
    """The development provider and demo API for a run: access tokens live ``lifetime`` s."""
    redirects = [arg for bff in bffs for arg in ("--redirect-uri", bff + "/auth/callback")]
    return [
        "-m", "myapp.devstack", "--port", str(port), "--threads", "32", "--client-id", CLIENT_ID,
        "--client-secret", CLIENT_SECRET, *redirects, "--set", f"devstack.idp.key_file={work / 'idp-key.json'}",
        "--set", f"devstack.idp.access_token_lifetime={lifetime}s",
        "--set", "devstack.api.leeway=0", *more,
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--duration", type=int, default=60)
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--output", default=str(ROOT / "bench" / "loadtest.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="myapp-loadtest-"))
    ports = {"idp": free_port(), "a": free_port(), "b": free_port()}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    processes = Processes(work)
    stats = Stats()
    with postgres_schema(args.database_url, "myapp_load") as url:
        engine = migrate(url)
        write_ini(work / "load.ini", bff_settings(url, urls["idp"] + "/_dev/idp", urls["idp"] + "/_dev/api"))
        try:
            processes.start("devstack", devstack_args(ports["idp"], [urls["a"], urls["b"]], work))
            for name in ("a", "b"):
                processes.start(name, ["bench/serve.py", "bff", str(work / "load.ini"), str(ports[name])],
                                env={"MYAPP_PUBLIC_URL": urls[name]})
            before = requests.get(urls["idp"] + "/_dev/idp/stats").json()
            schedule = Schedule(args.users)
            started = time.monotonic()
            users = [User(n, [urls["a"], urls["b"]], schedule, stats) for n in range(args.users)]
            for user in users:
                user.start()
            schedule.signed_in.wait()
            signed_in = time.monotonic()
            schedule.deadline = signed_in + args.duration
            schedule.go.set()
            for user in users:
                user.join(timeout=args.duration + 120)
            finished = time.monotonic()
            after = requests.get(urls["idp"] + "/_dev/idp/stats").json()
            with engine.connect() as connection:
                sessions = connection.execute(select(func.count()).select_from(UserSession)).scalar_one()
                stored_refreshes = connection.execute(
                    select(func.coalesce(func.sum(UserSession.token_generation), 0))
                ).scalar_one()
                generations = Counter(connection.execute(select(UserSession.token_generation)).scalars())
        finally:
            processes.stop()
            engine.dispose()

    provider_refreshes = after["refresh_grants"] - before["refresh_grants"]
    requests_made = sum(stats.statuses.values())
    latencies = sorted(stats.latencies)
    # A token is used for (lifetime - leeway) seconds, then refreshed on its session's next call.
    expected = int((finished - signed_in) // (TOKEN_LIFETIME - LEEWAY))
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "users": args.users,
        "duration_s": args.duration,
        "sign_in_phase_s": round(signed_in - started, 1),
        "total_s": round(finished - started, 1),
        "requests": requests_made,
        "requests_per_s": round(requests_made / args.duration, 1),
        "latency_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1) if latencies else None,
        "statuses": dict(stats.statuses),
        "errors": dict(stats.errors),
        "lost_sessions": len(stats.lost_users),
        "sessions": sessions,
        "provider_refreshes": provider_refreshes,
        "refreshes_stored_by_sessions": stored_refreshes,
        "sessions_by_refresh_count": {str(k): v for k, v in sorted(generations.items())},
        "refresh_reuse_detected": after["refresh_reuse_detected"] - before["refresh_reuse_detected"],
        "expected_refreshes_per_session": expected,
    }
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    passed = (
        not stats.errors
        and not stats.lost_users
        and results["refresh_reuse_detected"] == 0
        and provider_refreshes == stored_refreshes
        and set(generations) <= {expected - 1, expected}
    )
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
