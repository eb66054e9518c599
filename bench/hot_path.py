"""CPU per signed-in proxied call, in-process: myapp's ``/api/demo/ping`` (B) against the bare
urllib3 proxy (N), each WSGI app called directly in this thread, the development stack answering in
its own process. Thread CPU time only, so neither the API nor anything else on the machine counts.

    .venv/bin/python bench/hot_path.py [--calls 3000] [--profile] [--database-url URL] [--path /api/demo/ping]
                                       [--anonymous] [--threads 8] [--tracing sampled|unsampled] [--posts 21]
                                       [--notes-from-memory]

Prints the CPU time per call (the best of three interleaved rounds: the machine may be shared) and
the Python function calls per call (which do not depend on what else the machine is doing).
``--profile`` prints cProfile's view of B's calls (timed by thread CPU time) instead.
``--path / --notes-from-memory`` compares the signed-in dashboard with the same page given its API
call's answer from memory (with ``--threads``, from that many threads) instead.
``--posts 21`` writes that many posts first (by the signed-in user), for a page of them (``--path
/posts``: twenty and a link to the next). ``--threads 8`` calls each from that many threads at once, as waitress's threads would, and
reports the process's CPU per call instead (every thread's, and what switching between them costs).
"""

import argparse
import contextlib
import cProfile
import io
import pstats
import resource
import socket
import statistics
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import waitress
from sqlalchemy import insert, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bare_proxy import make_app as bare_proxy  # noqa: E402
from bench.run import (  # noqa: E402
    CLIENT_ID,
    CLIENT_SECRET,
    COOKIE,
    KEY,
    Processes,
    bff_settings,
    free_port,
    migrate,
    postgres_schema,
    sign_in,
    work_directory,
)
from myapp import main as myapp_main  # noqa: E402
from myapp.models import Post, User, UserSession  # noqa: E402
from myapp.services import Services  # noqa: E402
from myapp.services.tokenset import TokenCipher  # noqa: E402


def environ_for(path: str, headers: dict) -> dict:
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "", "REQUEST_URI": path,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "wsgi.errors": sys.stderr, "HTTP_HOST": "127.0.0.1",
        "HTTP_ACCEPT": "*/*", "HTTP_USER_AGENT": "hot-path-bench", "HTTP_ACCEPT_ENCODING": "gzip",
    }
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
    return environ


def call(app, template: dict) -> str:
    environ = dict(template)
    environ["wsgi.input"] = io.BytesIO(b"")
    seen = []
    body = app(environ, lambda status, headers, exc_info=None: seen.append(status))
    try:
        for _ in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return seen[0]


def cpu_per_call(app, template: dict, calls: int, rounds: int = 5) -> tuple[float, float]:
    """The median over ``rounds`` of thread CPU µs per call, and of wall µs per call."""
    for _ in range(200):
        status = call(app, template)
    if not status.startswith("200"):
        raise SystemExit(f"hot_path: the warm-up call answered {status}")
    cpu, wall = [], []
    for _ in range(rounds):
        started_cpu, started_wall = time.thread_time(), time.perf_counter()
        for _ in range(calls // rounds):
            call(app, template)
        cpu.append((time.thread_time() - started_cpu) / (calls // rounds) * 1e6)
        wall.append((time.perf_counter() - started_wall) / (calls // rounds) * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def install_tracing(sampled: bool) -> dict:
    """A tracer provider in this process whose spans are made and then dropped (no exporter to
    wait on): every request sampled, or none (what the other nine of one in ten cost). myapp keeps
    a provider it finds installed (myapp/tracing.py); the settings turn its tracing on."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    class Dropped(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON if sampled else ALWAYS_OFF))
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    trace.set_tracer_provider(provider)
    return {"myapp.otel.enabled": "true", "myapp.otel.exporter": "console"}  # not used: a provider is installed


@contextlib.contextmanager
def signed_in_app(
    path: str = "/api/demo/ping", database_url: str | None = None, anonymous: bool = False, tracing: str = "off",
    posts: int = 0,
):
    """myapp in this process with a signed-in session (and ``posts`` posts of its user's), and the
    bare proxy N, both on the development stack (its own process); yields (B, B's environ, N, N's
    environ)."""
    idp_port = free_port()
    idp = f"http://127.0.0.1:{idp_port}"
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(work_directory("myapp-hot-path-"))
        processes = Processes(work)
        stack.callback(processes.stop)
        database_url = (
            stack.enter_context(postgres_schema(database_url, "myapp_hot_path")) if database_url
            else f"sqlite:///{work / 'hot.sqlite'}"
        )
        engine = migrate(database_url)
        stack.callback(engine.dispose)
        listener = socket.create_server(("127.0.0.1", 0))
        public_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        processes.start("devstack", [
            "-m", "myapp.devstack", "--port", str(idp_port), "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET,
            "--redirect-uri", public_url + "/auth/callback", "--set", "devstack.idp.access_token_lifetime=1h",
        ])
        app = myapp_main({}, **bff_settings(
            database_url, public_url=public_url, issuer=idp + "/_dev/idp", upstream=idp + "/_dev/api",
            client=(CLIENT_ID, CLIENT_SECRET), key=KEY,
            **(install_tracing(sampled=tracing == "sampled") if tracing != "off" else {}),
        ))
        stack.callback(app.registry[Services].close)
        server = waitress.create_server(app, sockets=[listener], threads=4)
        threading.Thread(target=server.run, daemon=True).start()
        stack.callback(server.close)
        browser = sign_in(public_url)
        with engine.connect() as connection:
            token = TokenCipher([KEY]).decrypt(connection.execute(select(UserSession.access_token)).scalar_one())
        write_posts(engine, posts)
        signed_in = environ_for(path, {} if anonymous else {"Cookie": f"{COOKIE}={browser.cookies[COOKIE]}", "X-CSRF": "1"})
        bare = bare_proxy(idp + "/_dev/api/", "urllib3")
        yield app, signed_in, bare, environ_for("/ping", {"Authorization": f"Bearer {token}"})


def write_posts(engine, count: int) -> None:
    """``count`` posts by the one user, a minute apart, each with a title and a paragraph (an excerpt
    on the posts page)."""
    if not count:
        return
    with engine.begin() as connection:
        owner = connection.execute(select(User.id)).scalar_one()
        start = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
        connection.execute(insert(Post), [
            {"owner_id": owner, "title": f"Post {n}: notes on the week & what comes next",
             "body": "A paragraph of text, long enough to be cut short on the posts page. " * 5,
             "created_at": start + timedelta(minutes=n), "updated_at": start + timedelta(minutes=n)}
            for n in range(count)
        ])


def concurrent_cpu_per_call(app, template: dict, threads: int, seconds: float = 4.0) -> tuple[float, float]:
    """Process CPU µs per call while ``threads`` threads call ``app`` for ``seconds``, and the
    threads' voluntary context switches per call: a thread that lets the GIL go (in a driver's
    call, a socket's) waits for it to come back, and with other threads running that is a switch."""
    done, until = [], time.monotonic() + seconds

    def loop():
        calls = 0
        while time.monotonic() < until:
            call(app, template)
            calls += 1
        done.append(calls)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    started, switched = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    calls = sum(done)
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switched
    return (time.process_time() - started) / calls * 1e6, switches / calls


def notes_from_memory(app, signed_in: dict, calls: int, threads: int | None) -> None:
    """The signed-in dashboard as it is, and with the answer of its API call (the notes) kept from
    the first call and given to every call after it, interleaved, the best of three rounds each:
    what the page's call to the demo API costs myapp, the wait for it included (a measurement:
    myapp itself never keeps that answer). ``threads``: from that many threads at once."""
    from myapp.views import home

    fetch, kept = home._upstream_notes, {}

    def remembered(request):
        if "notes" not in kept:
            kept["notes"] = fetch(request)
        return kept["notes"]

    def measure() -> float:
        if threads:
            return concurrent_cpu_per_call(app, signed_in, threads)[0]
        return cpu_per_call(app, signed_in, calls // 3)[0]

    rounds = {"with its API call": [], "its API answer from memory": []}
    try:
        home._upstream_notes = remembered
        call(app, signed_in)  # the answer kept
        if not kept["notes"]["notes_cards"]:
            raise SystemExit("hot_path: the dashboard showed no notes card (myapp.dashboard.upstream unset?)")
        for _ in range(3):
            for name, notes in (("with its API call", fetch), ("its API answer from memory", remembered)):
                home._upstream_notes = notes
                rounds[name].append(measure())
    finally:
        home._upstream_notes = fetch
    kind = f"process CPU per call, {threads} threads at once" if threads else "CPU per call"
    best = {name: min(values) for name, values in rounds.items()}
    for name, cpu in best.items():
        print(f"dashboard, {name}: {cpu:7.0f} us {kind} (best of 3)")
    print(f"the API call costs the page: {best['with its API call'] - best['its API answer from memory']:7.0f} us")


def python_calls(app, template: dict, calls: int = 100) -> int:
    """Function calls per call, as cProfile counts them: unlike CPU time, the same on a busy machine."""
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    for _ in range(calls):
        call(app, template)
    profiler.disable()
    return round(pstats.Stats(profiler).total_calls / calls)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--profile", action="store_true", help="cProfile B's calls (thread CPU time)")
    parser.add_argument("--sort", default="tottime", help="pstats sort key with --profile")
    parser.add_argument("--lines", type=int, default=45)
    parser.add_argument("--path", default="/api/demo/ping", help="what B is asked (a page: /posts)")
    parser.add_argument("--anonymous", action="store_true", help="ask B without the session cookie (the landing page: --path /)")
    parser.add_argument("--database-url", help="PostgreSQL instead of a SQLite file")
    parser.add_argument("--posts", type=int, default=0, help="write this many posts first (a page of them: 21)")
    parser.add_argument("--spin", type=float, help="only call B for this many seconds (for py-spy)")
    parser.add_argument("--threads", type=int, help="call from this many threads at once (process CPU per call)")
    parser.add_argument(
        "--tracing", choices=("off", "sampled", "unsampled"), default="off",
        help="B with tracing on, every request sampled or none (spans made, then dropped)",
    )
    parser.add_argument(
        "--notes-from-memory", action="store_true",
        help="with --path /: the dashboard also with its API call's answer kept from its first call, "
             "interleaved with the real page (what the page costs without its API call)",
    )
    args = parser.parse_args()
    if args.notes_from_memory and (args.path != "/" or args.anonymous):
        parser.error("--notes-from-memory measures the signed-in dashboard: --path / without --anonymous")
    with signed_in_app(args.path, args.database_url, args.anonymous, args.tracing, args.posts) as (
        app, signed_in, bare, bare_call
    ):
        if args.spin:
            until = time.monotonic() + args.spin
            while time.monotonic() < until:
                call(app, signed_in)
            return
        if args.profile:
            cpu_per_call(app, signed_in, 200, rounds=1)
            profiler = cProfile.Profile(time.thread_time)
            profiler.enable()
            for _ in range(args.calls):
                call(app, signed_in)
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.lines)
            print(out.getvalue())
            return
        if args.notes_from_memory:
            notes_from_memory(app, signed_in, args.calls, args.threads)
            return
        if args.threads:
            for template in (signed_in, bare_call):
                call(app if template is signed_in else bare, template)
            b, n = [], []
            for _ in range(3):  # interleaved; the best of three
                b.append(concurrent_cpu_per_call(app, signed_in, args.threads))
                n.append(concurrent_cpu_per_call(bare, bare_call, args.threads))
            (b_cpu, b_switches), (n_cpu, n_switches) = min(b), min(n)
            print(f"{args.threads} threads at once, process CPU per call (best of 3), voluntary context switches per call:")
            print(f"B {args.path}: {b_cpu:7.0f} us, {b_switches:.1f}   N /ping: {n_cpu:7.0f} us, {n_switches:.1f}   "
                  f"B - N: {b_cpu - n_cpu:7.0f} us")
            return
        # Interleaved, so that whatever else the machine does weighs on both alike.
        b, n = [], []
        for _ in range(3):
            b.append(cpu_per_call(app, signed_in, args.calls // 3))
            n.append(cpu_per_call(bare, bare_call, args.calls // 3))
        b_cpu, b_wall = min(b)
        n_cpu, n_wall = min(n)
        b_calls, n_calls = python_calls(app, signed_in), python_calls(bare, bare_call)
        print(f"B {args.path}: {b_cpu:7.0f} us CPU per call ({b_wall:.0f} us wall), {b_calls} Python function calls")
        print(f"N /ping:       {n_cpu:7.0f} us CPU per call ({n_wall:.0f} us wall), {n_calls} Python function calls")
        print(f"B - N:         {b_cpu - n_cpu:7.0f} us CPU per call, {b_calls - n_calls} function calls")


if __name__ == "__main__":
    main()
