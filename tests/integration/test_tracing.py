"""W3C ``traceparent`` from ``publish`` through the handler into retries and dead letters."""

from __future__ import annotations

import uuid

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from dawning_streams import AuditLogMessage, Retry, Settings, UserEventMessage, create_app
from dawning_streams.core.names import timers_table
from dawning_streams.handlers.timers import Timer
from dawning_streams.observability.telemetry import Telemetry
from dawning_streams.ops.dlq import read_dead_letters, replay

from ..handler_helpers import Calls, eventually, running
from ..kafka_helpers import read_topic

pytestmark = pytest.mark.kafka


def traceparent(record: object) -> tuple[str, str]:
    """(trace id, span id) of a record's ``traceparent`` header."""
    [value] = [v for k, v in record.headers if k == "traceparent"]  # type: ignore[attr-defined]
    version, trace_id, span_id, flags = value.decode().split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return trace_id, span_id


def ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def parent_id(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


async def test_traceparent_travels_from_publish_through_retries_into_the_dead_letter(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    spans = InMemorySpanExporter()
    app.telemetry.tracing.provider.add_span_processor(SimpleSpanProcessor(spans))
    calls = Calls()
    topic = settings.kafka.topics.audit_log
    bootstrap = settings.kafka.bootstrap_servers[0]

    @app.handler(retry=Retry(max_retries=1, backoff_s=0.2))
    async def audit(message: AuditLogMessage) -> None:
        calls.add(trace.get_current_span().get_span_context().span_id)
        raise ConnectionError("store is down")

    async with running(app):
        await app.bus.publish(AuditLogMessage(user_id=uuid.uuid4(), action="a", entity_type="U"))
        [published] = await read_topic(bootstrap, topic, 1)
        # The retry waits in the handler's timer table: its first changelog
        # record carries the message as the retry will see it.
        changelog = app.tables[timers_table("audit")].changelog_topic.get_topic_name()
        # (Once the retry has run, its deletion may follow in the same fetch.)
        entry = (await read_topic(bootstrap, changelog, 1))[0]
        retried = Timer.from_json("retry", orjson.loads(entry.value)).delivery
        [dead] = await read_topic(bootstrap, f"{topic}.dlq", 1)

        def handler_spans() -> list[ReadableSpan]:
            finished = spans.get_finished_spans()
            return [span for span in finished if span.kind == SpanKind.CONSUMER]

        await eventually(lambda: len(handler_spans()) == 2, what="two finished handler spans")

    trace_id, publish_span = traceparent(published)
    assert traceparent(retried)[0] == trace_id
    assert traceparent(dead)[0] == trace_id
    first, second = sorted(handler_spans(), key=lambda span: span.start_time or 0)
    # Attempt 1 is a child of the publisher's span; attempt 2 of the retry's.
    assert ids(first)[0] == trace_id and parent_id(first) == publish_span
    assert ids(second)[0] == trace_id and parent_id(second) == traceparent(retried)[1]
    # The handler saw its own span as the current one.
    assert calls.items == [int(ids(first)[1], 16), int(ids(second)[1], 16)]
    # The retry and the dead letter were published from inside the failed attempts.
    by_id = {ids(s)[1]: s for s in spans.get_finished_spans()}
    assert parent_id(by_id[traceparent(retried)[1]]) == ids(first)[1]
    assert parent_id(by_id[traceparent(dead)[1]]) == ids(second)[1]
    for span in (first, second):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["messaging.destination.name"] == topic
        assert span.attributes["dawning.handler"] == "audit"
    assert [e.name for e in first.events] == ["exception"]


async def test_a_replayed_dead_letter_continues_its_trace(settings: Settings) -> None:
    app = create_app(settings, web_enabled=False)
    topic = settings.kafka.topics.audit_log
    bootstrap = settings.kafka.bootstrap_servers[0]
    tracer = app.telemetry.tracing.provider.get_tracer("test")

    @app.handler(retry=Retry(max_retries=0))
    async def audit(message: AuditLogMessage) -> None:
        raise ConnectionError("store is down")

    async with running(app):
        with tracer.start_as_current_span("request") as request:
            await app.bus.publish(
                AuditLogMessage(user_id=uuid.uuid4(), action="a", entity_type="U")
            )
        trace_id = f"{request.get_span_context().trace_id:032x}"
        await read_topic(bootstrap, f"{topic}.dlq", 1)
        [letter] = await read_dead_letters(app, [topic])
        assert await replay(app, [letter]) == 1
        records = await read_topic(bootstrap, topic, 2)
    # The caller's request span is the root; the replay joins the same trace.
    assert [traceparent(r)[0] for r in records] == [trace_id, trace_id]
    assert traceparent(records[0])[1] != traceparent(records[1])[1]


async def test_with_nothing_recording_what_a_handler_publishes_continues_the_trace(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    assert not app.telemetry.tracing.provider.recording
    bootstrap = settings.kafka.bootstrap_servers[0]

    @app.handler
    async def audit(message: AuditLogMessage) -> None:
        await app.bus.publish(UserEventMessage(user_id=message.user_id, event_type="audited"))

    async with running(app):
        await app.bus.publish(AuditLogMessage(user_id=uuid.uuid4(), action="a", entity_type="U"))
        [published] = await read_topic(bootstrap, settings.kafka.topics.audit_log, 1)
        [follow_up] = await read_topic(bootstrap, settings.kafka.topics.user_event, 1)
    trace_id, publish_span = traceparent(published)
    assert traceparent(follow_up)[0] == trace_id
    assert traceparent(follow_up)[1] != publish_span


def test_with_nothing_recording_the_trace_is_carried_by_hand() -> None:
    tracing = Telemetry(Settings()).tracing
    assert not tracing.provider.recording
    [(name, published)] = tracing.stamp("orders", None)
    assert name == "traceparent"
    version, trace_id, span_id, flags = published.decode().split("-")
    assert (version, len(trace_id), len(span_id), flags) == ("00", 32, 16, "01")

    with tracing.handling(
        "h", "orders", [[("dawning-attempt", b"0"), (name, published)]], attempt=0
    ):
        headers = tracing.stamp("orders.h.retry-1", [("dawning-attempt", b"1"), (name, published)])
    assert headers[0] == ("dawning-attempt", b"1")
    [(_, child)] = [h for h in headers if h[0] == "traceparent"]
    _, child_trace, child_span, _ = child.decode().split("-")
    assert child_trace == trace_id, "the handler's publish continues the publisher's trace"
    assert child_span != span_id

    # Outside a handler, a message's own context is kept (a replayed dead letter).
    [(_, replayed)] = tracing.stamp("orders", [(name, published)])
    assert replayed.decode().split("-")[1] == trace_id


def test_an_attempt_that_raises_is_counted_failed_and_the_error_goes_on() -> None:
    telemetry = Telemetry(Settings())
    with pytest.raises(ValueError), telemetry.attempt("h", "orders", [[]], attempt=0):
        raise ValueError("bad")
    with telemetry.attempt("h", "orders", [[], []], attempt=0) as run:
        assert run.ok
    counted = {
        (sample.name, sample.labels.get("outcome")): sample.value
        for family in text_string_to_metric_families(telemetry.metrics.render().decode())
        for sample in family.samples
        if sample.labels.get("handler") == "h"
    }
    assert counted[("dawning_handler_failed_total", None)] == 1
    assert counted[("dawning_handler_handled_total", None)] == 2
    assert counted[("dawning_handler_duration_seconds_count", "failed")] == 1
    assert counted[("dawning_handler_duration_seconds_count", "handled")] == 1


def test_a_batch_is_stamped_as_each_of_its_messages_would_be() -> None:
    tracing = Telemetry(Settings()).tracing
    [(_, published)] = tracing.stamp("orders", None)
    trace_id = published.decode().split("-")[1]
    with tracing.handling("h", "orders", [[("traceparent", published)]], attempt=0):
        stamp = tracing.stamper()  # publish_many from a handler: the handled trace goes on
        in_handler = [stamp("orders")[0][1].decode().split("-") for _ in range(3)]
    assert {parts[1] for parts in in_handler} == {trace_id}
    assert len({parts[2] for parts in in_handler}) == 3, "a span id each"
    stamp = tracing.stamper()  # anywhere else: a new trace each
    outside = [stamp("orders")[0][1].decode().split("-") for _ in range(3)]
    assert len({parts[1] for parts in outside}) == 3
    assert all((p[0], len(p[1]), len(p[2]), p[3]) == ("00", 32, 16, "01") for p in outside)
