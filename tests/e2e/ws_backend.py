"""Model of the seeds' backend WebSocket layer, writing a JSON-lines event log.

Role in the crosstalk end-to-end tests: the Rust integration tests launch this
server, drive it with ws_clients.py and feed the log FILE it writes to
crosstalk's WebSocket event-log ingestion. With --misroute-from/--misroute-to
it reproduces the incident's shared WebSocket emitter: events carrying FROM's
data are delivered over TO's connection.

Usage:
  python ws_backend.py --port 0 --log FILE [--misroute-from USER --misroute-to USER]

Once bound it prints `LISTENING <port>` on stdout. Clients connect to
  ws://127.0.0.1:<port>/ws?user=<user_id>
and send {"type": "run", "run_id": "..."}; the server answers with the events
agent_started, agent_thinking, tool_executing, tool_completed, agent_completed,
each a JSON message {"type", "user_id", "run_id", "time", "emitter_id", "payload"}.
For every event actually sent it appends one line to FILE:
  {"time": "2025-09-14T12:00:00.123456Z", "event": "agent_started",
   "user_id": <whose data>, "connection_id": <receiving connection>,
   "connection_user_id": <user authenticated on that connection>,
   "run_id": ..., "service.name": "agent-backend", "emitter_id": ...}
Exits 0 on SIGTERM or SIGINT.
"""

import argparse
import asyncio
import json
import signal
import sys
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

EVENTS = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]
SERVICE_NAME = "agent-backend"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Connection:
    """One authenticated WebSocket connection."""

    def __init__(self, ws: ServerConnection, user_id: str):
        self.ws = ws
        self.user_id = user_id
        self.connection_id = uuid.uuid4().hex


class Backend:
    def __init__(self, log_path: str, misroute_from: str | None, misroute_to: str | None):
        self.log = open(log_path, "a", encoding="utf-8")
        self.misroute_from = misroute_from
        self.misroute_to = misroute_to
        self.connections: dict[str, list[Connection]] = {}
        self.emitters: dict[str, str] = {}  # emitter key -> emitter id
        self.tasks: set[asyncio.Task] = set()

    # -- routing ---------------------------------------------------------

    def emitter_id(self, user_id: str) -> str:
        """One emitter per user; under misroute FROM shares TO's emitter."""
        key = user_id
        if self.misroute_from and user_id == self.misroute_from:
            key = self.misroute_to
        return self.emitters.setdefault(key, uuid.uuid4().hex)

    def targets(self, user_id: str) -> list[Connection]:
        """Connections that receive events carrying user_id's data."""
        if self.misroute_from and user_id == self.misroute_from:
            misrouted = self.connections.get(self.misroute_to, [])
            if misrouted:
                return list(misrouted)
        return list(self.connections.get(user_id, []))

    # -- event emission --------------------------------------------------

    def write_log(self, event: str, user_id: str, conn: Connection, run_id: str, emitter_id: str, ts: str):
        line = {
            "time": ts,
            "event": event,
            "user_id": user_id,
            "connection_id": conn.connection_id,
            "connection_user_id": conn.user_id,
            "run_id": run_id,
            "service.name": SERVICE_NAME,
            "emitter_id": emitter_id,
        }
        self.log.write(json.dumps(line) + "\n")
        self.log.flush()

    async def run_agent(self, user_id: str, run_id: str):
        emitter_id = self.emitter_id(user_id)
        for event in EVENTS:
            await asyncio.sleep(0.01)
            ts = now_rfc3339()
            message = json.dumps({
                "type": event,
                "user_id": user_id,
                "run_id": run_id,
                "time": ts,
                "emitter_id": emitter_id,
                "payload": {"text": f"{event} for {user_id}"},
            })
            for conn in self.targets(user_id):
                try:
                    await conn.ws.send(message)
                except ConnectionClosed:
                    continue
                self.write_log(event, user_id, conn, run_id, emitter_id, ts)

    def start_run(self, user_id: str, run_id: str):
        task = asyncio.create_task(self.run_agent(user_id, run_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- WebSocket plumbing ----------------------------------------------

    def check_request(self, ws: ServerConnection, request):
        """Reject anything but /ws?user=<id> before the handshake."""
        parts = urlsplit(request.path)
        users = parse_qs(parts.query).get("user", [])
        if parts.path != "/ws" or not users or not users[0]:
            return ws.respond(400, "expected /ws?user=<user_id>\n")
        return None

    async def handle(self, ws: ServerConnection):
        user_id = parse_qs(urlsplit(ws.request.path).query)["user"][0]
        conn = Connection(ws, user_id)
        self.connections.setdefault(user_id, []).append(conn)
        try:
            await ws.send(json.dumps({"type": "connected", "user_id": user_id,
                                      "connection_id": conn.connection_id}))
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                except (TypeError, ValueError):
                    await ws.send(json.dumps({"type": "error", "error": "invalid json"}))
                    continue
                if isinstance(msg, dict) and msg.get("type") == "run":
                    self.start_run(user_id, str(msg.get("run_id") or uuid.uuid4().hex))
                else:
                    await ws.send(json.dumps({"type": "error", "error": "unknown message"}))
        except ConnectionClosed:
            pass
        finally:
            self.connections[user_id].remove(conn)
            if not self.connections[user_id]:
                del self.connections[user_id]

    async def shutdown(self):
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.log.close()


async def main_async(args) -> int:
    backend = Backend(args.log, args.misroute_from, args.misroute_to)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(backend.handle, "127.0.0.1", args.port,
                     process_request=backend.check_request) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"LISTENING {port}", flush=True)
        await stop.wait()
        await backend.shutdown()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", required=True, help="JSON-lines event log, opened in append mode")
    p.add_argument("--misroute-from", default=None, metavar="USER")
    p.add_argument("--misroute-to", default=None, metavar="USER")
    args = p.parse_args()
    if bool(args.misroute_from) != bool(args.misroute_to):
        p.error("--misroute-from and --misroute-to go together")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
