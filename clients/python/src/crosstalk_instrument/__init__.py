"""crosstalk_instrument: tag a Python service for crosstalk, the cross-user state leak detector.

Setup, once (the service already exports OpenTelemetry)::

    tracer_provider.add_span_processor(CrosstalkSpanProcessor())
    app.add_middleware(CrosstalkMiddleware, user=lambda conn: conn.user.identity)

then ``@watched("agent_factory")`` on the classes whose instances must serve one user. The
attribute names are those of crosstalk's default watches, so crosstalk needs no config.
"""

from __future__ import annotations

from typing import Any

from .events import DeliveryEvent, EventLog, FileSink, OtlpLogSink
from .ids import attribute_for, instance_id, origin_attribute, origin_of, stats
from .tagging import CrosstalkSpanProcessor, bound, bound_user, tag, watched

__all__ = [
    "CrosstalkMiddleware",
    "CrosstalkSpanProcessor",
    "DeliveryEvent",
    "EventLog",
    "FileSink",
    "OtlpLogSink",
    "attribute_for",
    "bound",
    "bound_user",
    "instance_id",
    "origin_attribute",
    "origin_of",
    "stats",
    "tag",
    "watched",
]


def __getattr__(name: str) -> Any:
    # The middleware needs Starlette (the [websocket] extra); import it only when asked for.
    if name == "CrosstalkMiddleware":
        from .asgi import CrosstalkMiddleware

        return CrosstalkMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
