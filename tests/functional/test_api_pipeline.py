"""The short way a proxied call takes (myapp.views.api.api_tween_factory): the same checks and
answers as the whole pipeline, without its transaction. Each refusal here is also one that
test_proxy.py checks on its own; these add the headers every answer carries, and what goes the
whole way round (a denial by the ACL, with its audit record)."""

import pytest
import transaction
from sqlalchemy import select
from webtest import TestRequest

from myapp.models import AuditEvent
from myapp.resources import Root
from myapp.services import Services
from myapp.services.sessions import EndReason
from tests.conftest import TEST_PUBLIC_URL
from tests.functional.conftest import COOKIE, Browser
from tests.functional.test_proxy import api

SITE_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}


@pytest.fixture
def dbsession(committed):
    return committed


@pytest.fixture
def transactions(monkeypatch):
    """How many transactions pyramid_tm (the thread's transaction manager) begins."""
    begun = []
    begin = transaction.manager.begin
    monkeypatch.setattr(transaction.manager, "begin", lambda: begun.append(1) or begin())
    return begun


def assert_site_answer(response):
    for name, value in SITE_HEADERS.items():
        assert response.headers[name] == value, name
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    assert len(response.headers["X-Request-ID"]) == 32


def test_a_proxied_call_begins_no_transaction(signed_in, upstream, transactions):
    browser = signed_in()
    response = api(browser, "GET", "/api/up/items", status=200)
    assert response.json == {"ok": True}
    assert transactions == []
    assert_site_answer(response)
    assert upstream.seen[-1]["headers"]["x-request-id"] == response.headers["X-Request-ID"]
    browser.get("/account/sessions", status=200)  # a page still has its transaction
    assert transactions == [1]


def test_the_incoming_request_id_is_answered_and_sent_on(signed_in, upstream):
    response = api(signed_in(), "GET", "/api/up/items", headers={"X-Request-ID": "edge-1234abcd"}, status=200)
    assert response.headers["X-Request-ID"] == "edge-1234abcd"
    assert upstream.seen[-1]["headers"]["x-request-id"] == "edge-1234abcd"


@pytest.mark.parametrize("headers", [{}, {"X-CSRF": "0"}, {"X-CSRF": "1", "Sec-Fetch-Site": "cross-site"}])
def test_a_call_without_the_csrf_header_is_refused(signed_in, upstream, headers):
    response = signed_in().get("/api/up/items", headers=headers, status=403)
    assert response.json["error"] == "csrf_failed"
    assert_site_answer(response)
    assert upstream.seen == []


def test_a_cross_origin_write_is_refused(signed_in, upstream):
    response = signed_in().post("/api/up/items", b"{}", headers={"X-CSRF": "1", "Origin": "https://evil.example"},
                                status=403)
    assert response.json["error"] == "csrf_failed"
    assert upstream.seen == []


def test_an_ended_session_is_refused_and_its_cookie_cleared(signed_in, upstream, dbsession):
    browser = signed_in()
    signed_in.store.end(browser.session_row, EndReason.REVOKED)
    dbsession.commit()
    response = api(browser, "GET", "/api/up/items", status=401)
    assert response.json["error"] == "login_required"
    assert any(value.startswith(f"{COOKIE}=;") for value in response.headers.getall("Set-Cookie"))
    assert_site_answer(response)
    assert upstream.seen == []


def test_an_anonymous_call_is_refused(proxy_app, upstream):
    response = Browser(proxy_app).get("/api/up/items", headers={"X-CSRF": "1"}, status=401)
    assert response.json["error"] == "login_required"
    assert_site_answer(response)


def test_an_unknown_upstream_is_refused(signed_in, upstream):
    response = api(signed_in(), "GET", "/api/nope/items", status=404)
    assert response.json["error"] == "unknown_upstream"
    assert_site_answer(response)


def test_no_upstream_named_at_all_is_the_usual_404(signed_in, upstream):
    response = api(signed_in(), "GET", "/api/", status=404)
    assert response.json["error"] == "unknown_upstream"
    assert_site_answer(response)


def test_an_unexpected_failure_is_a_json_500(signed_in, upstream, proxy_app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(proxy_app.registry[Services].proxy, "prepare", broken)
    response = api(signed_in(), "GET", "/api/up/items", status=500)
    assert response.json["error"] == "internal_error"
    assert_site_answer(response)


def test_an_outage_during_the_session_lookup_is_a_503(signed_in, upstream, proxy_app, monkeypatch, caplog):
    from sqlalchemy.exc import OperationalError

    browser = signed_in()

    def gone(*args, **kwargs):
        raise OperationalError("SELECT", {}, Exception("the server closed the connection"))

    monkeypatch.setattr(proxy_app.registry[Services].database, "read_row", gone)
    response = api(browser, "GET", "/api/up/items", status=503)
    assert response.json["error"] == "service_unavailable"
    assert response.headers["Retry-After"] == "5"
    assert upstream.seen == []
    # The log says what failed, in the driver's words, without SQLAlchemy's statement and link.
    assert "service unavailable on GET /api/up/items: OperationalError: the server closed the connection" in (
        caplog.messages
    )


def test_a_call_the_acl_denies_goes_the_whole_way_and_is_audited(signed_in, upstream, dbsession, monkeypatch):
    """No route denies a signed-in user today; if the ACL ever does, the refusal is the usual one."""
    monkeypatch.setattr(Root, "__acl__", [])
    browser = signed_in()
    response = api(browser, "GET", "/api/up/items", status=403)
    assert response.json["error"] == "forbidden"
    assert_site_answer(response)
    assert upstream.seen == []
    dbsession.expire_all()
    denials = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "access_denied")).all()
    assert [d.request_id for d in denials] == [response.headers["X-Request-ID"]]


@pytest.mark.parametrize("origin", ["https://evil.example", "null"])
def test_a_cross_origin_call_of_a_method_spec_md_does_not_list_is_refused_and_audited(signed_in, upstream, dbsession,
                                                                                       origin):
    """PROPFIND or MKCOL from another origin was let through the CSRF rule (the Origin was checked
    on POST, PUT, PATCH and DELETE only) and refused only by the method list (405), while the
    refusal's audit took every method but GET, HEAD, OPTIONS and TRACE for one that changes
    something. RFC 9110 section 9.2.1's safe methods are the one list now: any other method has its
    Origin checked (SPEC.md: unsafe methods), before anything else. Found by a black-box review."""
    browser = signed_in()
    browser.lint = False  # WebTest's lint knows no method beyond RFC 9110's

    def call(method, origin):
        request = TestRequest.blank(
            "/api/up/items", method=method, environ=dict(browser.extra_environ), headers={"X-CSRF": "1", "Origin": origin}
        )
        return browser.do_request(request, status="*")

    for method in ("PROPFIND", "MKCOL"):
        response = call(method, origin)
        assert (response.status_int, response.json["error"]) == (403, "csrf_failed")
    dbsession.commit()
    details = dbsession.scalars(select(AuditEvent.detail).where(AuditEvent.event == "access_denied")).all()
    assert sorted(details) == [
        "MKCOL /api/up/items (the Origin header does not match this site)",
        "PROPFIND /api/up/items (the Origin header does not match this site)",
    ]
    # From this site's own origin, the method list refuses it.
    response = call("PROPFIND", TEST_PUBLIC_URL)
    assert (response.status_int, response.json["error"]) == (405, "method_not_allowed")
    assert upstream.seen == []
