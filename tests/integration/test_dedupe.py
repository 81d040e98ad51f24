"""``dedupe=``: a handler skips a ``MessageId`` it finished, through a restart too."""

from __future__ import annotations

import uuid

import orjson
import pytest
from aiokafka import TopicPartition

from dawning_streams import Settings, UserEventMessage, create_app
from dawning_streams.core.retry import Retry

from ..handler_helpers import Calls, running
from ..kafka_helpers import produce_raw, read_to_end, rewind
from .test_metrics import samples, value

pytestmark = pytest.mark.kafka


def event(user: uuid.UUID, kind: str, **fields: object) -> UserEventMessage:
    return UserEventMessage(user_id=user, event_type=kind, **fields)  # type: ignore[arg-type]


def declare(settings: Settings, calls: Calls, *, fail_first: set[str] | None = None) -> object:
    app = create_app(settings, web_enabled=False)
    failing = set(fail_first or ())

    @app.handler(dedupe=True, retry=Retry(max_retries=2, backoff_s=0.2), name="counted")
    async def counted(message: UserEventMessage) -> None:
        if message.event_type in failing:
            failing.discard(message.event_type)
            raise ConnectionError("down for a moment")
        calls.add(message.event_type)

    return app


async def test_a_message_delivered_again_runs_once_and_the_next_worker_skips_it_too(
    settings: Settings,
) -> None:
    user = uuid.uuid4()
    repeated = event(user, "repeated")
    calls = Calls()
    first = declare(settings, calls)
    async with running(first):  # type: ignore[arg-type]
        await first.bus.publish(repeated)  # type: ignore[attr-defined]
        await first.bus.publish(repeated)  # type: ignore[attr-defined]
        # The same key, so the same partition: handled after both repeats.
        await first.bus.publish(event(user, "after"))  # type: ignore[attr-defined]
        await calls.wait_until(lambda items: "after" in items)
        skipped = first.handlers["counted"].dedupe.skipped  # type: ignore[attr-defined]
        metrics = first.telemetry.metrics.render().decode()  # type: ignore[attr-defined]
    assert calls.items == ["repeated", "after"]
    assert skipped == 1
    assert value(samples(metrics), "dawning_handler_skipped_total", handler="counted") == 1

    # A new worker recovers the ids from the changelog before it takes records.
    second = declare(settings, calls)
    async with running(second):  # type: ignore[arg-type]
        await second.bus.publish(repeated)  # type: ignore[attr-defined]
        await second.bus.publish(event(user, "last"))  # type: ignore[attr-defined]
        await calls.wait_until(lambda items: "last" in items)
    assert calls.items == ["repeated", "after", "last"]

    changelog = f"{settings.kafka.consumer_group_id}-counted-seen-changelog"
    records = await read_to_end(settings.kafka.bootstrap_servers[0], changelog)
    marked = {r.key: orjson.loads(r.value) for r in records}
    assert str(repeated.message_id).encode() in marked
    assert len(records) == 3  # one id per message handled, none for the skipped


async def test_a_message_that_failed_is_not_marked_and_its_retry_runs(settings: Settings) -> None:
    calls = Calls()
    app = declare(settings, calls, fail_first={"flaky"})
    async with running(app):  # type: ignore[arg-type]
        await app.bus.publish(event(uuid.uuid4(), "flaky"))  # type: ignore[attr-defined]
        await calls.wait_until(lambda items: "flaky" in items)
    assert calls.items == ["flaky"]


async def test_a_redelivered_record_without_a_message_id_runs_once_too(settings: Settings) -> None:
    """A raw producer's record with no MessageId gets a fresh id each time it is
    decoded; the handler goes by where it was first read instead."""
    calls = Calls()
    app = declare(settings, calls)
    topic = app.handlers["counted"].topic  # type: ignore[attr-defined]
    user = uuid.uuid4()
    bare = orjson.dumps(
        {"MessageType": "UserEventMessage", "UserId": str(user), "EventType": "bare"}
    )
    [receipt] = await produce_raw(
        settings.kafka.bootstrap_servers[0], topic, [bare], partition=0, key=str(user).encode()
    )
    async with running(app):  # type: ignore[arg-type]
        await calls.wait_until(lambda items: "bare" in items)
    await rewind(settings, TopicPartition(topic, 0))

    again = declare(settings, calls)
    async with running(again):  # type: ignore[arg-type]
        # Published after the rewind, on the same partition: handled after the repeat.
        await produce_raw(
            settings.kafka.bootstrap_servers[0],
            topic,
            [
                orjson.dumps(
                    {"MessageType": "UserEventMessage", "UserId": str(user), "EventType": "next"}
                )
            ],
            partition=0,
            key=str(user).encode(),
        )
        await calls.wait_until(lambda items: "next" in items)
        skipped = again.handlers["counted"].dedupe.skipped  # type: ignore[attr-defined]
    assert calls.items == ["bare", "next"]
    assert skipped == 1
    changelog = f"{settings.kafka.consumer_group_id}-counted-seen-changelog"
    keys = {r.key for r in await read_to_end(settings.kafka.bootstrap_servers[0], changelog)}
    assert f"{topic}/0/{receipt.offset}".encode() in keys
