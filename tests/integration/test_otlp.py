"""With ``Telemetry:OtlpEndpoint`` set, metrics and spans reach an OTLP/HTTP receiver."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE

from dawning_streams import AuditLogMessage, Settings, create_app
from dawning_streams.core.settings import Secret, TelemetrySettings

from ..handler_helpers import Calls, running

pytestmark = pytest.mark.kafka


class Receiver(ThreadingHTTPServer):
    """A minimal OTLP/HTTP receiver: keeps every request's path, headers and body."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.server.received.append((self.path, headers, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


async def test_metrics_and_spans_are_exported_over_otlp(
    settings: Settings, receiver: Receiver
) -> None:
    port = receiver.server_address[1]
    settings = dataclasses.replace(
        settings,
        telemetry=TelemetrySettings(
            otlp_endpoint=f"http://127.0.0.1:{port}",
            otlp_headers=Secret("authorization=Bearer collector-token"),
            export_interval_ms=600_000,  # only the flush at shutdown exports
        ),
    )
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler
    async def audit(message: AuditLogMessage) -> None:
        calls.add(message.action)

    async with running(app):
        await app.bus.publish(AuditLogMessage(user_id=uuid.uuid4(), action="a", entity_type="U"))
        await calls.wait_until(lambda items: items == ["a"])
    # Stopping the app flushed both exporters.

    paths = {path for path, _, _ in receiver.received}
    assert paths == {"/v1/metrics", "/v1/traces"}
    for _, headers, _ in receiver.received:
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["authorization"] == "Bearer collector-token"

    metrics: dict[str, float] = {}
    durations = []
    for path, _, body in receiver.received:
        if path != "/v1/metrics":
            continue
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
            assert attributes["service.instance.id"] == settings.instance_name
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.HasField("sum"):
                        metrics[metric.name] = sum(p.as_int for p in metric.sum.data_points)
                    if metric.name == "dawning.handler.duration":
                        durations.append(metric)
    assert metrics["dawning.handler.handled"] == 1
    assert metrics["kafka.producer.send.total"] >= 1
    # The handler's duration histogram goes out too, as an SDK histogram would.
    [duration] = durations
    assert duration.unit == "s"
    assert duration.histogram.aggregation_temporality == AGGREGATION_TEMPORALITY_CUMULATIVE
    [point] = duration.histogram.data_points
    point_attributes = {a.key: a.value.string_value for a in point.attributes}
    assert point_attributes == {"handler": "audit", "outcome": "handled"}
    assert point.count == 1 and sum(point.bucket_counts) == 1
    assert list(point.explicit_bounds) == [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60
    ]  # fmt: skip
    assert 0 < point.min <= point.max and point.sum == pytest.approx(point.max)

    spans = []
    for path, _, body in receiver.received:
        if path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    spans.extend(scope.spans)
    topic = settings.kafka.topics.audit_log
    [publish] = [s for s in spans if s.name == f"{topic} publish"]
    [process] = [s for s in spans if s.name == f"{topic} process"]
    assert process.trace_id == publish.trace_id and process.parent_span_id == publish.span_id
