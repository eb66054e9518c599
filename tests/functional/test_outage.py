"""The database gone for a moment (issue 15 item 4, and the short fault run): every answer during
the cut is a 503 (`service_unavailable` JSON, a plain page for people), never waitress's bare
500; afterwards everything works again and no session was lost."""


import pytest
import requests
from sqlalchemy.engine import make_url

from tests.conftest import postgresql_url
from tests.support.fault_proxy import FaultProxy
from tests.support.live import api, bff_in_thread, devstack_for, listener, sign_in

pytestmark = pytest.mark.slow


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


def test_connection_lost_during_the_session_lookup_is_503_and_never_handed_out_again(cut_database, committed):
    """The session lookup runs on the driver's cursor: a connection that dies between the pool's
    ping and the query must still be an outage (503, not 500), and be thrown away."""
    from sqlalchemy import event

    from myapp.services import Services

    proxy, database_url = cut_database
    sock, public_url = listener()
    with devstack_for(public_url) as idp, bff_in_thread(database_url, sock, public_url, idp) as (url, app):
        browser = sign_in(url, "alice")
        engine = app.registry[Services].database.engine
        lost = []

        def lose_it(dbapi_connection, record, proxied):
            # After the pool's pre-ping, before the query: as a cut mid-request would.
            if not lost:
                lost.append(dbapi_connection)
                proxy.cut()  # resets every open connection, this one too
                proxy.restore()

        event.listen(engine.pool, "checkout", lose_it)
        try:
            answer = api(browser, url + "/auth/user")
        finally:
            event.remove(engine.pool, "checkout", lose_it)
        assert lost, "the connection was taken away"
        assert answer.status_code == 503, (answer.status_code, answer.text[:200])
        assert answer.json()["error"] == "service_unavailable"
        for _ in range(12):  # more than the pool holds: the dead one is never handed out again
            assert api(browser, url + "/auth/user").json()["sub"] == "alice"
