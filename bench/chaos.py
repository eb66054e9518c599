"""`make chaos`: faults between two myapp processes and everything they depend on, while simulated
people keep working; nothing may be lost.

Two myapp processes on PostgreSQL with the Redis refresh lock, the development provider (access
tokens live 30 s, refresh tokens rotate) and its demo API. A fault proxy (tests/support/fault_proxy.py)
stands between the processes and each of PostgreSQL, Redis, the provider and the upstream. While
the people sign in once and then browse, call the API and write posts, the faults come in turn,
each followed by a calm: PostgreSQL unreachable 5 s; Redis unreachable 5 s; the provider unreachable
10 s, then slow (3 s per answer) 10 s; the upstream resetting every answer 10 s; and process a
killed with SIGKILL in the middle of a refresh storm, then restarted.

The run fails (exit 1) unless these are all zero: answers 5xx other than SPEC.md's (502
upstream_unavailable, 503 service_unavailable or provider_unavailable, 504 upstream_timeout),
sessions lost (a person asked to sign in again, or whose session ended, without signing out),
refresh-token reuse the provider detected, posts confirmed to their author and missing (or twice)
afterwards. Writes bench/chaos.json and, with matplotlib (`pip install -e .[bench]`), the timeline
chart docs/chaos-timeline.png; docs/reliability.md records a run.
"""

import argparse
import json
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import requests
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadtest import (  # noqa: E402
    LEEWAY,
    Schedule,
    User,
    bff_settings,
    devstack_args,
    postgres_schema,
)
from bench.run import Processes, free_port, migrate, write_ini  # noqa: E402
from myapp.models import Post, UserSession  # noqa: E402
from tests.support.fault_proxy import FaultProxy  # noqa: E402

# What SPEC.md lets a fault answer with: status -> error codes (JSON), or a page for people.
SPEC_FAULT_CODES = {
    502: {"upstream_unavailable"},
    503: {"service_unavailable", "provider_unavailable"},
    504: {"upstream_timeout"},
}
OK, FAULT, BAD_5XX, LOST, UNEXPECTED, UNANSWERED, REROUTED = (
    "ok", "fault answer", "other 5xx", "session lost", "unexpected", "unanswered", "rerouted",
)
CALM = 15  # seconds after each fault, counted as its recovery window
# Access tokens live 15 s and are refreshed 5 s early: every session refreshes about every 10 s,
# so each fault meets refreshes (the longer ones, every session's).
TOKEN_LIFETIME = 15
GRACE = 30  # the provider's reuse interval for rotated refresh tokens (Okta's default grace period)


@dataclass
class Answer:
    at: float
    process: str
    what: str
    status: int | None
    code: str
    outcome: str
    seconds: float


@dataclass
class Fault:
    name: str
    seconds: float
    begin: Callable[[], None]
    end: Callable[[], None]
    started: float = 0.0
    ended: float = 0.0
    notes: dict = field(default_factory=dict)


class Recorder:
    """Every answer the people got, and the posts confirmed to them."""

    def __init__(self, origin: float):
        self.origin = origin
        self.lock = threading.Lock()
        self.answers: list[Answer] = []
        self.lost: dict[int, str] = {}
        self.posts: dict[str, int] = {}  # title -> id the app confirmed

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)

    def lose(self, person: int, why: str) -> None:
        with self.lock:
            self.lost.setdefault(person, why)

    def posted(self, title: str, post_id: int) -> None:
        with self.lock:
            self.posts[title] = post_id


def classify(response: requests.Response, expected: int) -> tuple[str, str]:
    """(outcome, error code or page) of one answer."""
    status = response.status_code
    is_json = response.headers.get("Content-Type", "").startswith("application/json")
    code = ""
    if is_json and status >= 400:
        try:
            code = str(response.json().get("error", ""))
        except ValueError:
            code = "(not JSON)"
    elif status >= 400:
        code = "page" if "text/html" in response.headers.get("Content-Type", "") else "(bare)"
    if status == expected:
        return OK, code
    if status in SPEC_FAULT_CODES and (code in SPEC_FAULT_CODES[status] or code == "page"):
        return FAULT, code
    if status >= 500:
        return BAD_5XX, code
    location = response.headers.get("Location", "")
    if (status == 401 and code == "login_required") or "/login" in location or "signed-out" in location:
        return LOST, code or location
    return UNEXPECTED, code or location


class Person(User):
    """Signs in once, then works on both processes until the deadline, as loadtest.User does,
    and also writes posts; a request to a process that was just killed goes to the other one,
    as a load balancer would send it."""

    def __init__(self, number, bffs, schedule, recorder: Recorder, killed: dict, pids: dict):
        super().__init__(number, list(bffs.values()), schedule, recorder)
        self.pids = pids
        self.names = {url: name for name, url in bffs.items()}
        self.recorder, self.killed = recorder, killed
        self.pending_post: dict | None = None

    def sign_in_failed(self, error: Exception):
        self.recorder.lose(self.number, f"sign-in failed: {type(error).__name__}: {error}")

    def finish(self):
        """A post still waiting is published before leaving (the final check comes later, for all)."""
        while self.pending_post and time.monotonic() < self.schedule.deadline + 30:
            self.write_post()
            time.sleep(1)

    def act(self):
        if self.pending_post:
            return self.write_post()
        roll = random.random()
        if roll < 0.2:
            self.request("GET", "/", 200)
        elif roll < 0.35:
            self.request("GET", "/posts", 200)
        elif roll < 0.75:
            self.request("GET", "/api/demo/notes", 200, headers={"X-CSRF": "1"})
        elif roll < 0.85:
            bff = random.choice(self.bffs)
            self.request("POST", "/api/demo/notes", 201, bff, json={"text": f"note {uuid.uuid4().hex[:8]}"},
                         headers={"X-CSRF": "1", "Origin": bff})
        elif roll < 0.95:
            self.pending_post = {"title": f"chaos {self.number} {uuid.uuid4().hex[:10]}",
                                 "form_token": secrets.token_urlsafe(32)}
            self.write_post()
        else:
            self.request("GET", "/auth/user", 200, headers={"X-CSRF": "1"})

    def write_post(self):
        """Publishes the pending post; after a failure the person presses Publish again later,
        with the same form (its form token makes a second submit harmless)."""
        bff = random.choice(self.bffs)
        form = {**self.pending_post, "body": "written during make chaos", "csrf_token": self.csrf}
        response = self.request("POST", "/posts", 303, bff, data=form, headers={"Origin": bff}, retry=False)
        if response is not None and response.status_code == 303:
            post_id = int(response.headers["Location"].split("?")[0].rsplit("/", 1)[1])
            self.recorder.posted(self.pending_post["title"], post_id)
            self.pending_post = None

    def request(self, method, path, expected, bff=None, retry=True, **kw):
        bff = bff or random.choice(self.bffs)
        process = self.names[bff]
        started = time.monotonic()
        # A request still unanswered after 20 s: the process writes every thread's stack to its log.
        watchdog = threading.Timer(20, self.pids.get(process, lambda: None))
        watchdog.start()
        try:
            response = self.browser.request(method, bff + path, allow_redirects=False, timeout=60, **kw)
        except requests.RequestException as e:
            outcome = REROUTED if self.killed.get(process) else UNANSWERED
            self.record(started, process, method, path, None, type(e).__name__, outcome)
            if outcome == REROUTED and retry:
                other = next(url for url in self.bffs if url != bff)
                if "Origin" in kw.get("headers", {}):
                    kw["headers"] = {**kw["headers"], "Origin": other}
                return self.request(method, path, expected, other, retry=False, **kw)
            return None
        finally:
            watchdog.cancel()
        outcome, code = classify(response, expected)
        self.record(started, process, method, path, response.status_code, code, outcome)
        if outcome == LOST:
            self.recorder.lose(self.number, f"{method} {path}: {response.status_code} {code}")
        return response

    def record(self, started, process, method, path, status, code, outcome):
        what = f"{method} {path if path.startswith('/api') else path.split('?')[0]}"
        self.recorder.add(Answer(started - self.recorder.origin, process, what, status, code, outcome,
                                 time.monotonic() - started))


def wait_for_storm(idp: str, seconds: float = 40.0) -> dict:
    """Waits until the provider grants refreshes quickly (several within 300 ms): a storm. With
    the provider's answers held back, some of those refreshes are still on their way back."""
    deadline = time.monotonic() + seconds
    history = []
    while time.monotonic() < deadline:
        grants = requests.get(idp + "/_dev/idp/stats", timeout=5).json()["refresh_grants"]
        now = time.monotonic()
        history = [(t, g) for t, g in history if now - t <= 0.3] + [(now, grants)]
        if grants - history[0][1] >= 3:
            return {"refreshes_in_the_last_300_ms": grants - history[0][1]}
        time.sleep(0.02)
    return {"refreshes_in_the_last_300_ms": 0, "note": "no storm seen in 40 s; killed anyway"}


def summarise(faults: list[Fault], answers: list[Answer], origin: float) -> list[dict]:
    report = []
    for index, fault in enumerate(faults):
        start, end = fault.started - origin, fault.ended - origin
        until = faults[index + 1].started - origin if index + 1 < len(faults) else float("inf")
        # An answer belongs to the fault it ended in: a request sent just before a fault began
        # and broken by it is that fault's.
        window = [a for a in answers if start <= a.at + a.seconds < until]
        during = [a for a in window if a.at + a.seconds < end]
        after = [a for a in window if a.at + a.seconds >= end]
        not_ok = [a.at + a.seconds for a in after if a.outcome not in (OK, REROUTED)]
        by_status = Counter(f"{a.status or 'no answer'} {a.code}".strip() for a in window)
        report.append({
            "fault": fault.name,
            "seconds": round(end - start, 1),
            "answers": len(window),
            "answers_during_fault": len(during),
            "answers_by_status": dict(by_status.most_common()),
            "outcomes": dict(Counter(a.outcome for a in window)),
            "slowest_answer_s": round(max((a.seconds for a in window), default=0), 2),
            "recovery_s": round(max(not_ok) - end, 2) if not_ok else 0.0,
            "not_ok_after_the_fault": [
                f"+{a.at + a.seconds - end:.2f}s {a.process} {a.what} {a.status or 'no answer'} {a.code} ({a.seconds:.2f} s)"
                for a in after if a.outcome not in (OK, REROUTED)][:8],
            **fault.notes,
        })
    return report


def chart(path: Path, faults: list[Fault], answers: list[Answer], origin: float) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed (pip install -e '.[bench]')"
    buckets = defaultdict(Counter)
    for answer in answers:
        buckets[answer.outcome][int(answer.at)] += 1
    end = int(max((a.at for a in answers), default=0)) + 1
    seconds = list(range(end))
    figure, axes = plt.subplots(figsize=(12, 4.5), dpi=100)
    colours = {OK: "#4c9a2a", FAULT: "#e6a23c", REROUTED: "#8da0cb", BAD_5XX: "#c0392b", LOST: "#6c3483",
               UNEXPECTED: "#34495e", UNANSWERED: "#7f8c8d"}
    bottom = [0] * end
    for outcome, colour in colours.items():
        if outcome not in buckets:
            continue
        values = [buckets[outcome][s] for s in seconds]
        axes.bar(seconds, values, bottom=bottom, width=1.0, color=colour, label=outcome, align="edge")
        bottom = [b + v for b, v in zip(bottom, values)]
    for fault in faults:
        axes.axvspan(fault.started - origin, fault.ended - origin, color="#d0d0d0", alpha=0.5, zorder=0)
        axes.text(fault.started - origin, max(bottom, default=1) * 1.02, fault.name.split(" (")[0],
                  rotation=20, fontsize=7, va="bottom")
    axes.set_xlabel("seconds since the people started working")
    axes.set_ylabel("answers per second")
    axes.set_xlim(0, end)
    axes.legend(loc="lower left", fontsize=8, ncol=4)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--database-url", default=os.environ.get(
        "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--output", default=str(ROOT / "bench" / "chaos.json"))
    parser.add_argument("--chart", default=str(ROOT / "docs" / "chaos-timeline.png"))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every fault's and calm's length")
    parser.add_argument("--only", help="only the faults whose name contains this, e.g. PostgreSQL")
    parser.add_argument("--provider-reuse-interval", type=int, default=GRACE,
                        help="seconds a spent refresh token stays usable at the provider (0: none, as strict as it gets)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="myapp-chaos-"))
    ports = {"idp": free_port(), "a": free_port(), "b": free_port()}
    bffs = {name: f"http://127.0.0.1:{ports[name]}" for name in ("a", "b")}
    database, redis = make_url(args.database_url), make_url(args.redis_url)
    proxies = {
        "postgresql": FaultProxy(database.host or "127.0.0.1", database.port or 5432),
        "redis": FaultProxy(redis.host or "127.0.0.1", redis.port or 6379),
        "provider": FaultProxy("127.0.0.1", ports["idp"]),
        "upstream": FaultProxy("127.0.0.1", ports["idp"]),
    }
    idp_direct = f"http://127.0.0.1:{ports['idp']}"
    issuer = f"http://127.0.0.1:{proxies['provider'].port}/_dev/idp"
    processes = Processes(work)
    killed: dict[str, bool] = {}

    with postgres_schema(args.database_url, "myapp_chaos") as url:
        engine = migrate(url)
        proxied_url = make_url(url).set(host="127.0.0.1", port=proxies["postgresql"].port)
        write_ini(work / "chaos.ini", bff_settings(
            proxied_url.render_as_string(hide_password=False), issuer,
            f"http://127.0.0.1:{proxies['upstream'].port}/_dev/api",
            **{"myapp.lock.backend": "redis",
               "myapp.redis.url": redis.set(host="127.0.0.1", port=proxies["redis"].port).render_as_string(False),
               "myapp.oidc.http_timeout": "5"},
        ))

        def start_bff(name, log=None):
            return processes.start(log or name, ["bench/serve.py", "bff", str(work / "chaos.ini"), str(ports[name])],
                                   env={"MYAPP_PUBLIC_URL": bffs[name]})

        running = {}
        try:
            processes.start("devstack", devstack_args(
                ports["idp"], list(bffs.values()), work, "--issuer", issuer,
                "--set", f"devstack.api.jwks_uri={idp_direct}/_dev/idp/jwks",
                "--set", f"devstack.idp.refresh_token_reuse_interval={args.provider_reuse_interval}",
                lifetime=TOKEN_LIFETIME,
            ))
            for name in bffs:
                running[name] = start_bff(name)

            def kill_a(fault):
                # The provider's answers are held 1 s, so the kill lands while refreshes that the
                # provider has already granted are on their way back to process a.
                proxies["provider"].slow(1)
                fault.notes.update(wait_for_storm(idp_direct))
                time.sleep(0.3)
                killed["a"] = True
                fault.notes["killed_at_s"] = round(time.monotonic() - origin, 2)
                os.kill(running["a"].pid, signal.SIGKILL)
                running["a"].wait()
                proxies["provider"].restore()

            def restart_a():
                running["a"] = start_bff("a", "a-restarted")
                killed["a"] = False

            s = args.scale
            faults = [
                Fault("PostgreSQL unreachable", 5 * s, proxies["postgresql"].cut, proxies["postgresql"].restore),
                Fault("Redis unreachable", 5 * s, proxies["redis"].cut, proxies["redis"].restore),
                Fault("provider unreachable", 10 * s, proxies["provider"].cut, proxies["provider"].restore),
                Fault("provider slow (3 s per answer)", 10 * s, lambda: proxies["provider"].slow(3),
                      proxies["provider"].restore),
                Fault("upstream resetting every answer", 10 * s, proxies["upstream"].reset_answers,
                      proxies["upstream"].restore),
                Fault("process a killed (SIGKILL) in a refresh storm, restarted 3 s later", 3, None, restart_a),
            ]
            faults[-1].begin = lambda: kill_a(faults[-1])
            faults = [fault for fault in faults if not args.only or args.only.lower() in fault.name.lower()]

            schedule = Schedule(args.users)
            origin = time.monotonic()
            recorder = Recorder(origin)
            def dump_stacks(name):
                return lambda: killed.get(name) or os.kill(running[name].pid, signal.SIGUSR1)

            pids = {name: dump_stacks(name) for name in bffs}
            people = [Person(n, bffs, schedule, recorder, killed, pids) for n in range(args.users)]
            for person in people:
                person.start()
            schedule.signed_in.wait()
            before = requests.get(idp_direct + "/_dev/idp/stats", timeout=5).json()
            origin = recorder.origin = time.monotonic()
            schedule.deadline = float("inf")  # until the last fault's calm is over
            schedule.go.set()
            print(f"chaos: {args.users} people at work; logs in {work}", flush=True)

            time.sleep(10 * s)
            for fault in faults:
                print(f"chaos: {fault.name}", flush=True)
                fault.started = time.monotonic()
                fault.begin()
                if fault.notes.get("killed_at_s"):
                    fault.started = origin + fault.notes["killed_at_s"]
                time.sleep(fault.seconds)
                fault.end()
                fault.ended = time.monotonic()
                time.sleep(CALM * s)
            schedule.deadline = time.monotonic()
            for person in people:
                person.join(timeout=120)
            finals = {}
            for person in people:
                if person.csrf is None:
                    continue
                response = person.request("GET", "/auth/user", 200, headers={"X-CSRF": "1"})
                finals[person.number] = response.status_code if response is not None else None
                if finals[person.number] != 200:
                    recorder.lose(person.number, f"final check: {finals[person.number]}")
            after = requests.get(idp_direct + "/_dev/idp/stats", timeout=5).json()
            with engine.connect() as connection:
                ended = Counter(connection.execute(
                    select(UserSession.end_reason).where(UserSession.ended_at.is_not(None))).scalars())
                stored_refreshes = connection.execute(
                    select(func.coalesce(func.sum(UserSession.token_generation), 0))).scalar_one()
                titles = Counter(connection.execute(
                    select(Post.title).where(Post.title.in_(list(recorder.posts)))).scalars()) if recorder.posts else {}
        finally:
            processes.stop()
            for proxy in proxies.values():
                proxy.close()
            engine.dispose()

    answers = sorted(recorder.answers, key=lambda a: a.at)
    outcomes = Counter(a.outcome for a in answers)
    provider_refreshes = after["refresh_grants"] - before["refresh_grants"]
    totals = {
        "other_5xx": outcomes[BAD_5XX],
        "sessions_lost": len(recorder.lost),
        "sessions_ended_in_the_database": sum(ended.values()),
        "refresh_reuse_detected": after["refresh_reuse_detected"] - before["refresh_reuse_detected"],
        "posts_missing": sum(1 for title in recorder.posts if titles.get(title, 0) == 0),
        "posts_written_twice": sum(1 for title in recorder.posts if titles.get(title, 0) > 1),
    }
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "people": args.users,
        "processes": 2,
        "access_token_lifetime_s": TOKEN_LIFETIME,
        "refresh_leeway_s": LEEWAY,
        "provider_reuse_interval_s": args.provider_reuse_interval,
        "duration_s": round(max((a.at for a in answers), default=0), 1),
        "answers": len(answers),
        "outcomes": dict(outcomes.most_common()),
        "latency_p50_ms": round(statistics.median(a.seconds for a in answers) * 1000, 1) if answers else None,
        "faults": summarise(faults, answers, origin),
        "totals_that_must_be_zero": totals,
        "also": {
            "unexpected_answers": outcomes[UNEXPECTED],
            "unanswered_by_a_live_process": outcomes[UNANSWERED],
            "rerouted_from_the_killed_process": outcomes[REROUTED],
            "posts_confirmed": len(recorder.posts),
            "provider_refreshes": provider_refreshes,
            "refreshes_stored_by_sessions": stored_refreshes,
            "refreshes_lost_with_the_killed_process": provider_refreshes - stored_refreshes,
            "rotated_refresh_tokens_used_again_within_the_reuse_interval":
                after["refresh_reuse_in_grace"] - before["refresh_reuse_in_grace"],
            "fault_proxy_connections_reset": {name: proxy.connections_reset for name, proxy in proxies.items()},
            "lost_sessions_why": {str(k): v for k, v in sorted(recorder.lost.items())},
            "unexpected_examples": [f"{a.what} {a.status} {a.code}" for a in answers if a.outcome == UNEXPECTED][:10],
            "other_5xx_examples": [f"{a.what} {a.status} {a.code}" for a in answers if a.outcome == BAD_5XX][:10],
        },
    }
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    results["chart"] = chart(Path(args.chart), faults, answers, origin)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    passed = not any(totals.values()) and not outcomes[UNEXPECTED] and not outcomes[UNANSWERED]
    print("PASS" if passed else "FAIL: " + ", ".join(f"{k} = {v}" for k, v in totals.items() if v))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
