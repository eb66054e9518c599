"""The database gone for a moment (issue 15 item 4, and the short fault run): every answer during
the cut is a 503 (`service_unavailable` JSON, a plain page for people), never waitress's bare
500; afterwards everything works again and no session was lost."""

import concurrent.futures
import contextlib
import threading
import time

import pytest
import requests
from sqlalchemy import event, select
from sqlalchemy.engine import make_url

import myapp.models
import myapp.server
from myapp import main, make_app
from myapp.models import Database, Post
from myapp.services import Services
from tests.conftest import postgresql_url
from tests.support.fault_proxy import FaultProxy
from tests.support.live import api, bff_in_thread, bff_settings, devstack_for, listener, sign_in
from tests.support.servers import running_wsgi

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def cut_at_checkout(app, proxy: FaultProxy, nth: int, *, restore: bool):
    """Cut every database connection when the session lookup's pool hands out its ``nth``
    connection from here on (that one too); restored at once with ``restore``, else on leaving.
    Yields the DBAPI connections handed out, in order."""
    engine = app.registry[Services].database.lookup_engine
    handed_out = []

    def cut(dbapi_connection, record, proxied):
        handed_out.append(dbapi_connection)
        if len(handed_out) == nth:
            proxy.cut()  # resets every open connection, this one too
            if restore:
                proxy.restore()

    event.listen(engine, "checkout", cut)
    try:
        yield handed_out
    finally:
        event.remove(engine, "checkout", cut)
        proxy.restore()


@pytest.fixture
def cut_database(committed_database_url):
    if not committed_database_url.startswith("postgresql"):
        pytest.skip("the cut is made on PostgreSQL's TCP connection")
    postgresql_url()
    url = make_url(committed_database_url)
    proxy = FaultProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield proxy, url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    finally:
        proxy.close()


def test_postgresql_unreachable_is_503_then_nothing_lost(cut_database, committed):
    proxy, database_url = cut_database
    sock, public_url = listener()
    with devstack_for(public_url) as idp, bff_in_thread(database_url, sock, public_url, idp) as (url, _):
        browser = sign_in(url, "alice")
        assert api(browser, url + "/auth/user").json()["sub"] == "alice"
        proxy.cut()
        answers = [
            api(browser, url + "/auth/user"),
            api(browser, url + "/api/demo/me"),
            browser.get(url + "/posts", allow_redirects=False),
            browser.get(url + "/", allow_redirects=False),
            requests.get(url + "/readyz", timeout=10),
        ]
        assert [a.status_code for a in answers] == [503] * 5, [(a.status_code, a.text[:120]) for a in answers]
        assert answers[0].json()["error"] == answers[1].json()["error"] == "service_unavailable"
        assert "Briefly unavailable" in answers[2].text and answers[2].headers["Retry-After"] == "5"
        proxy.restore()
        assert api(browser, url + "/auth/user").json()["sub"] == "alice", "the session outlived the cut"
        assert browser.get(url + "/posts").status_code == 200
        assert requests.get(url + "/readyz", timeout=10).status_code == 200


def test_connection_lost_during_the_session_lookup_is_retried_on_a_new_one(cut_database, committed):
    """The session lookup runs on the driver's cursor without a ping first: a connection that died
    (PostgreSQL restarted, or a cut mid-request) is thrown away and the lookup tried once more on
    a new connection. Never a 500, never the dead connection again."""
    proxy, database_url = cut_database
    sock, public_url = listener()
    with devstack_for(public_url) as idp, bff_in_thread(database_url, sock, public_url, idp) as (url, app):
        browser = sign_in(url, "alice")
        with cut_at_checkout(app, proxy, 1, restore=True) as handed_out:
            answer = api(browser, url + "/auth/user")
            for _ in range(12):  # more than the pool holds
                assert api(browser, url + "/auth/user").json()["sub"] == "alice"
        assert answer.status_code == 200, (answer.status_code, answer.text[:200])
        assert answer.json()["sub"] == "alice"
        dead = handed_out[0]
        assert dead.closed and dead not in handed_out[1:], "the dead connection was never handed out again"


def test_connection_lost_during_a_page_read_is_retried_on_a_new_one(cut_database, committed):
    """What a page that writes nothing shows is read on the lookup pool too (Database.read_all):
    a connection that died under it is thrown away and the read tried once more."""
    proxy, database_url = cut_database
    sock, public_url = listener()
    with devstack_for(public_url) as idp, bff_in_thread(database_url, sock, public_url, idp) as (url, app):
        browser = sign_in(url, "alice")
        assert browser.get(url + "/posts").status_code == 200
        # The first checkout is the session lookup, the second the posts.
        with cut_at_checkout(app, proxy, 2, restore=True) as handed_out:
            page = browser.get(url + "/posts")
        assert page.status_code == 200, (page.status_code, page.text[:200])
        assert "Posts" in page.text and "Sign out" in page.text
        assert handed_out[1].closed and handed_out[1] not in handed_out[2:]


def test_database_gone_between_the_session_lookup_and_a_page_read_is_503(cut_database, committed):
    """The session was read, then the database went away before the posts were: the page says it
    is briefly unavailable (503), never a 500, and works again once the database is back."""
    proxy, database_url = cut_database
    sock, public_url = listener()
    with devstack_for(public_url) as idp, bff_in_thread(database_url, sock, public_url, idp) as (url, app):
        browser = sign_in(url, "alice")
        assert browser.get(url + "/posts").status_code == 200
        # Not restored until the page answered: the retry finds no database either.
        with cut_at_checkout(app, proxy, 2, restore=False):
            page = browser.get(url + "/posts", allow_redirects=False)
        assert page.status_code == 503, (page.status_code, page.text[:200])
        assert "Briefly unavailable" in page.text and page.headers["Retry-After"] == "5"
        assert browser.get(url + "/posts").status_code == 200


def test_a_connection_another_request_holds_when_one_is_found_dead_goes_back_to_the_pool(cut_database, committed):
    """The connections made before one found dead died with it. One that another request held at
    that moment used to go back to a pool thrown away whole (``Engine.dispose``), where nothing
    but the garbage collector closed it (psycopg warns of that). It now goes back to the pool,
    which closes it like any other."""
    proxy, database_url = cut_database
    sock, public_url = listener()
    with devstack_for(public_url) as idp, bff_in_thread(database_url, sock, public_url, idp) as (url, app):
        browser = sign_in(url, "alice")
        engine = app.registry[Services].database.lookup_engine
        held = engine.raw_connection()  # another request's, during the cut
        dbapi_connection = held.dbapi_connection
        with cut_at_checkout(app, proxy, 1, restore=True):
            assert api(browser, url + "/auth/user").json()["sub"] == "alice"
        held.close()
        engine.dispose()  # closes what the pool holds
        assert dbapi_connection.closed


@contextlib.contextmanager
def served(app, sock, threads: int):
    """``app`` served as production serves it (myapp.server), on ``threads`` threads."""
    try:
        with running_wsgi(lambda base: app, listener=sock, threads=threads, create_server=myapp.server.create_server) as url:
            yield url
    finally:
        app.registry[Services].close()


@contextlib.contextmanager
def alice_on_four_threads(database_url: str, *, database: Database | None = None):
    """Alice signed in at the app served as production serves it, on 4 threads (few, so that a
    hang takes them all): (its URL, her browser). ``database``: the app's, with bounds of the test's."""
    sock, public_url = listener()
    with devstack_for(public_url) as idp:
        settings = bff_settings(database_url, public_url, idp)
        app = main({}, **settings) if database is None else make_app(settings, database=database)
        with served(app, sock, threads=4) as url:
            yield url, sign_in(url, "alice")


def timed(call):
    started = time.monotonic()
    try:
        answer = call()
    except requests.RequestException as e:
        answer = e
    return answer, time.monotonic() - started


@pytest.fixture
def hanging_database(cut_database):
    """PostgreSQL behind the fault proxy, whose new connections give up after 2 s (libpq's least)."""
    proxy, database_url = cut_database
    return proxy, make_url(database_url).update_query_dict({"connect_timeout": "2"}).render_as_string(hide_password=False)


def test_a_database_that_answers_nothing_is_503_within_the_bound_and_healthz_still_answers(
    hanging_database, committed, monkeypatch
):
    """PostgreSQL takes every request and answers nothing (a server hung, a network gone quiet):
    every request that needs it answers 503 within the session lookup's bound, a few threads are
    enough for /healthz to answer meanwhile, and once the database answers again the next requests
    succeed, the session intact. Before, each such request held its thread for as long as the
    database stayed silent, and after a handful nothing answered at all, /healthz included."""
    proxy, database_url = hanging_database
    monkeypatch.setattr(myapp.models, "LOOKUP_WITHIN", 1.0, raising=False)
    with alice_on_four_threads(database_url) as (url, browser):
        assert api(browser, url + "/auth/user").json()["sub"] == "alice"
        proxy.hang()
        calls = [
            lambda: api(browser, url + "/auth/user", timeout=20),
            lambda: api(browser, url + "/api/demo/me", timeout=20),
            lambda: browser.get(url + "/posts", allow_redirects=False, timeout=20),
            lambda: browser.get(url + "/", allow_redirects=False, timeout=20),
        ] * 2
        with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
            answers = [pool.submit(timed, call) for call in calls]
            time.sleep(0.3)  # every thread is waiting for the database by now
            health, health_took = timed(lambda: requests.get(url + "/healthz", timeout=20))
            answers = [future.result() for future in answers]
        statuses = [getattr(answer, "status_code", repr(answer)) for answer, _ in answers]
        assert statuses == [503] * len(calls), statuses
        # Each within its bound (1 s for the lookup, 2 s for a new connection), on 4 threads for 8
        # calls; a hung one would wait out its 20 s timeout. Room for a busy machine.
        assert max(took for _, took in answers) < 14, [round(took, 1) for _, took in answers]
        assert {answers[0][0].json()["error"], answers[1][0].json()["error"]} == {"service_unavailable"}
        assert "Briefly unavailable" in answers[2][0].text and answers[2][0].headers["Retry-After"] == "5"
        assert getattr(health, "status_code", health) == 200 and health_took < 5, (health, health_took)
        proxy.restore()
        assert api(browser, url + "/auth/user").json()["sub"] == "alice", "the session outlived the hang"
        assert browser.get(url + "/posts").status_code == 200
        assert requests.get(url + "/readyz", timeout=10).status_code == 200


def test_a_write_the_database_never_answers_is_503_within_the_bound_and_writes_nothing(hanging_database, committed):
    """The session was read, then the database stopped answering while the post was written: the
    page is a 503 within the request pool's bound, the post is not there, and publishing again
    once the database answers writes it once."""
    proxy, database_url = hanging_database
    database = Database.from_url(database_url, within=2.0, lookup_within=1.0)
    with alice_on_four_threads(database_url, database=database) as (url, browser):
        csrf = api(browser, url + "/auth/user").json()["csrf_token"]
        form = {"title": "written in a hang", "body": "b", "csrf_token": csrf, "form_token": "f" * 43}

        def hang(*_):
            proxy.hang()  # once the request's connection is handed out: its INSERT waits

        event.listen(database.engine, "checkout", hang)
        try:
            page, took = timed(lambda: browser.post(
                url + "/posts", data=form, headers={"Origin": url}, allow_redirects=False, timeout=20
            ))
        finally:
            event.remove(database.engine, "checkout", hang)
        assert getattr(page, "status_code", page) == 503, getattr(page, "text", page)[:200]
        assert "Briefly unavailable" in page.text and took < 12, took  # bound 2 s; hung: 20 s
        proxy.restore()
        again = browser.post(url + "/posts", data=form, headers={"Origin": url}, allow_redirects=False)
        assert again.status_code == 303, again.text[:200]
    titles = committed.scalars(select(Post.title)).all()
    assert titles == ["written in a hang"], titles


def test_a_sign_in_started_while_the_database_answers_nothing_is_503_within_the_ping_s_bound(
    hanging_database, committed, monkeypatch
):
    """A sign-in start (/login, no session) looks nothing up: its first database work is on the
    request pool, which pings the idle connection it hands out. That ping waited the request pool's
    bound, 30 s with the default http_timeout (room for a session row a refresh holds, which a ping
    never waits for), then a new connection's; it now waits the lookup's bound, and no new
    connection is tried after it."""
    proxy, database_url = hanging_database
    monkeypatch.setattr(myapp.models, "LOOKUP_WITHIN", 1.0, raising=False)
    with alice_on_four_threads(database_url) as (url, _):
        assert requests.get(url + "/login", allow_redirects=False, timeout=10).status_code == 303
        proxy.hang()
        page, took = timed(lambda: requests.get(url + "/login", allow_redirects=False, timeout=60))
        assert getattr(page, "status_code", page) == 503, getattr(page, "text", page)[:200]
        assert "Briefly unavailable" in page.text and page.headers["Retry-After"] == "5"
        # The ping's 1 s; before, 30 s and a new connection's 2 s. Room for a busy machine.
        assert took < 14, f"{took:.1f} s"
        proxy.restore()
        assert requests.get(url + "/login", allow_redirects=False, timeout=10).status_code == 303


def test_the_page_about_a_database_that_answers_nothing_does_not_wait_for_it_again(hanging_database, committed, monkeypatch):
    """The session lookup waited out its bound; the 503 page for people used to look the session
    up again (to show who is signed in) and wait as long once more, on a new connection."""
    proxy, database_url = hanging_database
    monkeypatch.setattr(myapp.models, "LOOKUP_WITHIN", 2.0, raising=False)
    with alice_on_four_threads(database_url) as (url, browser):
        assert browser.get(url + "/posts").status_code == 200
        proxy.hang()
        page, took = timed(lambda: browser.get(url + "/posts", allow_redirects=False, timeout=20))
        assert getattr(page, "status_code", page) == 503
        assert "Briefly unavailable" in page.text
        assert took < 3.5, f"{took:.1f} s for a bound of 2 s (twice it: 4 s)"
        proxy.restore()
        assert "Sign out" in browser.get(url + "/posts").text


def test_healthz_answers_a_browser_with_a_session_cookie_while_the_database_answers_nothing(hanging_database, committed):
    """/healthz and /readyz render JSON; the templates' globals (who is signed in, for a page's
    header) were looked up for them too, so a liveness probe that carried a session cookie waited
    for the database."""
    proxy, database_url = hanging_database
    with alice_on_four_threads(database_url) as (url, browser):
        proxy.hang()
        health, took = timed(lambda: browser.get(url + "/healthz", timeout=20))
        assert getattr(health, "status_code", health) == 200 and took < 3, (health, took)  # the lookup: 5 s
        ready, took = timed(lambda: browser.get(url + "/readyz", timeout=20))
        assert getattr(ready, "status_code", ready) == 503 and took < 8, (ready, took)  # 5 s; twice: 10 s
        proxy.restore()
        assert requests.get(url + "/readyz", timeout=10).status_code == 200
        # The check that waited goes on in its own thread until the answers held for it arrive.
        deadline = time.monotonic() + 10
        while any(t.name == "myapp readyz" for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.05)

