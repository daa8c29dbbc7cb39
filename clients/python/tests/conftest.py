"""Shared fixtures: a real OpenTelemetry SDK tracer provider with the kit's processor installed,
exporting to memory so tests can read the finished spans' attributes."""

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from crosstalk_instrument import CrosstalkSpanProcessor


class Spans:
    def __init__(self):
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(CrosstalkSpanProcessor())
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def finished(self):
        return {s.name: dict(s.attributes or {}) for s in self.exporter.get_finished_spans()}


@pytest.fixture
def spans():
    s = Spans()
    yield s
    s.provider.shutdown()
