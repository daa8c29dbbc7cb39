"""EventLog: bounded, never blocking, drops and sink failures counted; both sinks write
crosstalk's event fields."""

import json
import threading

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from crosstalk_instrument import DeliveryEvent, EventLog, FileSink, OtlpLogSink


def event(user="alice", conn_user="bob", **kw):
    return DeliveryEvent(
        event="agent_thinking",
        user_id=user,
        connection_id="c-1",
        connection_user_id=conn_user,
        run_id="r-1",
        **kw,
    )


class ListSink:
    def __init__(self):
        self.events = []
        self.closed = False

    def write(self, events):
        self.events.extend(events)

    def close(self):
        self.closed = True


class BlockedSink(ListSink):
    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, events):
        self.entered.set()
        self.release.wait(10)
        super().write(events)


class BrokenSink(ListSink):
    def write(self, events):
        raise OSError("disk full")


def test_recorded_events_reach_the_sink_and_close_closes_it():
    sink = ListSink()
    log = EventLog(sink)
    for _ in range(10):
        assert log.record(event())
    assert log.flush()
    assert len(sink.events) == 10
    log.close()
    assert sink.closed
    assert log.record(event()) is False, "after close events are dropped, counted"
    assert log.stats() == {"recorded": 10, "written": 10, "dropped": 1, "failed": 0}


def test_a_full_queue_drops_and_counts_instead_of_blocking():
    sink = BlockedSink()
    log = EventLog(sink, capacity=3)
    log.record(event())
    assert sink.entered.wait(5)  # the writer holds one batch, the queue is empty again
    results = [log.record(event()) for _ in range(10)]  # would hang here if record blocked
    assert results == [True] * 3 + [False] * 7
    assert log.stats()["dropped"] == 7
    sink.release.set()
    assert log.flush()
    assert log.stats()["written"] == 4
    log.close()


def test_a_failing_sink_is_counted_and_the_log_goes_on():
    log = EventLog(BrokenSink())
    log.record(event())
    assert log.flush()
    assert log.stats()["failed"] == 1
    assert log.record(event())
    log.close()


def test_file_sink_writes_crosstalk_event_lines(tmp_path, spans):
    path = tmp_path / "ws-events.jsonl"
    log = EventLog(FileSink(str(path), service_name="agent-backend"))
    with spans.tracer.start_as_current_span("send") as span:
        log.record(event())
        ctx = span.get_span_context()
    log.record(event(conn_user="alice"))
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["event"] == "agent_thinking"
    assert first["user_id"] == "alice"
    assert first["connection_user_id"] == "bob"
    assert first["connection_id"] == "c-1"
    assert first["run_id"] == "r-1"
    assert first["service.name"] == "agent-backend"
    assert first["trace_id"] == format(ctx.trace_id, "032x")
    assert first["time"].endswith("Z")
    assert "trace_id" not in lines[1]


def test_otlp_sink_emits_log_records_with_the_event_fields_and_trace(spans):
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    log = EventLog(OtlpLogSink(provider))
    with spans.tracer.start_as_current_span("send") as span:
        log.record(event())
        ctx = span.get_span_context()
    log.close()
    records = exporter.get_finished_logs()
    assert len(records) == 1
    record = records[0].log_record
    assert dict(record.attributes) == {
        "event": "agent_thinking",
        "user_id": "alice",
        "connection_id": "c-1",
        "connection_user_id": "bob",
        "run_id": "r-1",
    }
    assert record.event_name == "agent_thinking"
    assert record.trace_id == ctx.trace_id
    assert record.span_id == ctx.span_id
    provider.shutdown()
