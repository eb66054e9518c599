"""The database gone for a moment (issue 15 item 4, and the short fault run): every answer during
the cut is a 503 (`service_unavailable` JSON, a plain page for people), never waitress's bare
500; afterwards everything works again and no session was lost."""

import contextlib

import pytest
import requests
from sqlalchemy import event
from sqlalchemy.engine import make_url

from myapp.services import Services
from tests.conftest import postgresql_url
from tests.support.fault_proxy import FaultProxy
from tests.support.live import api, bff_in_thread, devstack_for, listener, sign_in

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
