"""A realistic backend for crosstalk discovery, instrumented with the real OpenTelemetry SDK.

Role in the crosstalk end-to-end tests: the Rust integration tests run this program and either
point its OTLP/HTTP exporter at a running crosstalk (--endpoint) or have it write OTLP JSON
lines, one export batch per line as the Collector's file exporter does (--out), for
`crosstalk discover`. None of the keys below is a configured watch.

Each request is one trace: a root SERVER span with `user.id` and three child spans (ending
first, so exported before the root that names the user) carrying 50+ attribute keys of many
shapes: semantic-convention labels, uuids, hex addresses, small and large integers, enums, model
names, routes, base64 tokens, timestamps; per-request keys take one value per request.

--mode leaky adds exactly three leaks (the expected suspects):
  legacy.registry.addr    one registry object's address on every request (a singleton);
  gen_ai.conversation.id  one user's conversation handed to one other user, far later;
  app.db.session          a session cache that hands ~1 in 400 requests the previous
                          request's session object (a partial leak).
--mode clean has the same keys, all per request or per user. Prints one summary line:
  discovery_corpus: mode=leaky users=200 requests=12000 spans=48000
"""

import argparse
import base64
import json
import random
import sys
import uuid

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

LEAKS = ["legacy.registry.addr", "gen_ai.conversation.id", "app.db.session"]


class JsonLinesExporter(SpanExporter):
    """OTLP JSON, one export per line, ids in hex (as the Collector's file exporter writes)."""

    def __init__(self, path: str) -> None:
        self.out = open(path, "w", encoding="utf-8")

    def export(self, spans) -> SpanExportResult:
        doc = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in span:
                            span[key] = base64.b64decode(span[key]).hex()
        self.out.write(json.dumps(doc) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.out.close()


def hexaddr(rng: random.Random) -> str:
    return "0x7f" + "".join(rng.choice("0123456789abcdef") for _ in range(10))


def token(rng: random.Random) -> str:
    return base64.b64encode(rng.randbytes(18)).decode()


class Backend:
    def __init__(self, args, tracer) -> None:
        self.args = args
        self.tracer = tracer
        self.rng = random.Random(7)
        n = args.users
        rng = self.rng
        self.users = [f"user-{i:04d}" for i in range(n)]
        self.cart = {u: str(uuid.UUID(int=rng.getrandbits(128), version=4)) for u in self.users}
        self.handle = {u: hexaddr(rng) for u in self.users}
        self.profile = {u: "prof_" + rng.randbytes(6).hex() for u in self.users}
        self.account = {u: str(rng.randrange(10**11, 10**12)) for u in self.users}
        self.conversation = {u: str(uuid.uuid4()) for u in self.users}
        self.plan = {u: rng.choice(["free", "pro", "team", "enterprise"]) for u in self.users}
        self.region = {u: rng.choice(["us-east-1", "eu-west-1", "ap-south-1"]) for u in self.users}
        self.locale = {u: rng.choice(["en-US", "de-DE", "fr-FR", "ja-JP"]) for u in self.users}
        self.registry = hexaddr(rng)
        self.last_session = None

    def request(self, i: int, user: str) -> None:
        a, rng, leaky = self.args, self.rng, self.args.mode == "leaky"
        conversation = self.conversation[user]
        if leaky and i == a.requests - 50:
            # The first user's conversation, handed to another user long after its first use.
            conversation = self.conversation[self.users[0]]
        session = str(140_000_000_000_000 + rng.randrange(10**12))
        if leaky and self.last_session and i % 400 == 399:
            session = self.last_session
        self.last_session = session
        registry = self.registry if leaky else hexaddr(rng)
        with self.tracer.start_as_current_span(
            "POST /api/v1/chat",
            kind=SpanKind.SERVER,
            attributes={
                "user.id": user,
                "http.request.method": "POST",
                "http.route": "/api/v1/chat",
                "http.response.status_code": rng.choice([200, 200, 200, 201, 429]),
                "url.path": "/api/v1/chat",
                "server.address": "api.example.com",
                "client.address": f"10.0.{rng.randrange(4)}.{rng.randrange(1, 30)}",
                "user_agent.original": rng.choice(["Mozilla/5.0", "okhttp/4.12", "python-requests/2.32"]),
                "network.protocol.version": "1.1",
                "request.id": str(uuid.uuid4()),
                "app.request.token": token(rng),
                "app.idempotency_key": rng.randbytes(16).hex(),
                "app.plan": self.plan[user],
                "app.region": self.region[user],
                "app.locale": self.locale[user],
                "app.started_at_ms": 1_764_000_000_000 + i * 37,
                "app.feature.flag": rng.choice(["on", "off"]),
                "app.client.version": rng.choice(["ios-5.2.1", "android-5.2.0", "web-2024.11"]),
                "app.cart.id": self.cart[user],
            },
        ):
            self.children(i, user, conversation, session, registry)

    def children(self, i, user, conversation, session, registry) -> None:
        rng = self.rng
        thread = rng.randrange(8)
        with self.tracer.start_as_current_span(
            "agent.run",
            attributes={
                "thread.id": 140_000 + thread,
                "thread.name": f"worker-{thread}",
                "code.function.name": "run_agent",
                "code.lineno": 142,
                "code.filepath": "app/agent.py",
                "gen_ai.system": "openai",
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": rng.choice(["gpt-4o-mini", "gpt-4o"]),
                "gen_ai.agent.id": "asst_4f9a8b7c1d2e3f4a5b6c",
                "gen_ai.agent.name": "support-bot",
                "gen_ai.conversation.id": conversation,
                "gen_ai.usage.input_tokens": rng.randrange(50, 4000),
                "legacy.registry.addr": registry,
                "app.job.id": str(7_200_000_000_000_000_000 + i * 4096 + rng.randrange(4096)),
                "app.cache.entry": "ce_" + rng.randbytes(8).hex(),
                "app.worker.slot": f"slot-{thread}",
                "app.retry.count": rng.choice([0, 0, 0, 1, 2]),
                "app.priority": rng.choice(["low", "normal", "high"]),
            },
        ):
            pass
        with self.tracer.start_as_current_span(
            "db.query",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.namespace": "app",
                "db.operation.name": rng.choice(["SELECT", "UPDATE"]),
                "db.collection.name": rng.choice(["carts", "profiles", "messages"]),
                "app.db.session": session,
                "app.session.handle": self.handle[user],
                "app.profile.ref": self.profile[user],
                "app.account.number": self.account[user],
                "app.shard": rng.randrange(16),
                "app.page.size": rng.choice([20, 50, 100]),
                "app.sort": rng.choice(["asc", "desc"]),
                "app.latency.bucket": rng.choice(["le_10", "le_100", "le_1000"]),
                "app.cache.hit": rng.choice(["true", "false"]),
            },
        ):
            pass
        with self.tracer.start_as_current_span(
            "events.publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": "chat-events",
                "messaging.operation": "publish",
                "rpc.system": "grpc",
                "rpc.service": "chat.v1.Events",
                "rpc.method": "Publish",
                "app.event.key": "evt-" + rng.randbytes(10).hex(),
                "app.queue.depth": rng.randrange(100),
                "app.currency": rng.choice(["EUR", "USD", "JPY"]),
                "app.tier": rng.choice(["gold", "silver", "bronze"]),
                "app.build": "2024.11.3",
            },
        ):
            pass


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["leaky", "clean"], default="leaky")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--requests", type=int, default=12000)
    p.add_argument("--service", default="chat-backend")
    p.add_argument("--endpoint", help="OTLP/HTTP base URL of a running crosstalk")
    p.add_argument("--out", help="write OTLP JSON lines here instead")
    args = p.parse_args()
    if bool(args.endpoint) == bool(args.out):
        p.error("give exactly one of --endpoint and --out")
    provider = TracerProvider(resource=Resource.create({"service.name": args.service}))
    if args.out:
        exporter = JsonLinesExporter(args.out)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=args.endpoint.rstrip("/") + "/v1/traces", timeout=10)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=200_000, max_export_batch_size=512)
    )
    backend = Backend(args, provider.get_tracer("discovery_corpus"))
    for i in range(args.requests):
        backend.request(i, backend.users[i % args.users])
    provider.force_flush(60_000)
    provider.shutdown()
    print(
        f"discovery_corpus: mode={args.mode} users={args.users} requests={args.requests} "
        f"spans={args.requests * 4}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
