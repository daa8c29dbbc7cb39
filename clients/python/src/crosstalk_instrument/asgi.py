"""ASGI middleware (FastAPI, Starlette): the user on every span, and the WebSocket event log.

For each HTTP request and WebSocket connection it asks the app's ``user`` callable who is on the
other end (given a Starlette ``HTTPConnection``: headers, query, ``state``, ``user``), and
binds that user so every span started while serving it carries ``user.id``. With no server span
current (the app is not otherwise instrumented) it starts one, so tags have a span to land on.

With ``meant_for``, every message sent on a WebSocket connection is recorded in an
:class:`~crosstalk_instrument.events.EventLog` with the user it was meant for (``meant_for`` of
the message, decoded from JSON when it is JSON) and the user the connection belongs to. The
connection's user is asked again at each send until it is known, so apps that authenticate
inside the socket (and store the user in ``websocket.state``) are covered too. Recording happens
after the message was sent, never raises into the app, and never blocks it.

Needs Starlette: ``pip install 'crosstalk-instrument[websocket]'``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import ExitStack
from typing import Any

from opentelemetry import trace
from starlette.requests import HTTPConnection

from .events import DeliveryEvent, EventLog
from .tagging import bound_user

__all__ = ["CrosstalkMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
UserOf = Callable[[HTTPConnection], str | None]

_log = logging.getLogger(__name__)


def default_event_name(message: Any) -> str:
    """``type`` or ``event`` of a JSON object message, else ``message``."""
    if isinstance(message, dict):
        name = message.get("type") or message.get("event")
        if isinstance(name, str) and name:
            return name
    return "message"


def default_run_id(message: Any) -> str | None:
    if isinstance(message, dict):
        run_id = message.get("run_id")
        if run_id is not None:
            return str(run_id)
    return None


class CrosstalkMiddleware:
    """``app.add_middleware(CrosstalkMiddleware, user=..., meant_for=...)``.

    ``user(conn)``: the user id of the request or connection, or None. ``tenant(conn)``:
    optional, the same for ``tenant.id``. ``meant_for(message)``: the user whose data a sent
    WebSocket message carries, or None to not record it (enables the event log).
    ``events``: where recorded events go (default: an :class:`EventLog` writing OpenTelemetry
    log records through the global logger provider). ``tracer_provider``: for the server span
    started when none is current (default: the global one; ``server_span=False`` to never start
    one).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        user: UserOf,
        tenant: UserOf | None = None,
        meant_for: Callable[[Any], str | None] | None = None,
        event_name: Callable[[Any], str] = default_event_name,
        run_id: Callable[[Any], str | None] = default_run_id,
        events: EventLog | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        server_span: bool = True,
    ) -> None:
        self.app = app
        self.user = user
        self.tenant = tenant
        self.meant_for = meant_for
        self.event_name = event_name
        self.run_id = run_id
        self.events = events if events is not None or meant_for is None else EventLog()
        self.server_span = server_span
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        #: Calls of the app's callables that raised (they are treated as "unknown").
        self.callable_errors = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._closing_on_shutdown(receive), send)
            return
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        user = self._ask(self.user, conn)
        tenant = self._ask(self.tenant, conn) if self.tenant else None
        with ExitStack() as stack:
            if self.server_span and not trace.get_current_span().is_recording():
                stack.enter_context(
                    self._tracer.start_as_current_span(
                        _span_name(scope), kind=trace.SpanKind.SERVER
                    )
                )
            stack.enter_context(bound_user(user, tenant))
            if scope["type"] == "websocket" and self.events is not None:
                send = _Recorder(self, conn, user, tenant, send)
            await self.app(scope, receive, send)

    def _closing_on_shutdown(self, receive: Receive) -> Receive:
        """Write out the event log when the server shuts down, before the app's own shutdown
        code runs (which typically flushes its logger provider, the log's destination)."""

        async def wrapped() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.shutdown" and self.events is not None:
                await asyncio.to_thread(self.events.close)
            return message

        return wrapped

    def _ask(self, fn: Callable[[Any], Any] | None, arg: Any) -> str | None:
        if fn is None:
            return None
        try:
            value = fn(arg)
        except Exception:
            self.callable_errors += 1
            _log.debug("crosstalk_instrument: a middleware callable raised", exc_info=True)
            return None
        return None if value is None else str(value)


def _span_name(scope: Scope) -> str:
    path = scope.get("path", "")
    if scope["type"] == "websocket":
        return f"WS {path}"
    return f"{scope.get('method', 'HTTP')} {path}"


class _Recorder:
    """The ``send`` of one WebSocket connection, recording each message after it went out."""

    def __init__(
        self,
        mw: CrosstalkMiddleware,
        conn: HTTPConnection,
        user: str | None,
        tenant: str | None,
        send: Send,
    ) -> None:
        self.mw, self.conn, self.user, self.tenant, self.send = mw, conn, user, tenant, send
        self.connection_id = uuid.uuid4().hex[:16]

    async def __call__(self, message: Message) -> None:
        await self.send(message)
        if message.get("type") == "websocket.send":
            try:
                self._record(message)
            except Exception:  # a hostile or odd message must not break the app's send
                self.mw.callable_errors += 1
                _log.debug("crosstalk_instrument: recording a WebSocket send failed", exc_info=True)

    def _record(self, message: Message) -> None:
        mw = self.mw
        payload = _decode(message)
        meant = mw._ask(mw.meant_for, payload)
        if meant is None or mw.events is None:
            return
        if self.user is None:
            self.user = mw._ask(mw.user, self.conn)
        if self.tenant is None and mw.tenant is not None:
            self.tenant = mw._ask(mw.tenant, self.conn)
        mw.events.record(
            DeliveryEvent(
                event=mw.event_name(payload),
                user_id=meant,
                connection_id=self.connection_id,
                connection_user_id=self.user,
                run_id=mw.run_id(payload),
                connection_tenant_id=self.tenant,
            )
        )


def _decode(message: Message) -> Any:
    text = message.get("text")
    if text is None:
        data = message.get("bytes")
        if data is None:
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return data
    try:
        return json.loads(text)
    except ValueError:
        return text
