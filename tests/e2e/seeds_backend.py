"""Model of the seeds' agent backend, instrumented with the real OpenTelemetry SDK.

Role in the crosstalk end-to-end tests: the Rust integration tests launch this
program as a subprocess and point it at a running crosstalk (OTLP/HTTP or
OTLP/gRPC). It reproduces the incident in shared/seeds: the legacy dependency
`get_agent_instance_factory()` hands every user one global
`AgentInstanceFactory`; the fix, `create_agent_instance_factory(user_context)`,
builds one per request.

Each simulated request is one trace: a root SERVER span `POST /api/agent/run`
with `user.id` (and `tenant.id` if `--tenant-of USER=TENANT` names one) and a
child span `agent_factory.create_agent` with the instance attribute (default
`agent_factory.instance_id`) and deliberately NO `user.id`, so crosstalk must
attribute the user through the trace. Users run concurrently in threads and
sleep inside their spans, so spans of different users overlap in time.

Usage:
  python seeds_backend.py --mode singleton|per-request --users N
      --requests-per-user K [--protocol http|grpc] [--endpoint URL]
      [--service-instance-id ID] [--tenant-of USER=TENANT ...]
      [--instance-attr NAME] [--shared-instance-id ID] [--export-timeout SECS]
      [--untagged] [--anonymous]

--untagged models a refactor that dropped the instance tagging (the factory span carries no
instance attribute); --anonymous one that dropped the user (no user.id on any span).

Without --endpoint the exporter gets no endpoint argument, so the SDK reads
OTEL_EXPORTER_OTLP_ENDPOINT etc. itself; the protocol comes from --protocol,
else OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL
(`http/protobuf`, the default, or `grpc`). Prints one summary line, exits 0:
  seeds_backend: mode=singleton users=5 requests=10 factories=1 spans_exported=20 export_failures=0
"""

import argparse
import concurrent.futures
import os
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind


# ---- The modelled application code ----


@dataclass(frozen=True)
class UserExecutionContext:
    """What the backend knows about the caller of one request."""

    user_id: str
    tenant_id: str | None
    request_id: str


class AgentInstanceFactory:
    """Creates agents; each factory object has its own unique id."""

    def __init__(self, user_context: UserExecutionContext | None = None):
        self.instance_id = uuid.uuid4().hex
        # The state that leaks when one factory serves everybody.
        self._user_context = user_context
        self._lock = threading.Lock()

    def create_agent(self, user_context: UserExecutionContext) -> dict:
        with self._lock:
            self._user_context = user_context  # last writer wins: the bug
        return {"agent": "supervisor", "factory": self.instance_id}


_factory_instance: AgentInstanceFactory | None = None
_factory_lock = threading.Lock()


def get_agent_instance_factory() -> AgentInstanceFactory:
    """Legacy dependency: one module-global factory for every user."""
    global _factory_instance
    if _factory_instance is None:
        with _factory_lock:
            if _factory_instance is None:
                _factory_instance = AgentInstanceFactory()
    return _factory_instance


def create_agent_instance_factory(user_context: UserExecutionContext) -> AgentInstanceFactory:
    """The fix: a fresh factory bound to one request's user context."""
    return AgentInstanceFactory(user_context)


# ---- OpenTelemetry setup ----


class CountingExporter(SpanExporter):
    """Delegates to the real OTLP exporter and counts what it reported."""

    def __init__(self, inner: SpanExporter):
        self.inner = inner
        self.exported = 0
        self.failures = 0
        self._lock = threading.Lock()

    def export(self, spans):
        result = self.inner.export(spans)
        with self._lock:
            if result == SpanExportResult.SUCCESS:
                self.exported += len(spans)
            else:
                self.failures += 1
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def resolve_protocol(flag: str | None) -> str:
    if flag:
        return flag
    env = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip().lower()
    if env == "grpc":
        return "grpc"
    if env in ("http/protobuf", "http"):
        return "http"
    sys.exit(f"seeds_backend: unsupported OTLP protocol {env!r}")


def build_exporter(protocol: str, endpoint: str | None, timeout: float | None) -> SpanExporter:
    kwargs = {} if timeout is None else {"timeout": timeout}
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        if endpoint:
            return OTLPSpanExporter(endpoint=endpoint, insecure=True, **kwargs)
        return OTLPSpanExporter(**kwargs)  # endpoint, insecure etc. from env
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    if endpoint:
        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        return OTLPSpanExporter(endpoint=url, **kwargs)
    return OTLPSpanExporter(**kwargs)  # OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces


# ---- The simulated traffic ----


class Simulation:
    """Concurrent users, each sending K `POST /api/agent/run` requests."""

    def __init__(self, tracer, args, tenants: dict[str, str]):
        self.tracer, self.args, self.tenants = tracer, args, tenants
        self.instance_ids: set[str] = set()
        self._lock = threading.Lock()
        self._start = threading.Barrier(args.users)

    def handle_request(self, user_id: str):
        """One request: a server span with a factory child span."""
        tenant_id = self.tenants.get(user_id)
        attrs = {"http.request.method": "POST", "http.route": "/api/agent/run"}
        if not self.args.anonymous:
            attrs["user.id"] = user_id
        if tenant_id:
            attrs["tenant.id"] = tenant_id
        with self.tracer.start_as_current_span("POST /api/agent/run", kind=SpanKind.SERVER,
                                               attributes=attrs):
            ctx = UserExecutionContext(user_id, tenant_id, uuid.uuid4().hex)
            if self.args.mode == "singleton":
                factory = get_agent_instance_factory()
            else:
                factory = create_agent_instance_factory(ctx)
            instance_id = self.args.shared_instance_id or factory.instance_id
            with self._lock:
                self.instance_ids.add(instance_id)
            time.sleep(random.uniform(0.005, 0.015))
            tags = {} if self.args.untagged else {self.args.instance_attr: instance_id}
            with self.tracer.start_as_current_span("agent_factory.create_agent", attributes=tags):
                factory.create_agent(ctx)
                time.sleep(random.uniform(0.020, 0.050))
            time.sleep(random.uniform(0.005, 0.015))

    def run_user(self, user_id: str):
        self._start.wait()  # all users begin together so their spans overlap
        for _ in range(self.args.requests_per_user):
            self.handle_request(user_id)

    def run(self):
        users = [f"user-{i}" for i in range(1, self.args.users + 1)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(users)) as pool:
            for future in [pool.submit(self.run_user, u) for u in users]:
                future.result()


def parse_tenants(pairs: list[str]) -> dict[str, str]:
    tenants = {}
    for pair in pairs:
        user, sep, tenant = pair.partition("=")
        if not sep or not user or not tenant:
            sys.exit(f"seeds_backend: --tenant-of wants USER=TENANT, got {pair!r}")
        tenants[user] = tenant
    return tenants


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["singleton", "per-request"], required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--requests-per-user", type=int, required=True)
    p.add_argument("--protocol", choices=["http", "grpc"], default=None)
    p.add_argument("--endpoint", default=None,
                   help="http: base URL (…/v1/traces is appended); grpc: host:port or http://host:port")
    p.add_argument("--service-instance-id", default="pod-1")
    p.add_argument("--tenant-of", action="append", default=[], metavar="USER=TENANT")
    p.add_argument("--instance-attr", default="agent_factory.instance_id")
    p.add_argument("--shared-instance-id", default=None,
                   help="every request reports this instance id, whatever the mode")
    p.add_argument("--export-timeout", type=float, default=None,
                   help="seconds per export; default: SDK/env (OTEL_EXPORTER_OTLP_TIMEOUT, in seconds)")
    p.add_argument("--untagged", action="store_true",
                   help="the factory span carries no instance attribute")
    p.add_argument("--anonymous", action="store_true", help="no span carries user.id")
    args = p.parse_args()
    if args.users < 1 or args.requests_per_user < 1:
        sys.exit("seeds_backend: --users and --requests-per-user must be >= 1")
    tenants = parse_tenants(args.tenant_of)

    resource = Resource.create({
        "service.name": "agent-backend",
        "service.instance.id": args.service_instance_id,
    })
    provider = TracerProvider(resource=resource)
    exporter = CountingExporter(
        build_exporter(resolve_protocol(args.protocol), args.endpoint, args.export_timeout)
    )
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=200))
    tracer = provider.get_tracer("seeds_backend")

    sim = Simulation(tracer, args, tenants)
    sim.run()

    provider.force_flush()
    provider.shutdown()
    print(
        f"seeds_backend: mode={args.mode} users={args.users} "
        f"requests={args.users * args.requests_per_user} factories={len(sim.instance_ids)} "
        f"spans_exported={exporter.exported} export_failures={exporter.failures}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
