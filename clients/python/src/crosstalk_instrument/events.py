"""The WebSocket event log crosstalk's misdelivery check reads, written off the request path.

Each message sent on a connection becomes one :class:`DeliveryEvent`: whose data it carried
(``user_id``) and who the connection belongs to (``connection_user_id``). crosstalk raises a
``misdelivered_event`` finding when the two differ.

:class:`EventLog` is a bounded queue drained by one daemon thread into a sink. Full-policy:
drop the event and count it (``dropped``) — recording must never block or slow the app's event
loop. Two sinks:

* :class:`OtlpLogSink` (the default): OpenTelemetry log records through the app's logger
  provider, so the events reach crosstalk over the same OTLP connection as the spans, with the
  trace of the request that sent them; nothing to configure on the crosstalk side.
* :class:`FileSink`: JSON lines for crosstalk's ``[events] files`` tail, when a shared volume is
  easier than a logs pipeline.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from opentelemetry import _logs, trace
from opentelemetry import context as otel_context

__all__ = ["DeliveryEvent", "EventLog", "EventSink", "FileSink", "OtlpLogSink"]

_log = logging.getLogger(__name__)

#: Events written to a sink at once.
BATCH = 256


@dataclass
class DeliveryEvent:
    """One message sent on a WebSocket connection, in crosstalk's event fields."""

    event: str
    user_id: str
    connection_id: str
    connection_user_id: str | None
    run_id: str | None = None
    tenant_id: str | None = None
    connection_tenant_id: str | None = None
    time_ns: int = field(default_factory=time.time_ns)
    #: The OpenTelemetry context the message was sent in (its trace and span).
    context: otel_context.Context | None = field(default_factory=otel_context.get_current)

    def fields(self) -> dict[str, str]:
        """The canonical event fields that are set (crosstalk's default ``[events.fields]``)."""
        out = {
            "event": self.event,
            "user_id": self.user_id,
            "connection_id": self.connection_id,
        }
        for key in ("connection_user_id", "run_id", "tenant_id", "connection_tenant_id"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out


class EventSink(Protocol):
    """Where an :class:`EventLog` writes; called from its writer thread only."""

    def write(self, events: list[DeliveryEvent]) -> None: ...

    def close(self) -> None: ...


class OtlpLogSink:
    """Events as OpenTelemetry log records (attributes = the event fields, ``event_name`` = the
    event, trace and span of the sending request) through ``logger_provider`` or the global one.
    """

    def __init__(self, logger_provider: _logs.LoggerProvider | None = None) -> None:
        self._provider = logger_provider
        self._logger: _logs.Logger | None = None
        self._warned = False

    def write(self, events: list[DeliveryEvent]) -> None:
        logger = self._logger or self._get_logger()
        for ev in events:
            logger.emit(
                _logs.LogRecord(
                    timestamp=ev.time_ns,
                    context=ev.context,
                    body=ev.event,
                    attributes=ev.fields(),
                    event_name=ev.event,
                )
            )

    def _get_logger(self) -> _logs.Logger:
        provider = self._provider or _logs.get_logger_provider()
        if isinstance(provider, (_logs.NoOpLoggerProvider, _ProxyLoggerProvider)):
            # The global provider is not set yet: records would vanish. Say so once, and ask
            # again next batch (the app may set it later).
            if not self._warned:
                _log.warning(
                    "crosstalk_instrument: no OpenTelemetry logger provider is set; WebSocket "
                    "events go nowhere until set_logger_provider() is called"
                )
                self._warned = True
            return _logs.get_logger(__name__, logger_provider=provider)
        self._logger = provider.get_logger("crosstalk_instrument")
        return self._logger

    def close(self) -> None:
        pass


try:  # the proxy class is private to the API package; tolerate its move
    from opentelemetry._logs._internal import ProxyLoggerProvider as _ProxyLoggerProvider
except ImportError:  # pragma: no cover
    _ProxyLoggerProvider = _logs.NoOpLoggerProvider  # type: ignore[misc,assignment]


class FileSink:
    """Events as JSON lines appended to ``path`` (point crosstalk's ``[events] files`` at it)."""

    def __init__(self, path: str, service_name: str | None = None) -> None:
        self._path = path
        self._service = service_name
        self._file = open(path, "a", encoding="utf-8")

    def write(self, events: list[DeliveryEvent]) -> None:
        lines = []
        for ev in events:
            line: dict[str, str] = {"time": _rfc3339(ev.time_ns), **ev.fields()}
            if self._service:
                line["service.name"] = self._service
            span = trace.get_current_span(ev.context).get_span_context()
            if span.is_valid:
                line["trace_id"] = format(span.trace_id, "032x")
                line["span_id"] = format(span.span_id, "016x")
            lines.append(json.dumps(line, separators=(",", ":")) + "\n")
        self._file.write("".join(lines))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _rfc3339(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1000:06d}Z"


_STOP = object()


class EventLog:
    """A bounded queue of :class:`DeliveryEvent` drained into ``sink`` by one daemon thread.

    ``record`` never blocks: when ``capacity`` events are waiting it drops the new one and
    counts it. Counters: ``recorded``, ``written``, ``dropped`` (queue full), ``failed`` (the
    sink raised). Flushed at interpreter exit; call :meth:`close` on shutdown to be sure.
    """

    def __init__(self, sink: EventSink | None = None, *, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.sink: EventSink = sink if sink is not None else OtlpLogSink()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.recorded = 0
        self.written = 0
        self.dropped = 0
        self.failed = 0
        atexit.register(_close_at_exit, weakref.ref(self))

    def record(self, event: DeliveryEvent) -> bool:
        """Queue ``event``; False if it was dropped (queue full or log closed)."""
        with self._lock:
            if self._closed:
                self.dropped += 1
                return False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._drain, name="crosstalk-events", daemon=True
                )
                self._thread.start()
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                self.dropped += 1
                return False
            self.recorded += 1
            return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        with self._lock:
            if self._thread is None:
                return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the thread, close the sink. Later events are dropped."""
        flushed = self.flush(timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                pass
            thread.join(timeout)
        if flushed:
            self.sink.close()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "recorded": self.recorded,
                "written": self.written,
                "dropped": self.dropped,
                "failed": self.failed,
            }

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[DeliveryEvent] = []
            markers: list[threading.Event] = []
            stop = False
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    batch.append(item)  # type: ignore[arg-type]
                if stop or len(batch) >= BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(batch)
            for marker in markers:
                marker.set()
            if stop:
                return

    def _write(self, batch: list[DeliveryEvent]) -> None:
        if not batch:
            return
        try:
            self.sink.write(batch)
        except Exception:  # the app must not be hurt by a broken sink: count, log, go on
            _log.exception("crosstalk_instrument: writing %d WebSocket events failed", len(batch))
            with self._lock:
                self.failed += len(batch)
            return
        with self._lock:
            self.written += len(batch)


def _close_at_exit(ref: weakref.ref[EventLog]) -> None:
    log = ref()
    if log is not None:
        log.close(timeout=2.0)
