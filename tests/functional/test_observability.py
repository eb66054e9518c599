"""The request id and JSON logs (SPEC.md "Observability"): one id per request, answered in
X-Request-ID, sent upstream, stored with audit records and written in every log line."""

import gc
import io
import json
import logging
import logging.handlers
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref
from pathlib import Path

import pytest
from sqlalchemy import select

from myapp.models import AuditEvent
from myapp.observability import (
    RequestContext,
    configure_logging,
    json_formatter,
    log_thread_exception,
    log_uncaught_exception,
    log_unraisable_exception,
)
from tests.functional.conftest import Browser
from tests.functional.test_proxy import api

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def hooks_put_back(monkeypatch):
    """Whatever hooks a json log set in a test are the test's alone: the next one starts from these."""
    for module, name in ((threading, "excepthook"), (sys, "excepthook"), (sys, "unraisablehook"),
                         (logging.Handler, "handleError")):
        monkeypatch.setattr(module, name, getattr(module, name))


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


def test_in_json_a_warning_and_an_exception_a_thread_did_not_catch_are_json_lines(monkeypatch, capfd):
    """Both were text on standard error, a traceback several lines long, in the middle of the JSON
    lines a log shipper reads."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    python_hooks(monkeypatch)  # Python's own: no test runner's
    # An app made in json by an earlier test left logging's own record that it captures warnings,
    # though the test runner put its way of showing them back since: start from neither.
    logging.captureWarnings(False)

    def fails():
        raise RuntimeError("the revoker went wrong")

    try:
        configure_logging("json", [handler])
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("an old way of doing it", UserWarning)
        worker = threading.Thread(target=fails, name="myapp revoker")
        worker.start()
        worker.join()
    finally:
        root.removeHandler(handler)
        logging.captureWarnings(False)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]  # every line is JSON
    [warned] = [line for line in lines if line["logger"] == "py.warnings"]
    assert "UserWarning: an old way of doing it" in warned["message"] and warned["level"] == "WARNING"
    [crashed] = [line for line in lines if line["message"] == "uncaught exception in thread myapp revoker"]
    assert crashed["level"] == "ERROR" and crashed["logger"] == "myapp"
    assert "RuntimeError: the revoker went wrong" in crashed["exc_info"]
    assert capfd.readouterr().err == ""  # not written to standard error as well


def test_a_thread_whose_exception_the_log_cannot_take_still_tells_it(monkeypatch, capfd):
    class Refuses(logging.Filter):
        def filter(self, record):
            raise ValueError("a filter that fails")

    monkeypatch.setattr(threading, "excepthook", log_thread_exception)
    logger = logging.getLogger("myapp")
    refuses = Refuses()
    logger.addFilter(refuses)
    try:
        worker = threading.Thread(target=lambda: 1 / 0, name="myapp worker")
        worker.start()
        worker.join()
    finally:
        logger.removeFilter(refuses)
    assert "ZeroDivisionError" in capfd.readouterr().err  # Python's own telling of it


def test_in_json_an_exception_ending_the_main_thread_and_an_unraisable_one_are_json_lines():
    """A process whose log is JSON, where a finalizer raises (Python can only tell it) and then
    the main thread ends by an exception: every line on standard error is JSON, each with its
    traceback, and nothing else is written there."""
    script = textwrap.dedent("""
        import logging
        from myapp.observability import configure_logging

        logging.basicConfig()
        configure_logging("json")

        class Finalized:
            def __del__(self):
                raise ValueError("closed twice")

        Finalized()
        raise RuntimeError("the settings went wrong")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1 and done.stdout == ""
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    unraisable, uncaught = lines
    assert unraisable["level"] == "ERROR" and unraisable["logger"] == "myapp"
    assert unraisable["message"].startswith("Exception ignored in: <function Finalized.__del__")  # as Python names it
    assert "ValueError: closed twice" in unraisable["exc_info"]
    assert uncaught["level"] == "CRITICAL" and uncaught["message"] == "uncaught exception"
    assert "RuntimeError: the settings went wrong" in uncaught["exc_info"]


def test_ctrl_c_and_an_exception_the_log_cannot_take_are_told_by_python(monkeypatch, capfd):
    class Refuses(logging.Filter):
        def filter(self, record):
            raise ValueError("a filter that fails")

    class Finalized:
        def __del__(self):
            raise ZeroDivisionError("in a finalizer")

    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        log_uncaught_exception(KeyboardInterrupt, e, e.__traceback__)
    assert "KeyboardInterrupt" in capfd.readouterr().err  # as at a terminal
    logger = logging.getLogger("myapp")
    refuses = Refuses()
    logger.addFilter(refuses)
    monkeypatch.setattr(sys, "unraisablehook", log_unraisable_exception)
    try:
        try:
            1 / 0
        except ZeroDivisionError as e:
            log_uncaught_exception(ZeroDivisionError, e, e.__traceback__)
        Finalized()
    finally:
        logger.removeFilter(refuses)
    told = capfd.readouterr().err
    assert "ZeroDivisionError: division by zero" in told  # Python's own telling of each
    assert "ZeroDivisionError: in a finalizer" in told


@pytest.mark.parametrize("reported", [True, False], ids=["logging reports its error", "logging is silent"])
def test_what_a_handler_fails_to_write_python_still_tells(monkeypatch, capfd, reported):
    """A handler that cannot write (a full disk) does not raise: logging reports the failure itself
    (or, raiseExceptions off, says nothing) and the exception would go untold."""
    class FullDisk(logging.Handler):
        def emit(self, record):  # as logging's own handlers fail: handleError, nothing raised
            try:
                raise OSError(28, "No space left on device")
            except OSError:
                self.handleError(record)

    python_hooks(monkeypatch)
    monkeypatch.setattr(logging, "raiseExceptions", reported)
    full = FullDisk()
    root = logging.getLogger()
    root.addHandler(full)
    try:
        configure_logging("json", [full])
        for hook in (sys.excepthook, threading.excepthook):
            assert hook in (log_uncaught_exception, log_thread_exception)
        try:
            raise RuntimeError("the settings went wrong")
        except RuntimeError as e:
            error = e
        sys.excepthook(RuntimeError, error, error.__traceback__)  # as Python calls it: outside any except
        worker = threading.Thread(target=lambda: 1 / 0, name="myapp worker")
        worker.start()
        worker.join()
    finally:
        root.removeHandler(full)
        logging.captureWarnings(False)
    told = capfd.readouterr().err
    assert "RuntimeError: the settings went wrong" in told and "ZeroDivisionError" in told
    assert ("--- Logging error ---" in told) is reported


def test_an_object_whose_finalizer_raised_is_not_kept_alive_by_a_kept_record(monkeypatch):
    """The record's traceback holds the finalizer's frame, and the frame the object: a handler that
    keeps records (a MemoryHandler) kept the object with them."""
    class Finalized:
        def __del__(self):
            raise ValueError("closed twice")

    kept = logging.handlers.MemoryHandler(capacity=100, flushLevel=logging.CRITICAL + 1)
    logger = logging.getLogger("myapp")
    logger.addHandler(kept)
    monkeypatch.setattr(sys, "unraisablehook", log_unraisable_exception)
    try:
        finalized = Finalized()
        alive = weakref.ref(finalized)
        del finalized
        gc.collect()
        assert alive() is None
        [record] = kept.buffer
        assert record.getMessage().startswith("Exception ignored in: <function") and record.exc_info[0] is ValueError
    finally:
        logger.removeHandler(kept)
        kept.buffer.clear()


def test_in_json_without_a_handler_warnings_are_left_to_python(monkeypatch):
    """A warning given to a log with nowhere to write would be lost, not shown."""
    logging.captureWarnings(False)
    shown = warnings.showwarning
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    python_hooks(monkeypatch)
    configure_logging("json", [])
    assert warnings.showwarning is shown and threading.excepthook is threading.__excepthook__
    assert sys.excepthook is sys.__excepthook__ and sys.unraisablehook is sys.__unraisablehook__


def test_a_thread_leaving_by_system_exit_logs_nothing(caplog):
    try:
        raise SystemExit(0)
    except SystemExit as e:
        args = threading.ExceptHookArgs((SystemExit, e, e.__traceback__, threading.current_thread()))
    with caplog.at_level(logging.DEBUG):
        log_thread_exception(args)
    assert caplog.records == []


def python_hooks(monkeypatch):
    """Python's own hooks, not a test runner's (pytest sets sys.unraisablehook around each test)."""
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)


def test_the_hooks_are_left_alone_in_text_and_when_something_else_set_them(monkeypatch):
    logging.captureWarnings(False)
    shown = warnings.showwarning
    python_hooks(monkeypatch)
    configure_logging("text", [logging.NullHandler()])
    assert threading.excepthook is threading.__excepthook__ and warnings.showwarning is shown
    assert sys.excepthook is sys.__excepthook__ and sys.unraisablehook is sys.__unraisablehook__

    def theirs(*args):
        pass

    for module, name in ((threading, "excepthook"), (sys, "excepthook"), (sys, "unraisablehook")):
        monkeypatch.setattr(module, name, theirs)
    try:
        configure_logging("json", [logging.NullHandler()])
    finally:
        logging.captureWarnings(False)
    assert threading.excepthook is theirs and sys.excepthook is theirs and sys.unraisablehook is theirs
    python_hooks(monkeypatch)
    try:
        configure_logging("json", [logging.NullHandler()])
    finally:
        logging.captureWarnings(False)
    assert sys.excepthook is log_uncaught_exception and sys.unraisablehook is log_unraisable_exception


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
