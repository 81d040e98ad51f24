"""Handlers on the real broker: retries, their delays, ordering, dead letters, replay."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid

import pytest

from dawning_streams import (
    AuditLogMessage,
    HandlerError,
    Settings,
    UserEventMessage,
    application,
    create_app,
    decode,
    encode,
)
from dawning_streams.core.names import Header, dead_letter_topic
from dawning_streams.core.retry import Reject, Retry, RetryLater
from dawning_streams.handlers.routing import Routing

from ..handler_helpers import Calls, eventually, running, same_partition_users
from ..kafka_helpers import produce_raw, read_topic

pytestmark = pytest.mark.kafka

FAST = Retry(max_retries=3, backoff_s=0.5)


def event(user: uuid.UUID, kind: str) -> UserEventMessage:
    return UserEventMessage(user_id=user, event_type=kind)


async def test_a_failing_message_is_retried_after_the_configured_delays(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler(retry=FAST)
    async def always_fails(message: UserEventMessage) -> None:
        calls.add(message.event_type)
        raise ConnectionError("SMTP is down")

    async with running(app):
        await always_fails.delay(event(uuid.uuid4(), "e"))
        await calls.wait_until(lambda items: len(items) == 4)
    times = [t for t, _ in calls.seen]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Never earlier than the delay; how much later depends on the machine
    # (the 30 s is a liveness limit, not a promise).
    for gap, wanted in zip(gaps, [0.5, 1.0, 2.0], strict=True):
        assert wanted - 0.05 <= gap <= wanted + 30, gaps


async def test_a_handler_filling_the_producer_buffer_waits_quietly_and_every_write_lands(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings, web_enabled=False)
    table = app.Table("bulk", default=None, partitions=settings.kafka.partitions, key_type=bytes)
    calls = Calls()
    writes = 600  # the buffer holds 100 before a writer must wait

    @app.handler()
    async def bulk(message: UserEventMessage) -> None:
        for n in range(writes):
            table[f"{message.event_type}:{n}".encode()] = n
        calls.add(message.event_type)

    async with running(app):
        for kind in ("a", "b", "c"):
            await bulk.delay(event(uuid.uuid4(), kind))
        await calls.wait_until(lambda items: len(items) == 3)
        changelog = table.changelog_topic.get_topic_name()
        records = await read_topic(settings.kafka.bootstrap_servers[0], changelog, 3 * writes)
        metrics = app.telemetry.metrics.render().decode()
    assert sorted(calls.items) == ["a", "b", "c"]
    assert len({r.key for r in records}) == 3 * writes
    assert not [r for r in caplog.records if "producer buffer full" in r.getMessage()]
    [high_water] = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("dawning_producer_buffer{") and 'kind="high_water"' in line
    ]
    assert high_water > 100


def test_the_default_delays_are_the_seeds_2_4_8_seconds() -> None:
    assert [Retry().delay_s(n) for n in (1, 2, 3)] == [2, 4, 8]
    assert Retry(backoff_s=2, max_backoff_s=5).delay_s(3) == 5
    spread = {round(Retry(jitter=0.1).delay_s(1), 6) for _ in range(50)}
    assert len(spread) > 1 and all(1.8 <= d <= 2.2 for d in spread)


async def test_a_good_message_behind_a_failing_one_is_not_held_up(settings: Settings) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()
    bad_user, good_user = same_partition_users(2)

    @app.handler(retry=Retry(max_retries=1, backoff_s=1.5))
    async def flaky(message: UserEventMessage) -> None:
        if message.event_type == "bad" and "bad-failed" not in calls.items:
            calls.add("bad-failed")
            raise ConnectionError("first try fails")
        calls.add(message.event_type)

    async with running(app):
        await flaky.delay(event(bad_user, "bad"))
        await flaky.delay(event(good_user, "good"))
        await calls.wait_until(lambda items: "bad" in items)
    assert calls.items == ["bad-failed", "good", "bad"]


async def test_an_ordered_handler_keeps_a_keys_later_messages_behind_its_retry(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()
    user, other = same_partition_users(2)
    failed_once: set[str] = set()

    @app.handler(retry=Retry(max_retries=2, backoff_s=1.0), ordered=True)
    async def ordered(message: UserEventMessage) -> None:
        if message.event_type == "first" and "first" not in failed_once:
            failed_once.add("first")
            raise ConnectionError("first try fails")
        who = "user" if message.user_id == user else "other"
        calls.add(f"{who}:{message.event_type}")

    async with running(app):
        await ordered.delay(event(user, "first"))
        await ordered.delay(event(user, "second"))
        await ordered.delay(event(other, "unrelated"))
        await ordered.delay(event(user, "third"))
        await calls.wait_until(lambda items: len(items) == 4)
        await eventually(lambda: ordered.timers.holder(str(user)) is None, what="key released")
    assert calls.items == ["other:unrelated", "user:first", "user:second", "user:third"]


async def test_an_ordered_keys_parked_messages_wait_through_every_retry(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()
    [user] = same_partition_users(1)
    failures = {"first": 2, "second": 1}

    @app.handler(retry=Retry(max_retries=3, backoff_s=0.3), ordered=True)
    async def ordered(message: UserEventMessage) -> None:
        if failures.get(message.event_type, 0) > 0:
            failures[message.event_type] -= 1
            raise ConnectionError(f"{message.event_type} fails")
        calls.add(message.event_type)

    async with running(app):
        for kind in ("first", "second", "third"):
            await ordered.delay(event(user, kind))
        await calls.wait_until(lambda items: len(items) == 3)
    assert calls.items == ["first", "second", "third"]


async def test_after_the_last_retry_the_message_is_dead_lettered_with_every_header(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler(retry=Retry(max_retries=2, backoff_s=0.2))
    async def doomed(message: AuditLogMessage) -> None:
        calls.add(message.message_id)
        raise ConnectionError("mail server said no")

    message = AuditLogMessage(user_id=uuid.uuid4(), action="login", entity_type="User")
    async with running(app):
        ack = await doomed.delay(message)
        await calls.wait_until(lambda items: len(items) == 3)
        dlq = dead_letter_topic(settings.kafka.topics.audit_log)
        [letter] = await read_topic(settings.kafka.bootstrap_servers[0], dlq, 1)
    headers = {k: v.decode() for k, v in letter.headers}
    assert decode(letter.value, AuditLogMessage).message_id == message.message_id
    assert letter.key == str(message.user_id).encode()
    assert letter.partition == ack.partition
    assert headers[Header.ORIGINAL_TOPIC] == settings.kafka.topics.audit_log
    assert headers[Header.ORIGINAL_PARTITION] == str(ack.partition)
    assert headers[Header.ORIGINAL_OFFSET] == str(ack.offset)
    assert headers[Header.ORIGINAL_KEY] == str(message.user_id)
    assert headers[Header.ATTEMPT] == "3"
    assert headers[Header.HANDLER] == "doomed"
    assert headers[Header.EXCEPTION_TYPE] == "builtins.ConnectionError"
    assert headers[Header.EXCEPTION_MESSAGE] == "mail server said no"
    assert "Traceback" in headers[Header.TRACEBACK] and "doomed" in headers[Header.TRACEBACK]
    assert headers[Header.FIRST_FAILED_AT] < headers[Header.LAST_FAILED_AT]
    assert Header.DUE_MS not in headers


async def test_poison_bytes_are_dead_lettered_at_once_and_the_worker_goes_on(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler
    async def audit(message: AuditLogMessage) -> None:
        calls.add(message.action)

    topic = settings.kafka.topics.audit_log
    poison = [
        b"\x00\xff not json",
        b'{"UserId": 7}',
        b'{"MessageType": "Nope"}',
        # A valid time that is before year 1 once in UTC.
        b'{"UserId": "9f706e05-3812-4496-a6d4-6f1f5f5e0512", "Action": "a", "EntityType": "b",'
        b' "Timestamp": "0001-01-01T00:00:00+01:00"}',
    ]
    async with running(app):
        await produce_raw(settings.kafka.bootstrap_servers[0], topic, poison, partition=1)
        await audit.delay(AuditLogMessage(user_id=uuid.uuid4(), action="after", entity_type="U"))
        await calls.wait_until(lambda items: items == ["after"])
        letters = await read_topic(settings.kafka.bootstrap_servers[0], dead_letter_topic(topic), 4)
    assert [letter.value for letter in letters] == poison
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers[Header.ATTEMPT] == "1"
        assert headers[Header.EXCEPTION_TYPE] == "dawning_streams.core.errors.MessageDecodeError"
    reasons = [dict(letter.headers)[Header.EXCEPTION_MESSAGE].decode() for letter in letters]
    assert reasons[0].startswith("not JSON")
    assert reasons[1] == "field UserId: expected a GUID string, got a number"
    assert reasons[2] == "unknown MessageType 'Nope'"
    assert reasons[3] == "field Timestamp: '0001-01-01T00:00:00+01:00' is out of range in UTC"


async def test_reject_skips_the_retries_and_retry_later_picks_its_delay(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler(retry=Retry(max_retries=3, backoff_s=30))
    async def picky(message: UserEventMessage) -> None:
        calls.add(message.event_type)
        if message.event_type == "invalid":
            raise Reject("no such user")
        if calls.items.count("later") == 1:
            raise RetryLater(0.5)

    async with running(app):
        await picky.delay(event(uuid.uuid4(), "invalid"))
        await picky.delay(event(uuid.uuid4(), "later"))
        await calls.wait_until(lambda items: items.count("later") == 2)
        dlq = dead_letter_topic(settings.kafka.topics.user_event)
        [letter] = await read_topic(settings.kafka.bootstrap_servers[0], dlq, 1)
    assert dict(letter.headers)[Header.EXCEPTION_MESSAGE] == b"no such user"
    later = [t for t, item in calls.seen if item == "later"]
    # Never before the 0.5 s it asked for; and its delay, not the policy's 30 s
    # (the bound is far from both, so a loaded machine cannot fail it).
    assert 0.45 <= later[1] - later[0] < 15


async def test_a_retry_that_cannot_be_scheduled_is_dead_lettered_not_left_behind(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler(retry=Retry(max_retries=3, backoff_s=30))
    async def later(message: UserEventMessage) -> None:
        calls.add(message.event_type)
        if message.event_type == "far":
            raise RetryLater(31 * 86400)  # past Timers:MaxDelayDays (30)
        if message.event_type == "broken":
            raise RuntimeError("boom")

    def unschedulable(*args: object) -> None:
        # A fault inside the framework while making the retry's timer.
        raise ValueError("cannot make this timer")

    async with running(app):
        await later.delay(event(uuid.uuid4(), "far"))
        dlq = dead_letter_topic(settings.kafka.topics.user_event)
        [far] = await read_topic(settings.kafka.bootstrap_servers[0], dlq, 1)
        monkeypatch.setattr(Routing, "retry_timer", unschedulable)
        await later.delay(event(uuid.uuid4(), "broken"))
        letters = await read_topic(settings.kafka.bootstrap_servers[0], dlq, 2)
    assert dict(far.headers)[Header.EXCEPTION_MESSAGE].decode() == (
        "RetryLater asked for 2678400 s (31.0 days), more than Timers:MaxDelayDays (30)"
        " ahead (retry requested in 2678400 s)"
    )
    # Read partition by partition: told apart by what they carry, not by their place.
    [broken] = [
        dict(letter.headers)
        for letter in letters
        if decode(letter.value, UserEventMessage).event_type == "broken"
    ]
    # The handler's own failure, with why it was not retried.
    assert broken[Header.EXCEPTION_TYPE] == b"builtins.RuntimeError"
    assert broken[Header.EXCEPTION_MESSAGE] == b"boom"
    assert (
        b"Its retry could not be scheduled: ValueError: cannot make this timer"
        in broken[Header.TRACEBACK]
    )
    assert calls.items == ["far", "broken"]


async def test_apply_async_with_a_countdown_runs_no_earlier(settings: Settings) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler
    async def remind(message: UserEventMessage) -> None:
        calls.add(message.event_type)

    async with running(app):
        sent = asyncio.get_running_loop().time()
        await remind.apply_async(event(uuid.uuid4(), "reminder"), countdown_s=1.0)
        await calls.wait_until(lambda items: items == ["reminder"])
        assert asyncio.get_running_loop().time() - sent >= 1.0


async def test_a_message_too_large_to_dead_letter_is_logged_and_the_partition_moves_on(
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler
    async def audit(message: AuditLogMessage) -> None:
        calls.add(message.action)

    topic = settings.kafka.topics.audit_log
    # Fits the broker's 1 MiB limit on its own, but not with the failure
    # headers (Kafka:Producer:MaxRequestBytes counts key, value and headers, as
    # librdkafka does); random, so compression cannot make it fit.
    huge = os.urandom(1_048_000)
    async with running(app):
        [sent] = await produce_raw(settings.kafka.bootstrap_servers[0], topic, [huge], partition=0)
        user = same_partition_users(1)[0]
        await audit.delay(AuditLogMessage(user_id=user, action="after", entity_type="U"))
        await calls.wait_until(lambda items: items == ["after"])
    [record] = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert f"{topic}/0/{sent.offset}" in record.getMessage()


async def test_a_batch_handler_goes_on_with_the_batch_when_a_dead_letter_is_refused(
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler(batch_size=10, batch_within_s=1.0)
    async def audit(messages: list[AuditLogMessage]) -> None:
        calls.add([m.action for m in messages])

    topic = settings.kafka.topics.audit_log
    user = same_partition_users(1)[0]
    after = AuditLogMessage(user_id=user, action="after", entity_type="U")
    values = [os.urandom(1_048_000), encode(after)]
    async with running(app):
        sent = await produce_raw(settings.kafka.bootstrap_servers[0], topic, values, partition=0)
        await calls.wait_until(lambda items: ["after"] in items)
    [record] = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert f"{topic}/0/{sent[0].offset}" in record.getMessage()


async def test_an_attempt_past_timeout_s_is_cancelled_and_retried(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Named after LONG_ATTEMPT_S (1 s here) while it hangs, by the 10 s watch.
    monkeypatch.setattr(application, "LONG_ATTEMPT_S", 1.0)
    app = create_app(settings, web_enabled=False)
    calls = Calls()
    cancelled = []

    # Long enough for two of the watch's looks, 10 s apart, to see it hang.
    @app.handler(retry=Retry(max_retries=1, backoff_s=0.5), timeout_s=25)
    async def slow(message: UserEventMessage) -> None:
        calls.add(message.event_type)
        if calls.items.count(message.event_type) == 1:
            try:
                await asyncio.sleep(3600)  # hangs on its first attempt
            except asyncio.CancelledError:
                cancelled.append(message.event_type)
                raise

    async with running(app):
        await slow.delay(event(uuid.uuid4(), "hangs once"))
        await calls.wait_until(lambda items: items == ["hangs once"] * 2, timeout_s=60)
    assert cancelled == ["hangs once"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        w.startswith("slow has been handling ") and "; its lane takes no other record" in w
        for w in warnings
    ), warnings
    assert any(
        "failed (HandlerTimeout: slow did not finish within timeout_s=25); retry 1 of 1" in w
        for w in warnings
    ), warnings


@pytest.mark.parametrize("timeout_s", [0, -1, float("nan"), "5", True])
def test_timeout_s_must_be_a_positive_number_of_seconds(
    settings: Settings, timeout_s: object
) -> None:
    app = create_app(settings, web_enabled=False)
    with pytest.raises(HandlerError, match="timeout_s must be a positive number of seconds"):

        @app.handler(timeout_s=timeout_s)
        async def bad(message: UserEventMessage) -> None: ...


def test_timeout_s_is_refused_for_a_handler_run_in_a_thread(settings: Settings) -> None:
    app = create_app(settings, web_enabled=False)
    with pytest.raises(HandlerError, match="timeout_s needs an async handler"):

        @app.handler(timeout_s=5)
        def blocking(message: UserEventMessage) -> None: ...
