"""Example: the incident's agent backend (FastAPI, WebSockets, async SQLAlchemy), tagged.

An agent factory hands each run an agent carrying a WebSocket emitter and a database session.
The legacy dependency builds ONE factory for the whole process (``get_agent_instance_factory``),
so every user's runs share its emitter — bound to the first user's connection — and its DB
session; the fix builds them per request (``create_agent_instance_factory``). Run it next to
``crosstalk serve`` (default config) and the legacy build shows up as findings for the factory,
the emitter and the session, each naming ``get_agent_instance_factory`` as its origin, plus
``misdelivered_event`` findings for the events that reached the wrong user.

    pip install './clients/python[websocket]' fastapi uvicorn 'sqlalchemy[asyncio]' aiosqlite \\
        opentelemetry-exporter-otlp-proto-http
    AGENT_FACTORY=singleton uvicorn agent_backend:app      # the incident; "per-request" = the fix

Clients: ``ws://HOST/ws?user=ID``, send ``{"type": "run", "run_id": "..."}``; or
``POST /api/agent/run?user=ID``. (The user comes from the query string to keep the example
short; a real app takes it from its authentication.)

Environment: ``AGENT_FACTORY`` (singleton | per-request), ``DATABASE_URL`` (default: SQLite file
``agent-backend.db``), ``POD_NAME``, and the usual ``OTEL_EXPORTER_OTLP_*`` variables.
"""

from __future__ import annotations

import asyncio
import os
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from opentelemetry import trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from crosstalk_instrument import CrosstalkMiddleware, CrosstalkSpanProcessor, watched

LEGACY = os.environ.get("AGENT_FACTORY", "per-request") == "singleton"
EVENTS = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]

# ---- OpenTelemetry, as the service already has it ---------------------------------------------
resource = Resource.create(
    {
        "service.name": "agent-backend",
        "service.instance.id": os.environ.get("POD_NAME", socket.gethostname()),
    }
)
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(
    BatchSpanProcessor(OTLPSpanExporter(), schedule_delay_millis=500)
)
logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(
    BatchLogRecordProcessor(OTLPLogExporter(), schedule_delay_millis=500)
)
trace.set_tracer_provider(tracer_provider)
set_logger_provider(logger_provider)
tracer = trace.get_tracer("agent-backend")

# ---- crosstalk, setup line 1 of 2: ids and the user on every span ------------------------------
tracer_provider.add_span_processor(CrosstalkSpanProcessor())

# ---- the database ----------------------------------------------------------------------------
engine = create_async_engine(os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///agent-backend.db"))
metadata = MetaData()
agent_events = Table(
    "agent_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", String, nullable=False),
    Column("run_id", String, nullable=False),
    Column("event", String, nullable=False),
)


@watched("db_session", methods=["execute", "commit"])
class AgentSession(AsyncSession):
    """The app's DB session: each query tags the current span with the session's id."""


Session = async_sessionmaker(engine, class_=AgentSession, expire_on_commit=False)


# ---- the application objects ------------------------------------------------------------------
@dataclass(frozen=True)
class UserExecutionContext:
    user_id: str
    run_id: str


@watched("ws_emitter", methods=["emit"])
class WebSocketEmitter:
    """Sends one connection's agent events."""

    def __init__(self, websocket: WebSocket | None) -> None:
        self.websocket = websocket

    async def emit(self, event: str, ctx: UserExecutionContext) -> None:
        if self.websocket is None:
            return
        message = {"type": event, "user_id": ctx.user_id, "run_id": ctx.run_id}
        try:
            await self.websocket.send_json(message)
        except (RuntimeError, WebSocketDisconnect):
            pass  # that connection is gone


class Agent:
    def __init__(self, ctx: UserExecutionContext, factory: AgentInstanceFactory) -> None:
        self.ctx, self.factory = ctx, factory

    async def run(self) -> None:
        for event in EVENTS:
            with tracer.start_as_current_span(f"agent.{event}"):
                async with self.factory.db_lock:  # one session must not run two queries at once
                    await self.factory.db.execute(
                        insert(agent_events).values(
                            user_id=self.ctx.user_id, run_id=self.ctx.run_id, event=event
                        )
                    )
                    await self.factory.db.commit()
                await self.factory.emitter.emit(event, self.ctx)
                await asyncio.sleep(0.005)


@watched("agent_factory", methods=["create_agent"])
class AgentInstanceFactory:
    """Creates agents; everything an agent touches comes from its factory."""

    def __init__(self, emitter: WebSocketEmitter, db: AgentSession) -> None:
        self.emitter, self.db = emitter, db
        self.db_lock = asyncio.Lock()

    def create_agent(self, ctx: UserExecutionContext) -> Agent:
        return Agent(ctx, self)


_factory_instance: AgentInstanceFactory | None = None


def get_agent_instance_factory(websocket: WebSocket | None) -> AgentInstanceFactory:
    """Legacy: one factory for the process, built with the first caller's connection."""
    global _factory_instance
    if _factory_instance is None:
        _factory_instance = AgentInstanceFactory(WebSocketEmitter(websocket), Session())
    return _factory_instance


def create_agent_instance_factory(websocket: WebSocket | None) -> AgentInstanceFactory:
    """The fix: a factory, emitter and session per request."""
    return AgentInstanceFactory(WebSocketEmitter(websocket), Session())


async def run_agent(websocket: WebSocket | None, ctx: UserExecutionContext) -> None:
    with tracer.start_as_current_span("agent.run", attributes={"run_id": ctx.run_id}):
        if LEGACY:
            factory = get_agent_instance_factory(websocket)
        else:
            factory = create_agent_instance_factory(websocket)
        try:
            await factory.create_agent(ctx).run()
        finally:
            if not LEGACY:
                await factory.db.close()


# ---- the web app ------------------------------------------------------------------------------
@asynccontextmanager
async def lifespan(app: FastAPI):  # noqa: ANN201
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield
    await engine.dispose()
    # uvicorn ends on SIGTERM by re-raising it, so atexit hooks never run: flush here.
    tracer_provider.force_flush()
    logger_provider.force_flush()


app = FastAPI(lifespan=lifespan)

# ---- crosstalk, setup line 2 of 2: who is on each request/connection, and the event log -------
app.add_middleware(
    CrosstalkMiddleware,
    user=lambda conn: conn.query_params.get("user"),
    meant_for=lambda message: message.get("user_id") if isinstance(message, dict) else None,
)


@app.post("/api/agent/run")
async def run_over_http(user: str, run_id: str = "http") -> dict[str, str]:
    await run_agent(None, UserExecutionContext(user, run_id))
    return {"status": "done"}


@app.websocket("/ws")
async def agent_socket(websocket: WebSocket) -> None:
    user = websocket.query_params.get("user")
    if not user:
        await websocket.close(code=1008)
        return
    await websocket.accept()
    runs: set[asyncio.Task[None]] = set()
    try:
        while True:
            message = await websocket.receive_json()
            if isinstance(message, dict) and message.get("type") == "run":
                ctx = UserExecutionContext(user, str(message.get("run_id", "run")))
                task = asyncio.create_task(run_agent(websocket, ctx))
                runs.add(task)
                task.add_done_callback(runs.discard)
    except WebSocketDisconnect:
        pass
