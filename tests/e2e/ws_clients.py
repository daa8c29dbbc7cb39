"""Real WebSocket clients for ws_backend.py, one per user, run concurrently.

Role in the crosstalk end-to-end tests: the Rust integration tests launch this
after ws_backend.py has printed `LISTENING <port>`, to generate real traffic
(and so a real event log) with or without the backend's misrouting.

Usage:
  python ws_clients.py --url ws://127.0.0.1:PORT/ws --users alice,bob [--runs 1] [--timeout 5]

All users connect first (ws://.../ws?user=<user>), then each sends --runs
{"type": "run", "run_id": "<user>-run-<i>-<hex>"} requests. Every client
counts the agent events it receives until every user has received
agent_completed for all of its own runs (plus a short settle time for
stragglers), or until --timeout seconds have passed. Prints one JSON summary:
  {"alice": {"received": 5, "foreign": 0, "completed": 1}, ...}
where `foreign` counts events whose payload user_id is not the client's user
and `completed` counts the client's own runs that reached agent_completed.
Exits 0 (2 if a connection could not be opened).
"""

import argparse
import asyncio
import json
import sys
import uuid
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

EVENTS = {"agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"}
SETTLE_SECONDS = 0.3


class Client:
    def __init__(self, user: str, ws: ClientConnection, runs: int):
        self.user = user
        self.ws = ws
        self.run_ids = {f"{user}-run-{i}-{uuid.uuid4().hex[:8]}" for i in range(1, runs + 1)}
        self.completed: set[str] = set()
        self.received = 0
        self.foreign = 0
        self.done = asyncio.Event()

    def on_message(self, raw):
        try:
            msg = json.loads(raw)
        except (TypeError, ValueError):
            return
        if not isinstance(msg, dict) or msg.get("type") not in EVENTS:
            return  # "connected", "error" and the like are not agent events
        self.received += 1
        if msg.get("user_id") != self.user:
            self.foreign += 1
        elif msg["type"] == "agent_completed" and msg.get("run_id") in self.run_ids:
            self.completed.add(msg["run_id"])
            if self.completed == self.run_ids:
                self.done.set()

    async def receive_until(self, stop: asyncio.Event):
        recv = None
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                recv = asyncio.create_task(self.ws.recv())
                await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not recv.done():
                    break
                try:
                    self.on_message(recv.result())
                except ConnectionClosed:
                    break
                recv = None
        finally:
            stopper.cancel()
            if recv is not None and not recv.done():
                recv.cancel()


async def open_client(url: str, user: str, runs: int) -> Client:
    sep = "&" if "?" in url else "?"
    ws = await connect(f"{url}{sep}user={quote(user)}", open_timeout=5)
    return Client(user, ws, runs)


async def main_async(args) -> int:
    users = [u.strip() for u in args.users.split(",") if u.strip()]
    if not users:
        print("ws_clients: --users is empty", file=sys.stderr)
        return 2
    try:
        clients = await asyncio.gather(*(open_client(args.url, u, args.runs) for u in users))
    except Exception as exc:  # noqa: BLE001 - refused, timed out, rejected handshake...
        print(f"ws_clients: could not connect: {exc!r}", file=sys.stderr)
        return 2

    stop = asyncio.Event()
    receivers = [asyncio.create_task(c.receive_until(stop)) for c in clients]
    for c in clients:
        for run_id in sorted(c.run_ids):
            await c.ws.send(json.dumps({"type": "run", "run_id": run_id}))

    async def all_done():
        await asyncio.gather(*(c.done.wait() for c in clients))
        await asyncio.sleep(SETTLE_SECONDS)  # let misrouted stragglers arrive

    try:
        await asyncio.wait_for(all_done(), timeout=args.timeout)
    except asyncio.TimeoutError:
        pass
    stop.set()
    await asyncio.gather(*receivers, return_exceptions=True)
    await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)

    summary = {
        c.user: {"received": c.received, "foreign": c.foreign, "completed": len(c.completed)}
        for c in clients
    }
    print(json.dumps(summary), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="e.g. ws://127.0.0.1:8765/ws")
    p.add_argument("--users", required=True, help="comma-separated user ids")
    p.add_argument("--runs", type=int, default=1, help="run requests per user")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for completion")
    args = p.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
