"""``dedupe=``: a handler skips a ``MessageId`` it finished, through a restart too."""

from __future__ import annotations

import uuid

import orjson
import pytest

from dawning_streams import Settings, UserEventMessage, create_app
from dawning_streams.core.retry import Retry

from ..handler_helpers import Calls, running
from ..kafka_helpers import read_to_end

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
    assert calls.items == ["repeated", "after"]
    assert skipped == 1

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
