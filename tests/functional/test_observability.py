"""The request id and JSON logs (SPEC.md "Observability"): one id per request, answered in
X-Request-ID, sent upstream, stored with audit records and written in every log line."""

import io
import json
import logging

import pytest
from sqlalchemy import select

from myapp.models import AuditEvent
from myapp.observability import RequestContext, configure_logging, json_formatter
from tests.functional.conftest import Browser
from tests.functional.test_proxy import api


def test_every_answer_names_its_request(app):
    first = Browser(app).get("/healthz").headers["X-Request-ID"]
    second = Browser(app).get("/healthz").headers["X-Request-ID"]
    assert len(first) == 32 and first != second


@pytest.mark.parametrize("incoming, kept", [("req-1234abcd", True), ("short", False), ("bad id with spaces", False),
                                             ("x" * 200, False), ("req-1234abcd\n", False)])
def test_a_well_formed_incoming_id_is_kept(app, incoming, kept):
    answered = Browser(app).get("/healthz", headers={"X-Request-ID": incoming}).headers["X-Request-ID"]
    assert (answered == incoming) is kept


def test_the_upstream_and_the_audit_log_get_the_same_id(proxy_app, signed_in, upstream, dbsession):
    browser = signed_in()
    response = api(browser, "GET", "/api/up/x", status=200)
    assert upstream.seen[-1]["headers"]["x-request-id"] == response.headers["X-Request-ID"]
    denied = Browser(proxy_app).get("/auth/callback", params={"state": "forged", "code": "x"}, status=400)
    assert denied.headers["X-Request-ID"]


def test_audit_records_store_the_request_id(browser, sign_in, alice, dbsession):
    sign_in(browser, alice)
    response = browser.submit("/account/sessions/revoke-others", status=303)
    event = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "other_sessions_ended")).one()
    assert event.request_id == response.headers["X-Request-ID"]


def test_json_log_lines_carry_the_request_id(browser):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        configure_logging("json", [handler])
        response = browser.get("/auth/callback", params={"state": "forged", "code": "x"}, status=400)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ours = [line for line in lines if line["logger"] == "myapp.views.auth"]
    assert ours and {line["request_id"] for line in ours} == {response.headers["X-Request-ID"]}
    assert {"time", "level", "logger", "message", "trace_id"} <= set(ours[0])


def test_outside_a_request_the_ids_are_dashes():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    RequestContext().filter(record)
    assert (record.request_id, record.trace_id) == ("-", "-")
    assert json.loads(json_formatter().format(record))["request_id"] == "-"


def test_the_log_format_is_checked():
    from myapp.settings import SettingsError, load_settings
    from tests.conftest import base_settings

    assert load_settings(base_settings("sqlite://", **{"myapp.log.format": "json"})).log_format == "json"
    with pytest.raises(SettingsError, match=r"^myapp.log.format: 'xml' is not one of text, json$"):
        load_settings(base_settings("sqlite://", **{"myapp.log.format": "xml"}))


def test_the_line_of_an_answer_cut_short_names_its_request(make_proxy_app, signed_in):
    """An upstream that breaks off mid-body is noticed while waitress streams the answer, after the
    request's own code has returned: its warning was the one line of a request logged with
    ``request_id`` "-", which no operator could tie to the request that the browser saw fail."""
    import http.client

    from myapp.server import create_server
    from tests.functional.conftest import COOKIE
    from tests.support.servers import canned_http_server, serve

    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n"
           b"Connection: close\r\n\r\n" + b"x" * 70000)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    configure_logging("json", [handler])
    proxy_log = logging.getLogger("myapp.services.proxy")
    proxy_log.addHandler(handler)
    try:
        with canned_http_server(raw) as url:
            app = make_proxy_app(**{"myapp.upstreams": f"raw = {url}\nup = {url}\nreadonly = {url}"})
            cookie = signed_in(app=app).cookies[COOKIE]
            with serve(app, create_server=create_server) as base:
                connection = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
                connection.request("GET", "/api/raw/x", headers={
                    "X-CSRF": "1", "Cookie": f"{COOKIE}={cookie}", "X-Request-ID": "cut-short-0001"})
                response = connection.getresponse()
                with pytest.raises(http.client.IncompleteRead):
                    response.read()
                connection.close()
    finally:
        proxy_log.removeHandler(handler)
    [line] = [json.loads(line) for line in stream.getvalue().splitlines() if "broke off" in line]
    assert line["request_id"] == "cut-short-0001"


def test_json_lines_say_their_time_in_utc_as_iso_8601(monkeypatch):
    """The time was the server's local time without its zone, with a comma before the
    milliseconds ("2026-12-06 16:40:29,472"): lines of processes in two time zones, or of the hour
    a clock goes back, could not be put in order, and log shippers do not read it as a date."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
        record.created, record.msecs = 1796575229.472, 472.0
        RequestContext().filter(record)
        assert json.loads(json_formatter().format(record))["time"] == "2026-12-06T16:40:29.472Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
