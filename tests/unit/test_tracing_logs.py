"""A failed trace export's log lines never show what the collector's endpoint holds in its query."""

import logging

import pytest

from myapp import tracing
from myapp.tracing import EXPORT_LOGGERS, HiddenInLogs, hide_in_logs, query_secrets

ENDPOINT = "http://127.0.0.1:9/v1/traces?api_key=OtlpApi%2BKey777&format=json"


@pytest.fixture
def hidden():
    hide_in_logs(query_secrets(ENDPOINT))
    yield
    for name in EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        logger.filters = [f for f in logger.filters if not isinstance(f, HiddenInLogs)]


def test_only_the_values_of_parameters_named_for_secrets_are_hidden():
    assert query_secrets(ENDPOINT) == ("OtlpApi%2BKey777", "OtlpApi+Key777")
    assert query_secrets("http://h/v1/traces") == () and query_secrets("http://h/v1/traces?format=json") == ()


@pytest.mark.parametrize("name", EXPORT_LOGGERS)
def test_a_failed_export_logs_the_endpoint_without_its_key(hidden, caplog, name):
    """The exporter wrote the URL, key and all, at WARNING on every failed export (helper-136)."""
    logger = logging.getLogger(name)
    with caplog.at_level(logging.DEBUG, logger=name):
        logger.warning("Transient error %s encountered while exporting span batch", "url: /v1/traces?api_key=OtlpApi%2BKey777&format=json")
        try:
            raise ConnectionError("Max retries exceeded with url: /v1/traces?api_key=OtlpApi+Key777")
        except ConnectionError:
            logger.exception("Exception while exporting Span.")
    text = caplog.text + "".join(logging.Formatter().format(r) for r in caplog.records)
    assert "Key777" not in text
    assert "api_key=***&format=json" in text and "url: /v1/traces?api_key=***" in text


def test_the_otlp_exporters_endpoint_is_hidden_once_tracing_is_set_up(monkeypatch):
    """setup_tracing hides it before the exporter is made (a second setup replaces the filter)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: None)
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: provider.shutdown())
    monkeypatch.setattr(tracing, "activate", lambda on=True: None)
    monkeypatch.setattr(TracerProvider, "add_span_processor", lambda self, processor: processor.shutdown())
    settings = type("OTel", (), {"enabled": True, "exporter": "otlp", "endpoint": ENDPOINT, "service_name": "t"})
    try:
        tracing.setup_tracing(settings)
        tracing.setup_tracing(settings)
        for name in EXPORT_LOGGERS:
            filters = [f for f in logging.getLogger(name).filters if isinstance(f, HiddenInLogs)]
            assert [f.secrets for f in filters] == [("OtlpApi%2BKey777", "OtlpApi+Key777")]
    finally:
        for name in EXPORT_LOGGERS:
            logger = logging.getLogger(name)
            logger.filters = [f for f in logger.filters if not isinstance(f, HiddenInLogs)]
