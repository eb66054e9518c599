"""Spans recorded in memory for a test (the tracer provider is process-wide, so it is set once and
keeps spans only while a test records)."""

import contextlib
from collections.abc import Iterator

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from myapp import tracing


class Recording(SpanExporter):
    """Keeps spans only while a test records."""

    def __init__(self):
        self.recording = False
        self.spans = []

    def export(self, spans):
        if self.recording:
            self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass


_RECORDING = Recording()


@contextlib.contextmanager
def recording_spans() -> Iterator[list]:
    """Tracing on, and the list of the spans ended meanwhile."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_RECORDING))
        trace.set_tracer_provider(provider)
    _RECORDING.spans, _RECORDING.recording = [], True
    tracing.activate()
    try:
        yield _RECORDING.spans
    finally:
        tracing.activate(False)
        _RECORDING.recording = False
