"""Overload client: pushes far more spans than crosstalk's ingest queue holds, through the real
OpenTelemetry SDK OTLP/HTTP exporter (which retries on 503 and honours Retry-After).

Role in the crosstalk tests: proves backpressure loses nothing. Spans are made by a real
TracerProvider, collected in memory, then exported concurrently by many threads so that the
server's queue overflows.

Usage: python overload.py --endpoint http://127.0.0.1:PORT --threads 16 --batches 8 --batch-size 512
Prints one JSON line: {"spans": N, "exported": N, "failures": 0}
"""

import argparse
import concurrent.futures
import json

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def make_spans(count: int):
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "overload", "service.instance.id": "pod-1"})
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("overload")
    for i in range(count):
        # Every span binds a new factory instance: each costs the server a durable write.
        with tracer.start_as_current_span("agent_factory.create_agent") as span:
            span.set_attribute("user.id", f"user-{i % 50}")
            span.set_attribute("agent_factory.instance_id", f"factory-{i:08d}")
    return list(memory.get_finished_spans())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--batches", type=int, default=8, help="batches per thread")
    p.add_argument("--batch-size", type=int, default=512)
    args = p.parse_args()

    total = args.threads * args.batches * args.batch_size
    spans = make_spans(total)
    batches = [spans[i : i + args.batch_size] for i in range(0, total, args.batch_size)]
    exporters = [
        OTLPSpanExporter(endpoint=args.endpoint.rstrip("/") + "/v1/traces", timeout=60)
        for _ in range(args.threads)
    ]

    def run(thread: int) -> tuple[int, int]:
        ok = failed = 0
        for batch in batches[thread :: args.threads]:
            if exporters[thread].export(batch) == SpanExportResult.SUCCESS:
                ok += len(batch)
            else:
                failed += 1
        return ok, failed

    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        results = list(pool.map(run, range(args.threads)))
    exported = sum(r[0] for r in results)
    failures = sum(r[1] for r in results)
    print(json.dumps({"spans": total, "exported": exported, "failures": failures}), flush=True)
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
