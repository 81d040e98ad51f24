"""``GET /metrics`` after real traffic on the real broker: the values are what happened."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from opentelemetry.sdk.resources import Resource
from prometheus_client.parser import text_string_to_metric_families

from dawning_streams import AuditLogMessage, Reject, Retry, Settings, create_app
from dawning_streams.core.names import timers_table
from dawning_streams.core.settings import TelemetrySettings
from dawning_streams.observability.metrics import Metrics, RecentCounts

from ..handler_helpers import Calls, eventually, running
from ..kafka_helpers import read_topic

pytestmark = pytest.mark.kafka


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text page, keyed by name and labels (scope labels dropped)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(
                (k, v) for k, v in sample.labels.items() if not k.startswith("otel_scope")
            )
            found[(sample.name, labels)] = sample.value
    return found


def value(found: dict, name: str, **labels: str | int) -> float | None:  # type: ignore[type-arg]
    return found.get((name, frozenset((k, str(v)) for k, v in labels.items())))


async def scrape(settings: Settings) -> dict:  # type: ignore[type-arg]
    url = f"http://127.0.0.1:{settings.web.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        return samples(await response.text())


async def test_metrics_count_sends_handling_retries_dead_letters_lag_and_polls(
    settings: Settings,
) -> None:
    app = create_app(settings)
    calls = Calls()
    topic = settings.kafka.topics.audit_log

    @app.handler(retry=Retry(max_retries=1, backoff_s=0.2))
    async def audit(message: AuditLogMessage) -> None:
        calls.add(message.action)
        if message.action == "flaky" and calls.items.count("flaky") == 1:
            raise ConnectionError("first attempt fails")
        if message.action == "poison":
            raise Reject("never valid")

    async with running(app):
        actions = ["ok"] * 5 + ["flaky", "poison"]
        for action in actions:
            await app.bus.publish(
                AuditLogMessage(user_id=uuid.uuid4(), action=action, entity_type="User")
            )
        await calls.wait_until(lambda items: len(items) == 8)
        await read_topic(settings.kafka.bootstrap_servers[0], f"{topic}.dlq", 1)

        async def settled() -> dict | None:  # type: ignore[type-arg]
            found = await scrape(settings)
            lags = [
                v
                for (name, labels), v in found.items()
                if name == "kafka_consumer_lag" and ("topic", topic) in labels
            ]
            done = value(found, "dawning_handler_handled_total", handler="audit") == 6
            return found if done and len(lags) == 3 and sum(lags) == 0 else None

        found = await eventually(settled, timeout_s=30, what="handled 6 and lag 0 on /metrics")

    assert value(found, "kafka_producer_send_total", topic=topic, result="ok") == 7
    # The retry went into the timer table: its write, then its deletion after firing.
    changelog = app.tables[timers_table("audit")].changelog_topic.get_topic_name()
    assert value(found, "kafka_producer_send_total", topic=changelog, result="ok") == 2
    assert value(found, "kafka_producer_send_total", topic=f"{topic}.dlq", result="ok") == 1
    assert value(found, "dawning_handler_handled_total", handler="audit") == 6
    assert value(found, "dawning_handler_failed_total", handler="audit") == 2
    assert value(found, "dawning_handler_retried_total", handler="audit") == 1
    assert value(found, "dawning_handler_dead_lettered_total", handler="audit") == 1
    handled = value(
        found, "dawning_handler_duration_seconds_count", handler="audit", outcome="handled"
    )
    failed = value(
        found, "dawning_handler_duration_seconds_count", handler="audit", outcome="failed"
    )
    assert (handled, failed) == (6, 2)
    polls = value(found, "kafka_consumer_poll_time_seconds_count")
    assert polls is not None and polls > 0
    assert value(found, "kafka_consumer_poll_time_seconds_bucket", le="+Inf") == polls
    # Faust's own OpenTelemetry sensor records into the same registry.
    assert any(name == "faust_messages_sent_total" for name, _ in found)


async def test_lag_shows_what_the_group_has_not_yet_processed(settings: Settings) -> None:
    app = create_app(settings)
    calls = Calls()
    release = asyncio.Event()
    topic = settings.kafka.topics.audit_log
    user = uuid.uuid4()  # one key: every message on one partition

    @app.handler
    async def slow_audit(message: AuditLogMessage) -> None:
        calls.add(message.action)
        await release.wait()

    async with running(app):
        for n in range(5):
            await app.bus.publish(AuditLogMessage(user_id=user, action=f"a{n}", entity_type="User"))
        await calls.wait_until(lambda items: len(items) == 1)

        async def lag_of_4() -> dict | None:  # type: ignore[type-arg]
            found = await scrape(settings)
            lags = {
                dict(labels)["partition"]: v
                for (name, labels), v in found.items()
                if name == "kafka_consumer_lag" and ("topic", topic) in labels
            }
            # The first message is being handled, so nothing is committed yet.
            return found if sorted(lags.values())[-1:] == [5] and sum(lags.values()) == 5 else None

        await eventually(lag_of_4, timeout_s=30, what="lag 5 on one partition")
        release.set()
        await calls.wait_until(lambda items: len(items) == 5)


def test_recent_counts_keep_a_window_of_seconds() -> None:
    recent = RecentCounts(window_s=60)
    recent.add("h", "handled", now=1000.2)
    recent.add("h", "handled", 2, now=1000.9)
    recent.add("h", "handled", now=1030)
    recent.add("h", "failed", now=1030)
    assert recent.total("h", "handled", 60, now=1030) == 4
    assert recent.total("h", "handled", 10, now=1030) == 1
    assert recent.series("h", "handled", bucket_s=30, buckets=2, now=1030) == [3, 1]
    recent.add("h", "handled", now=1070)  # the first three fall out of the window
    assert recent.total("h", "handled", 3600, now=1070) == 2


def test_handler_duration_on_metrics_counts_every_attempt_in_its_bucket() -> None:
    metrics = Metrics(TelemetrySettings(), Resource.create({}))
    handled = [0.0004, 0.001, 0.003, 0.003, 0.2, 0.2, 0.2, 7.0, 61.0]
    for seconds in handled:
        metrics.attempt_ended("audit", seconds, ok=True)
    metrics.attempt_ended("audit", 0.02, ok=False, count=5)  # a batch: one attempt
    found = samples(metrics.render().decode())

    def bucket(outcome: str, le: str) -> float | None:
        return value(
            found,
            "dawning_handler_duration_seconds_bucket",
            handler="audit",
            outcome=outcome,
            le=le,
        )

    # Cumulative, a value equal to a bound counted in that bound's bucket.
    expected = {
        "0.001": 2, "0.005": 4, "0.01": 4, "0.025": 4, "0.05": 4, "0.1": 4, "0.25": 7,
        "0.5": 7, "1": 7, "2.5": 7, "5": 7, "10": 8, "30": 8, "60": 8, "+Inf": 9,
    }  # fmt: skip
    assert {le: bucket("handled", le) for le in expected} == expected
    count = value(
        found, "dawning_handler_duration_seconds_count", handler="audit", outcome="handled"
    )
    total = value(found, "dawning_handler_duration_seconds_sum", handler="audit", outcome="handled")
    assert count == 9
    assert total == pytest.approx(sum(handled))
    assert bucket("failed", "0.01") == 0 and bucket("failed", "0.025") == 1
    assert bucket("failed", "+Inf") == 1
    # Handled messages are counted per message, the duration per attempt.
    assert value(found, "dawning_handler_failed_total", handler="audit") == 5
