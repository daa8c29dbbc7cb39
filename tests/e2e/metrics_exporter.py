"""Export one batch of metrics with the real OpenTelemetry Python SDK's OTLP metric exporter.

Role in the crosstalk tests: an app pointed at crosstalk with OTEL_EXPORTER_OTLP_ENDPOINT also
exports metrics there; crosstalk must accept (and discard) them so the SDK logs no errors. The
batch holds one counter with two attribute sets (two data points) and one histogram (one data
point): three data points.

Usage:
  python metrics_exporter.py --protocol http|grpc --endpoint URL
Prints the exporter's result (SUCCESS or FAILURE) and exits 0 on SUCCESS, 1 otherwise.
"""

import argparse
import sys

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["http", "grpc"], required=True)
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args()

    reader = InMemoryMetricReader()
    provider = MeterProvider(
        resource=Resource.create({"service.name": "agent-backend"}), metric_readers=[reader]
    )
    meter = provider.get_meter("agent-backend")
    requests = meter.create_counter("requests")
    requests.add(3, {"route": "/api/agent/run"})
    requests.add(1, {"route": "/health"})
    meter.create_histogram("latency_ms").record(12.5)
    data = reader.get_metrics_data()

    if args.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=f"{args.endpoint}/v1/metrics", timeout=5)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=args.endpoint, insecure=True, timeout=5)
    result = exporter.export(data)
    exporter.shutdown()
    provider.shutdown()
    print(result.name)
    return 0 if result == MetricExportResult.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
