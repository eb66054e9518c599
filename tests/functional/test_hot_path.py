"""What the signed-in hot path does not do (issue 17): a proxied call writes nothing, so it takes
no connection from the request pool and opens no transaction there; its one database read is the
session lookup; pages that write nothing (the posts, the dashboard) read outside any transaction
too; on a SQLite file, those reads are kept until the next commit and take no connection at all;
and Pyramid builds no request class per request. A revocation on one process still refuses the
very next call on another (tests/functional/test_many_processes.py keeps that, and
tests/unit/models/test_sqlite.py the kept reads)."""

import contextlib
import threading

import pytest
from pyramid.interfaces import IRequestExtensions
from sqlalchemy import event

from myapp.services import Services
from tests.support.live import api, bff_in_thread, devstack_for, listener, sign_in

pytestmark = pytest.mark.slow


def test_a_proxied_call_reads_once_and_opens_no_transaction(committed_database_url, committed):
    sock, public_url = listener()
    with devstack_for(public_url) as idp, bff_in_thread(committed_database_url, sock, public_url, idp) as (url, app):
        browser = sign_in(url, "alice")
        for _ in range(2):  # warm: activity recorded, pools filled, the read kept on SQLite
            assert api(browser, url + "/api/demo/me").status_code == 200
        database = app.registry[Services].database
        seen = {"request pool": [], "session lookup": []}

        with checkouts(database, seen):
            for _ in range(3):
                assert api(browser, url + "/api/demo/me").status_code == 200
        assert seen["request pool"] == [], "no transaction, no connection from the request pool"
        reads = 0 if database.lookup_engine.dialect.name == "sqlite" else 3
        assert len(seen["session lookup"]) == reads, "one read per call, the session lookup; kept on SQLite"


@pytest.mark.parametrize("path, reads", [("/posts", 2), ("/", 3)])
def test_pages_that_write_nothing_open_no_transaction(committed_database_url, committed, path, reads):
    """The posts page reads the session and the posts; the dashboard the session, the person's
    posts and their live sessions' count (and calls the demo API): none in a transaction. On
    SQLite, each is kept from the page before (the count, asked "now", until a session counted
    would stop being live)."""
    sock, public_url = listener()
    with devstack_for(public_url) as idp, bff_in_thread(committed_database_url, sock, public_url, idp) as (url, app):
        browser = sign_in(url, "alice")
        for _ in range(2):  # warm: activity recorded, pools filled, the reads kept on SQLite
            assert browser.get(url + path).status_code == 200
        database = app.registry[Services].database
        seen = {"request pool": [], "session lookup": []}
        with checkouts(database, seen):
            page = browser.get(url + path)
        assert page.status_code == 200 and "Sign out" in page.text
        assert seen["request pool"] == [], "no ORM session, no transaction for pyramid_tm to commit"
        assert len(seen["session lookup"]) == (0 if database.lookup_engine.dialect.name == "sqlite" else reads)


@contextlib.contextmanager
def checkouts(database, seen: dict):
    """Record in ``seen`` which request threads take a connection from which pool."""

    def counter(name):
        def checkout(*_):
            if threading.current_thread().name != "myapp revoker":
                seen[name].append(threading.current_thread().name)
        return checkout

    listeners = [(database.engine, counter("request pool")), (database.lookup_engine, counter("session lookup"))]
    for engine, listen in listeners:
        event.listen(engine, "checkout", listen)
    try:
        yield
    finally:
        for engine, listen in listeners:
            event.remove(engine, "checkout", listen)


def test_pyramid_builds_no_request_class_per_request(committed_database_url):
    sock, public_url = listener()
    with devstack_for(public_url) as idp, bff_in_thread(committed_database_url, sock, public_url, idp) as (_, app):
        extensions = app.registry.queryUtility(IRequestExtensions)
        # Any request property registered with add_request_method makes Pyramid derive a new
        # class for every request; request.tm is a method of the app's Request class instead.
        assert extensions is None or not extensions.descriptors, dict(extensions.descriptors)
