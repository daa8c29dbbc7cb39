"""Runs the kit's example FastAPI app (clients/python/examples/agent_backend.py) under uvicorn.

Role in the crosstalk end-to-end tests: the Rust integration tests start this against a running
crosstalk, drive it with real WebSocket clients (ws_clients.py) or plain HTTP requests, stop it
with SIGTERM and read crosstalk's findings. It adds two endpoints for the id-reuse trap, each
building one short-lived per-request factory:
  POST /api/trap/naive?user=U   tags the factory with str(id(obj)), the obvious wrong way
  POST /api/trap/kit?user=U     a @watched factory: the kit's never-reused ids

Usage:
  python kit_backend.py --mode singleton|per-request --endpoint http://HOST:PORT --db FILE

Prints `LISTENING <port>` once bound. On SIGTERM: uvicorn shuts down (the middleware writes out
its event log, the example's lifespan flushes both OpenTelemetry providers; crosstalk
acknowledges an export only once it is durable), and one JSON line is printed: {"events": {...EventLog counters...}}. Exits 0.
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "clients" / "python" / "examples"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["singleton", "per-request"], required=True)
    p.add_argument("--endpoint", required=True, help="crosstalk's OTLP/HTTP base URL")
    p.add_argument("--db", required=True, help="SQLite file for the app's database")
    p.add_argument("--pod", default="pod-1", help="service.instance.id")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    # The example configures itself from the environment at import, like a deployed service.
    os.environ["AGENT_FACTORY"] = args.mode
    os.environ["DATABASE_URL"] = f"sqlite+aiosqlite:///{args.db}"
    os.environ["POD_NAME"] = args.pod
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = args.endpoint
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    sys.path.insert(0, str(EXAMPLES))
    import agent_backend  # configured by the environment above
    import uvicorn
    from crosstalk_instrument import CrosstalkMiddleware, watched
    from opentelemetry import trace

    class PlainFactory:
        def __init__(self, user: str) -> None:
            self.user = user

    @watched("agent_factory", methods=["create_agent"])
    class TrapFactory:
        def __init__(self, user: str) -> None:
            self.user = user

        def create_agent(self) -> str:
            return self.user

    @agent_backend.app.post("/api/trap/naive")
    async def trap_naive(user: str) -> dict[str, str]:
        factory = PlainFactory(user)
        trace.get_current_span().set_attribute("agent_factory.instance_id", str(id(factory)))
        return {"user": factory.user}

    @agent_backend.app.post("/api/trap/kit")
    async def trap_kit(user: str) -> dict[str, str]:
        return {"user": TrapFactory(user).create_agent()}

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it a
    # keep-alive client waits out a delayed ACK (~40 ms) on every response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # clients may connect at once; they wait in the backlog until uvicorn is up
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(agent_backend.app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    # In the main thread uvicorn re-raises SIGTERM after its graceful shutdown, killing the
    # process before the summary; off the main thread it leaves the signal to us.
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    while thread.is_alive():
        thread.join(0.1)

    events = {}
    layer = getattr(agent_backend.app, "middleware_stack", None)
    while layer is not None and not isinstance(layer, CrosstalkMiddleware):
        layer = getattr(layer, "app", None)
    if layer is not None and layer.events is not None:
        events = layer.events.stats()  # closed by the middleware at lifespan shutdown
    agent_backend.tracer_provider.shutdown()
    agent_backend.logger_provider.shutdown()
    print(json.dumps({"events": events}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
