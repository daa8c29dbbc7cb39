"""CrosstalkMiddleware on a real Starlette app: the user on every span of a request, a server
span when the app has none, and every WebSocket message recorded with whose data it carried and
whose connection it went to."""

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

from crosstalk_instrument import CrosstalkMiddleware, EventLog


class ListSink:
    def __init__(self):
        self.events = []

    def write(self, events):
        self.events.extend(events)

    def close(self):
        pass


def build(spans, sink, user=lambda conn: conn.query_params.get("user")):
    tracer = spans.tracer

    async def run(request):
        with tracer.start_as_current_span("handler"):
            return PlainTextResponse("ok")

    async def ws(websocket):
        await websocket.accept()
        target = websocket.query_params.get("send_as", websocket.query_params.get("user"))
        if websocket.query_params.get("late_user"):
            websocket.state.user = websocket.query_params["late_user"]
        with tracer.start_as_current_span("ws-message"):
            await websocket.send_json({"type": "agent_started", "user_id": target, "run_id": "r-1"})
        await websocket.send_text("not json")
        await websocket.send_bytes(b"\xff\xfe")
        await websocket.close()

    app = Starlette(routes=[Route("/run", run, methods=["POST"]), WebSocketRoute("/ws", ws)])
    log = EventLog(sink)
    app.add_middleware(
        CrosstalkMiddleware,
        user=user,
        meant_for=lambda msg: msg.get("user_id") if isinstance(msg, dict) else None,
        events=log,
        tracer_provider=spans.provider,
    )
    return app, log


def middleware_of(app):
    layer = app.middleware_stack
    while not isinstance(layer, CrosstalkMiddleware):
        layer = layer.app
    return layer


def finished(spans):
    return {s.name: s for s in spans.exporter.get_finished_spans()}


def test_http_request_gets_a_server_span_and_every_span_carries_the_user(spans):
    app, _ = build(spans, ListSink())
    client = TestClient(app)
    assert client.post("/run?user=alice").status_code == 200
    got = finished(spans)
    assert got["POST /run"].kind == trace.SpanKind.SERVER
    assert got["POST /run"].attributes["user.id"] == "alice"
    assert got["handler"].attributes["user.id"] == "alice"
    assert got["handler"].parent.span_id == got["POST /run"].context.span_id


def test_websocket_messages_are_recorded_with_both_users(spans):
    sink = ListSink()
    app, log = build(spans, sink)
    with TestClient(app).websocket_connect("/ws?user=bob&send_as=alice") as ws:
        assert ws.receive_json()["user_id"] == "alice"
        ws.receive_text()
        ws.receive_bytes()
    assert log.flush()
    assert len(sink.events) == 1, "only messages with a user they are meant for are recorded"
    ev = sink.events[0]
    assert (ev.user_id, ev.connection_user_id, ev.event, ev.run_id) == (
        "alice",
        "bob",
        "agent_started",
        "r-1",
    )
    message_span = finished(spans)["ws-message"]
    assert message_span.attributes["user.id"] == "bob"
    sent_in = trace.get_current_span(ev.context).get_span_context()
    assert sent_in.span_id == message_span.context.span_id


def test_connection_user_set_later_in_state_is_picked_up(spans):
    sink = ListSink()
    app, log = build(spans, sink, user=lambda conn: getattr(conn.state, "user", None))
    with TestClient(app).websocket_connect("/ws?late_user=carol&send_as=carol") as ws:
        ws.receive_json()
        ws.receive_text()
        ws.receive_bytes()
    assert log.flush()
    [ev] = sink.events
    assert ev.connection_user_id == "carol"


def test_a_raising_user_callable_is_counted_not_propagated(spans):
    def broken(conn):
        raise RuntimeError("auth backend down")

    app, _ = build(spans, ListSink(), user=broken)
    assert TestClient(app).post("/run").status_code == 200
    assert "user.id" not in finished(spans)["handler"].attributes
    assert middleware_of(app).callable_errors == 1
