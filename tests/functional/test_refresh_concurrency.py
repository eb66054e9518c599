"""Single-flight refresh, proven against the development provider with reuse detection on: a
second refresh with the same refresh token would be refused and revoke the whole family.

The database is a real one (an SQLite file; PostgreSQL when MYAPP_TEST_DATABASE_URL is set),
shared by one BFF in this process or by two BFF processes.
"""

import threading
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, update

from myapp import main
from myapp.devstack import make_app as make_devstack
from myapp.models import UserSession
from myapp.models.meta import utcnow
from myapp.server import create_server
from myapp.services import Services
from tests.devstack.server import devstack_settings
from tests.support.live import (
    api,
    bff_in_thread,
    bff_processes,
    bff_settings,
    devstack_for,
    free_port,
    listener,
    sign_in,
    write_ini,
)
from tests.support.servers import running_wsgi

CALLERS = 20


def expire_access_tokens(engine):
    with engine.begin() as connection:
        connection.execute(update(UserSession).values(access_token_expires_at=utcnow()))


def provider_stats(devstack_url):
    return requests.get(devstack_url + "/_dev/idp/stats", timeout=10).json()


def call_together(browser, urls):
    """Fire one API call per URL at the same instant, each from its own thread and connection."""
    barrier = threading.Barrier(len(urls))
    results = [None] * len(urls)
    cookies = browser.cookies.get_dict()

    def call(index, url):
        with requests.Session() as session:
            session.cookies.update(cookies)
            barrier.wait()
            response = api(session, url + "/api/demo/me")
            results[index] = (response.status_code, response.json().get("sub"))

    threads = [threading.Thread(target=call, args=(i, u)) for i, u in enumerate(urls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.slow
@pytest.mark.parametrize(
    "devstack, bff, token_type",
    [
        ({}, {}, None),
        # RFC 9449 with the provider and the API demanding nonces: the refresh's proof is made under
        # the session's lock, so twenty callers still cause one refresh, and every call is accepted.
        ({"devstack.idp.dpop_nonce": "true", "devstack.api.dpop_nonce": "true"}, {"myapp.oidc.dpop": "required"}, "DPoP"),
    ],
    ids=["bearer", "dpop-with-nonces"],
)
def test_twenty_threads_share_one_refresh(committed_database_url, committed_engine, committed, devstack, bff, token_type):
    sock, public_url = listener()
    with (
        devstack_for(public_url, **devstack) as idp,
        bff_in_thread(committed_database_url, sock, public_url, idp, **bff) as (url, _),
    ):
        browser = sign_in(url, "alice")
        assert api(browser, url + "/api/demo/me").status_code == 200
        with committed_engine.connect() as connection:
            assert connection.execute(select(UserSession.access_token_type)).scalar_one() == token_type
        expire_access_tokens(committed_engine)
        before = provider_stats(idp)
        results = call_together(browser, [url] * CALLERS)
        after = provider_stats(idp)
    assert results == [(200, "alice")] * CALLERS
    assert after["refresh_grants"] - before["refresh_grants"] == 1
    assert after["refresh_reuse_detected"] == before["refresh_reuse_detected"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("lock_backend", ["database", pytest.param("redis", marks=pytest.mark.redis)])
def test_two_processes_twenty_calls_each_share_one_refresh(committed_database_url, committed_engine, committed, tmp_path, lock_backend):
    overrides = {"myapp.public_url": "env:MYAPP_PUBLIC_URL"}
    if lock_backend == "redis":
        from tests.conftest import redis_url

        overrides.update({"myapp.lock.backend": "redis", "myapp.redis.url": redis_url()})
    dev_sock, dev_url = listener()
    ini = write_ini(
        tmp_path / "app.ini",
        bff_settings(committed_database_url, "unused", dev_url, **overrides),
    )
    ports = [free_port(), free_port()]
    with bff_processes(ini, ports) as (first, second):
        settings = devstack_settings(
            dev_url,
            **{
                "devstack.idp.redirect_uris": f"{first}/auth/callback {second}/auth/callback",
                "devstack.api.leeway": "0",
            },
        )
        with running_wsgi(lambda base: make_devstack(settings), listener=dev_sock) as idp:
            browser = sign_in(first, "alice")
            assert api(browser, second + "/api/demo/me").status_code == 200, "a session made on one is live on all"
            expire_access_tokens(committed_engine)
            before = provider_stats(idp)
            results = call_together(browser, [first, second] * CALLERS)
            after = provider_stats(idp)
    assert results == [(200, "alice")] * (2 * CALLERS)
    assert after["refresh_grants"] - before["refresh_grants"] == 1
    assert after["refresh_reuse_detected"] == 0


def at_once(first, second, names, cookies) -> list[int]:
    """CALLERS calls to each upstream of ``names`` (``/api/<name>/me``), half on each process, all
    let go at once with ``cookies``: their statuses."""
    barrier = threading.Barrier(2 * CALLERS)
    results = []

    def call(url):
        with requests.Session() as session:
            session.cookies.update(cookies)
            barrier.wait()
            results.append(api(session, url).status_code)

    targets = [f"{base}/api/{name}/me" for base in (first, second) for name in names] * (CALLERS // 2)
    threads = [threading.Thread(target=call, args=(url,)) for url in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def two_processes_of_alice(committed_database_url, committed, tmp_path, provider, served_upstream, lock_backend, upstreams):
    """An ini for myapp processes on the committed database with ``upstreams`` (its settings) and
    the ``lock_backend``, Alice committed as a user whose refresh token "rt-1" the provider knows,
    and a store to make her session with: (ini, store, user)."""
    from myapp.models import User
    from myapp.services.sessions import SessionStore
    from myapp.services.tokenset import TokenCipher
    from myapp.settings import load_settings
    from tests.conftest import TEST_KEY, base_settings

    served_upstream.reset()
    overrides = {
        "myapp.public_url": "env:MYAPP_PUBLIC_URL",
        "myapp.environment": "development",
        "myapp.session.cookie_secure": "false",
        "myapp.session.cookie_name": "session",
        "myapp.oidc.issuer": provider.issuer,
        **upstreams,
    }
    if lock_backend == "redis":
        from tests.conftest import redis_url

        overrides.update({"myapp.lock.backend": "redis", "myapp.redis.url": redis_url()})
    settings = base_settings(committed_database_url, **overrides)
    settings["myapp.oidc.client_id"], settings["myapp.oidc.client_secret"] = "myapp-test", provider.client_secret
    ini = write_ini(tmp_path / "app.ini", settings)
    user = User(issuer=provider.issuer, subject="alice", name="Alice", groups=[])
    committed.add(user)
    committed.flush()
    provider.refresh_tokens["rt-1"] = provider.claims()
    store = SessionStore(
        dbsession=committed, cipher=TokenCipher([TEST_KEY]), settings=load_settings({**settings, "myapp.public_url": "http://x"}).session
    )
    return ini, store, user


@pytest.mark.slow
@pytest.mark.parametrize("lock_backend", ["database", pytest.param("redis", marks=pytest.mark.redis)])
def test_two_upstreams_in_two_processes_never_reuse_a_rotated_refresh_token(
    committed_database_url, committed, tmp_path, provider, served_upstream, lock_backend
):
    """SPEC.md "Tokens for each upstream": each upstream has a token of its own, minted with the
    session's one refresh token; a rotating provider that revokes the whole family on reuse sees
    each refresh token exactly once, however the calls to two upstreams land on two processes."""
    from myapp.services.tokenset import TokenSet

    ini, store, user = two_processes_of_alice(committed_database_url, committed, tmp_path, provider, served_upstream, lock_backend, {
        "myapp.upstreams": f"orders = {served_upstream.url}/orders\ngraph = {served_upstream.url}/graph",
        "myapp.upstream.orders.resource": "https://orders.example.test/",
        "myapp.upstream.graph.scope": "https://graph.example.test/.default",
    })
    raw_id, _ = store.create(user=user, tokens=TokenSet(access_token="at-1", refresh_token="rt-1", access_token_expires_at=utcnow()))
    committed.commit()

    with bff_processes(ini, [free_port(), free_port()]) as (first, second):
        browser = requests.Session()
        browser.cookies.set("session", raw_id)
        results = at_once(first, second, ("orders", "graph"), browser.cookies)

    assert results == [200] * (2 * CALLERS)
    assert provider.reuse_detected == 0
    assert len(provider.refresh_uses) == len(set(provider.refresh_uses)) == 2, provider.refresh_uses
    for seen in served_upstream.seen:
        token = seen["headers"]["authorization"].removeprefix("Bearer ")
        expected = "https://orders.example.test/" if seen["path"].startswith("/orders") else "scope:https://graph.example.test/.default"
        assert provider.access_tokens[token]["aud"] == expected


@pytest.mark.slow
@pytest.mark.parametrize("expired", [False, True], ids=["calls", "calls-on-an-expired-token"])
def test_the_development_setup_in_one_process_answers_more_calls_than_it_has_threads(
    committed_database_url, committed_engine, committed, expired
):
    """As development.ini runs it: the provider and the API in the BFF's own process, called over
    HTTP by the BFF itself. On one pool of threads, as many calls at once as threads (each waiting
    for the API, or for a refresh that waits for the provider) left none to answer them, and every
    call waited out its timeout; myapp's server serves /_dev/ on threads of its own."""
    sock, public_url = listener()
    settings = {
        **bff_settings(committed_database_url, public_url, public_url),
        "pyramid.includes": "myapp.devstack",
        "myapp.upstream.demo.timeout": "5",
        **devstack_settings(
            public_url,
            **{"devstack.idp.redirect_uris": f"{public_url}/auth/callback", "devstack.api.leeway": "0"},
        ),
    }
    app = main({}, **settings)
    threads = 2
    try:
        with running_wsgi(lambda base: app, listener=sock, threads=threads, create_server=create_server) as url:
            browser = sign_in(url, "alice")
            if expired:
                expire_access_tokens(committed_engine)
            before = provider_stats(url)
            results = call_together(browser, [url] * (threads * 5))
            after = provider_stats(url)
    finally:
        app.registry[Services].close()
    assert results == [(200, "alice")] * (threads * 5)
    assert after["refresh_grants"] - before["refresh_grants"] == (1 if expired else 0)
    assert after["refresh_reuse_detected"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("lock_backend", ["database", pytest.param("redis", marks=pytest.mark.redis)])
def test_an_exchange_refusing_the_sessions_token_refreshes_it_once_across_two_processes(
    committed_database_url, committed, tmp_path, provider, served_upstream, lock_backend
):
    """An exchange answered invalid_grant refreshes the session's token (its subject) and exchanges
    again, under the session's lock: calls to the exchanged upstream and to another upstream minted
    with the refresh token, at once from two processes, share that one refresh, and the rotating
    provider (reuse detection on) never sees a refresh token twice."""
    from myapp.services.tokenset import TokenSet

    ini, store, user = two_processes_of_alice(committed_database_url, committed, tmp_path, provider, served_upstream, lock_backend, {
        "myapp.upstreams": f"swap = {served_upstream.url}/swap\ngraph = {served_upstream.url}/graph",
        "myapp.upstream.swap.exchange": "true",
        "myapp.upstream.swap.resource": "https://swap.example.test/",
        "myapp.upstream.graph.scope": "https://graph.example.test/.default",
    })
    # "at-1" looks fresh for five minutes, but the provider knows it no more: its exchange is refused.
    raw_id, _ = store.create(user=user, tokens=TokenSet(
        access_token="at-1", refresh_token="rt-1", access_token_expires_at=utcnow() + timedelta(minutes=5)
    ))
    committed.commit()

    with bff_processes(ini, [free_port(), free_port()]) as (first, second):
        results = at_once(first, second, ("swap", "graph"), {"session": raw_id})

    assert results == [200] * (2 * CALLERS)
    assert provider.reuse_detected == 0
    assert len(provider.refresh_uses) == len(set(provider.refresh_uses)), provider.refresh_uses
    grants = [dict(form)["grant_type"] for form in provider.token_forms]
    exchange = "urn:ietf:params:oauth:grant-type:token-exchange"
    # One refused exchange (of "at-1"), one refresh of the session's token, one exchange of it;
    # graph's token once, before or after.
    assert grants.count(exchange) == 2 and grants.count("refresh_token") == 2, grants
    exchanged = [form for form in provider.token_forms if dict(form)["grant_type"] == exchange]
    assert dict(exchanged[0])["subject_token"] == "at-1" and dict(exchanged[1])["subject_token"] != "at-1"
    for seen in served_upstream.seen:
        token = seen["headers"]["authorization"].removeprefix("Bearer ")
        expected = "https://swap.example.test/" if seen["path"].startswith("/swap") else "scope:https://graph.example.test/.default"
        assert provider.access_tokens[token]["aud"] == expected
