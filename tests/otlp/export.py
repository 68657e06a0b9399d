"""Exports metrics with the OpenTelemetry Python SDK and its OTLP/HTTP exporter.

Usage: export.py MODE ENDPOINT TOKEN_FILE

MODE "cumulative": one export (gzip) of counters with units, up-down counters,
gauges (synchronous and observable) and an explicit-bucket histogram, from a resource
with service.name, service.namespace, service.instance.id and other attributes, one of
them a spoofed tenant_id (also spoofed on a data point).

MODE "exponential": two histograms with the exponential bucket aggregation (native
histograms in Prometheus): one of spread values, one of a single repeated value (which the
SDK keeps at scale 20, beyond Prometheus' schema 8).

MODE "delta": a counter exported with delta temporality through the exporter (which
must fail: promgate refuses delta temporality), then a request holding a delta counter
and a gauge posted raw, to read the answer's partial_success.

Prints one JSON object on stdout.
"""

import json
import sys

import requests
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExportResult,
)
from opentelemetry.sdk.metrics.view import (
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
    View,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.version import __version__ as sdk_version

mode, endpoint, token_file = sys.argv[1:4]
with open(token_file) as f:
    token = f.read().strip()
headers = {"Authorization": f"Bearer {token}"}

resource = Resource.create(
    {
        "service.name": "checkout",
        "service.namespace": "shop",
        "service.instance.id": "checkout-1",
        "deployment.environment": "e2e",
        "host.name": "otel-host",
        "tenant_id": "mallory",
    }
)


def collect(reader):
    data = reader.get_metrics_data()
    assert data is not None and data.resource_metrics, "nothing collected"
    return data


if mode == "cumulative":
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        resource=resource,
        metric_readers=[reader],
        views=[
            View(
                instrument_name="http.server.duration",
                aggregation=ExplicitBucketHistogramAggregation(boundaries=[10, 50, 100]),
            )
        ],
    )
    meter = provider.get_meter("promgate.e2e", "1.0")

    requests_counter = meter.create_counter("http.server.requests", unit="{request}")
    requests_counter.add(3, {"http.method": "GET", "http.status_code": 200})
    requests_counter.add(
        2, {"http.method": "POST", "http.status_code": 500, "tenant_id": "mallory"}
    )
    meter.create_counter("network.io", unit="By").add(1536)
    meter.create_counter("job.runtime", unit="s").add(2.5)
    meter.create_counter("cache.hits.total", unit="1").add(7)

    depth = meter.create_up_down_counter("queue.depth", unit="{item}")
    depth.add(10)
    depth.add(-4)
    meter.create_up_down_counter("pool.size", unit="By").add(4096)

    meter.create_gauge("cpu.utilization", unit="1").set(0.42)
    meter.create_gauge("disk.free", unit="MiBy").set(
        512, {"mount.point": "/", "1st.disk": "yes", "_private": "p"}
    )
    meter.create_observable_gauge(
        "room.temperature",
        callbacks=[lambda options: [Observation(21.5, {"room": "lab"})]],
        unit="Cel",
    )

    duration = meter.create_histogram("http.server.duration", unit="ms")
    for value in [5, 20, 70, 200, 30]:
        duration.record(value, {"http.route": "/checkout"})

    exporter = OTLPMetricExporter(
        endpoint=endpoint, headers=headers, compression=Compression.Gzip, timeout=10
    )
    result = exporter.export(collect(reader))
    print(
        json.dumps(
            {
                "result": "SUCCESS" if result == MetricExportResult.SUCCESS else "FAILURE",
                "sdk_version": sdk_version,
            }
        )
    )
elif mode == "exponential":
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        resource=resource,
        metric_readers=[reader],
        views=[View(instrument_name="*", aggregation=ExponentialBucketHistogramAggregation())],
    )
    meter = provider.get_meter("promgate.e2e")
    payload = meter.create_histogram("payload.size", unit="By")
    for value in [0.5, 1, 2, 3, 100, 1000]:
        payload.record(value)
    single = meter.create_histogram("single.latency", unit="s")
    for _ in range(3):
        single.record(0.25)
    data = collect(reader)
    scales = {
        metric.name: [point.scale for point in metric.data.data_points]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    exporter = OTLPMetricExporter(endpoint=endpoint, headers=headers, timeout=10)
    result = exporter.export(data)
    print(
        json.dumps(
            {
                "result": "SUCCESS" if result == MetricExportResult.SUCCESS else "FAILURE",
                "scales": scales,
            }
        )
    )
elif mode == "delta":
    delta = {Counter: AggregationTemporality.DELTA}
    reader = InMemoryMetricReader(preferred_temporality=delta)
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("promgate.e2e")
    meter.create_counter("delta.requests").add(5)
    exporter = OTLPMetricExporter(endpoint=endpoint, headers=headers, timeout=10)
    result = exporter.export(collect(reader))

    mixed_reader = InMemoryMetricReader(preferred_temporality=delta)
    mixed = MeterProvider(resource=resource, metric_readers=[mixed_reader])
    mixed_meter = mixed.get_meter("promgate.e2e")
    mixed_meter.create_counter("mixed.delta.requests").add(5)
    mixed_meter.create_gauge("mixed.gauge").set(1)
    body = encode_metrics(collect(mixed_reader)).SerializeToString()
    answer = requests.post(
        endpoint,
        data=body,
        headers={**headers, "Content-Type": "application/x-protobuf"},
        timeout=10,
    )
    print(
        json.dumps(
            {
                "result": "SUCCESS" if result == MetricExportResult.SUCCESS else "FAILURE",
                "mixed_status": answer.status_code,
                "mixed_content_type": answer.headers.get("Content-Type", ""),
                "mixed_body_hex": answer.content.hex(),
            }
        )
    )
else:
    sys.exit(f"unknown mode {mode}")
