"""Durable timers on the real broker: countdowns, etas, expiry, revocation,
retries that never hold each other back, and what a handler knows of its delivery."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dawning_streams import (
    App,
    AuditLogMessage,
    Settings,
    UserEventMessage,
    create_app,
    current_delivery,
)
from dawning_streams.core.names import Header, dead_letter_topic
from dawning_streams.core.retry import Retry
from dawning_streams.core.settings import RedisSettings, TimerSettings
from dawning_streams.handlers.timers import pending_timers
from dawning_streams.kafka.reading import read_to_end
from dawning_streams.observability.health import readiness
from dawning_streams.ops import search

from ..conftest import free_port
from ..handler_helpers import Calls, consumer_state, eventually, running, same_partition_users
from ..kafka_helpers import partition_count, produce_raw, read_topic

pytestmark = pytest.mark.kafka


def event(user: uuid.UUID, kind: str) -> UserEventMessage:
    return UserEventMessage(user_id=user, event_type=kind)


def reminders(settings: Settings) -> tuple[App, Calls]:
    """An app with one handler, ``remind``, that notes each event type and when."""
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler(UserEventMessage, name="remind")
    async def remind(message: UserEventMessage) -> None:
        calls.add(message.event_type)

    return app, calls


async def test_a_timer_due_later_never_holds_back_one_due_sooner(settings: Settings) -> None:
    app, calls = reminders(settings)
    remind = app.handlers["remind"]
    user, other = same_partition_users(2)
    async with running(app):
        sent = time.time()
        await remind.apply_async(event(user, "in 30 s"), countdown_s=30)
        await remind.apply_async(event(user, "same key in 2 s"), countdown_s=2)
        await remind.apply_async(event(other, "other key in 2 s"), countdown_s=2)
        await calls.wait_until(lambda items: len(items) == 2, timeout_s=20)
        assert remind.timers.stats().pending == 1
    assert sorted(calls.items) == ["other key in 2 s", "same key in 2 s"]
    assert all(at - sent >= 2.0 for at, _ in calls.seen), calls.seen


async def test_eta_runs_no_earlier_and_an_expired_message_is_dead_lettered_instead(
    settings: Settings,
) -> None:
    app, calls = reminders(settings)
    remind = app.handlers["remind"]
    eta = datetime.now(UTC) + timedelta(seconds=1.5)
    late = event(uuid.uuid4(), "expired")
    async with running(app):
        await remind.apply_async(event(uuid.uuid4(), "at eta"), eta=eta)
        await remind.apply_async(late, countdown_s=1.0, expires=0.2)
        await remind.apply_async(event(uuid.uuid4(), "expires later"), expires=60)
        await calls.wait_until(lambda items: len(items) == 2, timeout_s=20)
        dlq = dead_letter_topic(settings.kafka.topics.user_event)
        [letter] = await read_topic(settings.kafka.bootstrap_servers[0], dlq, 1)
        metrics = app.telemetry.metrics.render().decode()
    ran = dict((item, at) for at, item in calls.seen)
    assert set(ran) == {"at eta", "expires later"}
    assert ran["at eta"] >= eta.timestamp()
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers[Header.EXCEPTION_TYPE] == "dawning_streams.core.retry.Expired"
    assert headers[Header.EXCEPTION_MESSAGE].startswith("expired at ")
    assert headers[Header.ATTEMPT] == "0"  # it expired before its first try
    assert str(late.message_id).encode() in letter.value  # type: ignore[operator]
    [expired] = [
        line for line in metrics.splitlines() if line.startswith("dawning_handler_expired_total{")
    ]
    assert 'handler="remind"' in expired and expired.endswith(" 1.0")


async def test_revoke_cancels_a_pending_countdown_for_good_and_says_when_nothing_was_pending(
    settings: Settings,
) -> None:
    app, calls = reminders(settings)
    remind = app.handlers["remind"]
    user = uuid.uuid4()
    doomed = event(user, "revoked")
    doomed_too = event(user, "revoked with no event loop")
    async with running(app):
        due = time.time() + 3
        await remind.apply_async(doomed, countdown_s=3)
        await remind.apply_async(doomed_too, countdown_s=3)
        assert await remind.revoke(doomed.message_id) is True
        # From a thread with no event loop, as a script or a Flask view calls it.
        revoked = await asyncio.to_thread(lambda: remind.revoke(doomed_too.message_id).result())
        assert revoked is True
        assert await remind.revoke(doomed.message_id) is False  # already revoked
        assert await remind.revoke(uuid.uuid4()) is False  # never known
        with pytest.raises(ValueError, match="revoke takes a message's MessageId"):
            await remind.revoke("not-a-guid")
        # "Where is my message?" says so, by id and by key (no offsets needed).
        snapshot = app.sampler.snapshot
        by_id = await search.find(app, snapshot, message_id=doomed.message_id)
        by_key = await search.find(app, snapshot, key=str(user))
        assert [(f.message_id, f.state) for f in by_id.found] == [
            (str(doomed.message_id), "revoked")
        ]
        assert by_id.found[0].detail.startswith("revoke() before it was due")
        assert sorted((f.message_id, f.state) for f in by_key.found) == sorted(
            (str(m.message_id), "revoked") for m in (doomed, doomed_too)
        )
    # A worker that starts afresh recovers the table without it.
    again, seen = reminders(settings)
    async with running(again):
        marker_in = max(0.5, due + 1 - time.time())
        await again.handlers["remind"].apply_async(event(user, "marker"), countdown_s=marker_in)
        await seen.wait_until(lambda items: "marker" in items, timeout_s=30)
    assert calls.items == [] and seen.items == ["marker"]


async def test_a_countdown_read_again_after_it_fired_does_not_run_again_even_after_a_restart(
    settings: Settings,
) -> None:
    """Its timers-topic record is read again when its offset was not committed (a
    worker stopped during an outage); the fired timer must not come back."""
    app, calls = reminders(settings)
    remind = app.handlers["remind"]
    message = event(uuid.uuid4(), "once")
    async with running(app):
        await remind.apply_async(message, countdown_s=0.5)
        await calls.wait_until(lambda items: items == ["once"], timeout_s=20)
        [record] = await read_topic(settings.kafka.bootstrap_servers[0], remind.timers_topic, 1)
        await remind.timers._take([record])
        assert remind.timers.pending(str(message.message_id)) is None
    # A worker that starts afresh recovers what was taken from the changelog.
    again, seen = reminders(settings)
    async with running(again):
        timers = again.handlers["remind"].timers
        await eventually(lambda: timers.owns(record.partition), 30, "the partition recovered")
        await timers._take([record])
        assert timers.pending(str(message.message_id)) is None
        marker = event(uuid.uuid4(), "marker")
        await again.handlers["remind"].apply_async(marker, countdown_s=0.2)
        await seen.wait_until(lambda items: "marker" in items, timeout_s=20)
    assert calls.items == ["once"] and seen.items == ["marker"]


async def test_unreadable_entries_in_the_timer_table_are_named_and_the_other_timers_fire(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app, calls = reminders(settings)
    remind = app.handlers["remind"]
    bootstrap = settings.kafka.bootstrap_servers[0]
    async with running(app):
        # Due after this worker has stopped: the next one recovers it from the changelog.
        await remind.apply_async(event(uuid.uuid4(), "recovered"), countdown_s=15)
        changelog = remind.timers.table.changelog_topic.get_topic_name()
    # Written by something else: not JSON, and a timer without its message.
    for partition in range(await partition_count(bootstrap, changelog)):
        await produce_raw(bootstrap, changelog, [b"garbage"], partition=partition, key=b"t:junk")
        half = b'{"p": %d, "due": 1}' % partition
        await produce_raw(bootstrap, changelog, [half], partition=partition, key=b"t:half")
    again, seen = reminders(settings)
    async with running(again):
        await again.handlers["remind"].apply_async(event(uuid.uuid4(), "new"), countdown_s=0.2)
        await seen.wait_until(lambda items: sorted(items) == ["new", "recovered"], timeout_s=60)
        report = (await pending_timers(again, ["remind"]))["remind"]
    assert calls.items == []
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(
        f"(changelog {changelog}) cannot be read and are skipped, the other timers are not:"
        " b't:junk': JSONDecodeError: " in e
        for e in errors
    ), errors
    assert any("b't:half': no 'a'" in e for e in errors), errors
    # Kept in the changelog for an operator, and listed, not counted.
    assert report["unreadable"]["b't:junk'"].startswith("JSONDecodeError: ")
    assert report["unreadable"]["b't:half'"] == "no 'a'"
    assert report["pending"] == 0


async def test_revoking_a_message_that_already_ran_says_so(settings: Settings) -> None:
    app, calls = reminders(settings)
    remind = app.handlers["remind"]
    message = event(uuid.uuid4(), "ran")
    async with running(app):
        await remind.apply_async(message, countdown_s=0.2)
        await calls.wait_until(lambda items: items == ["ran"])
        await eventually(lambda: remind.timers.stats().pending == 0, what="the timer deleted")
        assert await remind.revoke(message.message_id) is False


@pytest.mark.parametrize(
    ("timing", "named"),
    [
        ({"countdown_s": -1}, "countdown_s must not be negative, got -1"),
        ({"countdown_s": "5"}, "countdown_s must be a number of seconds, got '5'"),
        ({"countdown_s": 31 * 86400}, "more than Timers:MaxDelayDays (30) ahead"),
        ({"eta": datetime(2030, 1, 1, 12)}, "naive 2030-01-01T12:00:00"),
        ({"eta": datetime.now(UTC) + timedelta(days=31)}, "more than Timers:MaxDelayDays"),
        ({"countdown_s": 1, "eta": datetime.now(UTC)}, "give countdown_s or eta, not both"),
        ({"expires": -5}, "expires must be positive seconds, got -5"),
        ({"expires": datetime(2030, 1, 1)}, "expires must be an aware datetime"),
        ({"expires": datetime(2020, 1, 1, tzinfo=UTC)}, "expires=2020-01-01T00:00:00+00:00 has"),
    ],
)
async def test_bad_timing_raises_a_value_error_naming_it_and_publishes_nothing(
    settings: Settings, timing: dict[str, object], named: str
) -> None:
    app, calls = reminders(settings)
    remind = app.handlers["remind"]
    async with running(app):
        with pytest.raises(ValueError) as raised:
            await remind.apply_async(event(uuid.uuid4(), "bad"), **timing)  # type: ignore[arg-type]
        assert named in str(raised.value)
        await remind.delay(event(uuid.uuid4(), "marker"))
        await calls.wait_until(lambda items: items == ["marker"])
        records = await read_to_end(settings.kafka, [remind.topic, remind.timers_topic])
    assert [record.topic for record in records] == [remind.topic]


async def test_a_handler_knows_its_attempt_and_where_its_message_came_from(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    seen = []

    @app.handler(retry=Retry(max_retries=2, backoff_s=0.3))
    async def flaky(message: AuditLogMessage) -> None:
        seen.append(current_delivery())
        if len(seen) == 1:
            raise ConnectionError("first attempt fails")

    message = AuditLogMessage(user_id=uuid.uuid4(), action="a", entity_type="U")
    async with running(app):
        ack = await flaky.delay(message)
        await eventually(lambda: len(seen) == 2, what="the retry")
    first, second = seen
    assert ack is not None
    for delivery in (first, second):
        assert delivery.handler == "flaky"
        assert delivery.message_id == str(message.message_id)
        assert (delivery.topic, delivery.partition, delivery.offset) == (
            settings.kafka.topics.audit_log,
            ack.partition,
            ack.offset,
        )
    assert (first.attempt, first.first_failed_at) == (0, None)
    assert second.attempt == 1 and second.first_failed_at is not None
    with pytest.raises(RuntimeError, match="only known inside a handler"):
        current_delivery()


async def test_an_ordered_key_waits_on_its_retry_while_others_flow_and_parked_ones_know_themselves(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()
    user, other = same_partition_users(2)
    failed: set[str] = set()

    @app.handler(retry=Retry(max_retries=3, backoff_s=1.0), ordered=True)
    async def ordered(message: UserEventMessage) -> None:
        if message.event_type == "first" and not failed:
            failed.add("first")
            raise ConnectionError("first try fails")
        delivery = current_delivery()
        calls.add((message.event_type, delivery.attempt, delivery.message_id, delivery.offset))

    async with running(app):
        acks = {}
        for who, kind in (
            (user, "first"),
            (user, "second"),
            (other, "other-1"),
            (other, "other-2"),
        ):
            acks[kind] = await ordered.delay(e := event(who, kind)), str(e.message_id)
        await calls.wait_until(lambda items: len(items) == 2)
        # The other key flowed while the first waits on its 1 s retry.
        assert [item[0] for item in calls.items] == ["other-1", "other-2"]  # type: ignore[index]
        assert ordered.timers.holder(str(user)) == acks["first"][1]
        assert ordered.timers.stats().parked == 1
        await calls.wait_until(lambda items: len(items) == 4)
        await eventually(lambda: ordered.timers.holder(str(user)) is None, what="the release")

        async def released() -> bool:
            report = (await pending_timers(app, ["ordered"]))["ordered"]
            return report["held"] == {} and report["pending"] == 0

        # What the next owner would recover: the table's changelog, read from outside.
        await eventually(released, timeout_s=30, what="an empty timer table on the changelog")
    kinds = [item[0] for item in calls.items]  # type: ignore[index]
    assert kinds == ["other-1", "other-2", "first", "second"]
    by_kind = {item[0]: item[1:] for item in calls.items}  # type: ignore[index]
    assert by_kind["first"][0] == 1
    # The parked message is told its own delivery, not the retry's that released it.
    ack, message_id = acks["second"]
    assert by_kind["second"] == (0, message_id, ack.offset)  # type: ignore[union-attr]


async def test_timers_move_with_their_partitions_when_a_worker_joins(settings: Settings) -> None:
    first_app, first = reminders(settings)
    second_app, second = reminders(settings)
    users = [uuid.uuid4() for _ in range(30)]
    due: dict[str, float] = {}
    async with running(first_app):
        remind = first_app.handlers["remind"]
        for n in range(60):
            delay = 6 + (n % 20) / 10
            due[str(n)] = time.time() + delay
            await remind.apply_async(event(users[n % 30], str(n)), countdown_s=delay)
        async with running(second_app):
            await eventually(
                lambda: set(first.items) | set(second.items) >= set(due),
                timeout_s=60,
                what="every timer fired",
                explain=lambda: "\n".join(map(consumer_state, (first_app, second_app))),
            )
    assert second.items, "the joining worker was given no timer partition"
    for calls in (first, second):
        for at, item in calls.seen:
            assert at >= due[str(item)], f"{item} fired {due[str(item)] - at:.3f} s early"


async def test_the_timers_command_lists_held_keys_and_held_release_dead_letters_the_holder(
    settings: Settings, tmp_path: Path
) -> None:
    # Named as the Dawning app's ordered handler, so `faust -A dawning_streams.app`
    # (given these settings) reads the same timer table.
    app = create_app(settings, web_enabled=False)
    calls = Calls()

    @app.handler(UserEventMessage, retry=Retry(max_retries=3, backoff_s=600), ordered=True)
    async def track_user_event(message: UserEventMessage) -> None:
        if message.event_type == "fail":
            raise ConnectionError("the store is down")
        calls.add(message.event_type)

    env = {**os.environ, **settings.to_environ()}
    faust = [str(Path(sys.executable).with_name("faust")), "-A", "dawning_streams.app"]

    async def command(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [*faust, *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
        )

    user = uuid.uuid4()
    failing = event(user, "fail")
    async with running(app):
        await track_user_event.delay(failing)
        await track_user_event.delay(event(user, "after"))

        async def held() -> bool:
            report = (await pending_timers(app, ["track_user_event"]))["track_user_event"]
            entry = report["held"].get(str(user))
            return entry is not None and entry["parked"] == 1

        await eventually(held, timeout_s=30, what="the key held with one parked message")
        listed = await command("timers", "--handler", "track_user_event")
        released = await command(
            "held-release", "--handler", "track_user_event", "--key", str(user)
        )
        await calls.wait_until(lambda items: items == ["after"], timeout_s=30)
        dlq = dead_letter_topic(settings.kafka.topics.user_event)
        [letter] = await read_topic(settings.kafka.bootstrap_servers[0], dlq, 1)
        await eventually(lambda: track_user_event.timers.holder(str(user)) is None, what="release")
    unknown = await command("timers", "--handler", "nope")
    unordered = await command("held-release", "--handler", "notify_alert", "--key", "k")
    assert listed.returncode == 0, listed.stderr
    assert "track_user_event: 1 pending, next due " in listed.stdout
    assert f"held {user}: waits on {failing.message_id}" in listed.stdout
    assert "1 parked, partition " in listed.stdout
    assert released.returncode == 0, released.stderr
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers[Header.EXCEPTION_MESSAGE] == "released by an operator"
    assert headers[Header.ATTEMPT] == "1"  # its first try; the retry it waited on did not run
    assert str(failing.message_id).encode() in letter.value  # type: ignore[operator]
    assert unknown.returncode == 2 and "no handler named nope; this app, with " in unknown.stderr
    assert "(set DAWNING_WORKER__MODULES as the workers have it)" in unknown.stderr
    assert unordered.returncode == 2
    assert "notify_alert is not an ordered handler (ordered=True)" in unordered.stderr


async def test_a_key_held_past_its_retrys_due_time_is_reported_stuck_until_it_runs(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(settings, timers=TimerSettings(stuck_after_s=1))
    app = create_app(settings, web_enabled=False)
    calls = Calls()
    user, slow = same_partition_users(2)
    failed: set[str] = set()

    @app.handler(retry=Retry(max_retries=2, backoff_s=0.5), ordered=True)
    async def ordered(message: UserEventMessage) -> None:
        if message.event_type == "fail once" and not failed:
            failed.add("once")
            raise ConnectionError("fails once")
        if message.event_type == "slow":
            await asyncio.sleep(6)  # holds the handler's one timer slot
        calls.add(message.event_type)

    def stuck_gauge() -> str:
        [line] = [
            line
            for line in app.telemetry.metrics.render().decode().splitlines()
            if line.startswith("dawning_timers_stuck_keys{")
        ]
        return line.rsplit(" ", 1)[1]

    async with running(app):
        await ordered.apply_async(event(slow, "slow"), countdown_s=0.2)
        await asyncio.sleep(0.5)  # the slow one is running
        await ordered.delay(event(user, "fail once"))
        stuck = await eventually(
            lambda: readiness(app)["checks"]["timers"]["stuck_keys"],
            timeout_s=20,
            what="the held key reported stuck",
        )
        assert readiness(app)["ready"] is False
        assert stuck_gauge() == "1.0"
        await calls.wait_until(lambda items: "fail once" in items, timeout_s=30)
        await eventually(
            lambda: readiness(app)["checks"]["timers"]["ok"], timeout_s=10, what="unstuck"
        )
        assert stuck_gauge() == "0.0"
    assert stuck == {"ordered": [str(user)]}


async def test_revoke_with_redis_down_says_the_answer_is_unknown_and_still_revokes(
    settings: Settings,
) -> None:
    app, calls = reminders(settings)
    remind = app.handlers["remind"]
    message = event(uuid.uuid4(), "revoked without Redis")
    # A caller whose Redis does not answer: the revocation goes through Kafka.
    blind = dataclasses.replace(
        settings, redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0")
    )
    caller, _ = reminders(blind)
    async with running(app):
        await remind.apply_async(message, countdown_s=2)
        async with caller.bus:
            with pytest.raises(
                TimeoutError, match=r"Redis did not answer .*; the revocation is on "
            ):
                await caller.handlers["remind"].revoke(message.message_id, timeout_s=5)
        await eventually(lambda: remind.timers.stats().pending == 0, what="the timer revoked")
        await asyncio.sleep(3)
    assert calls.items == []


async def test_revoke_nobody_answers_says_so_after_its_own_timeout_not_redis(
    settings: Settings,
) -> None:
    # No worker runs the handler, so no owner of its timers answers; Redis is
    # up. Longer than the Redis client's 5 s socket timeout, which must not end it.
    app, _ = reminders(settings)
    remind = app.handlers["remind"]
    partitions = settings.kafka.partitions
    nobody = rf": 0 of {partitions} timer partitions answered in time; the revocation is on"
    async with app.bus:
        with pytest.raises(TimeoutError, match=nobody):
            await remind.revoke(uuid.uuid4(), timeout_s=6)
    with pytest.raises(TimeoutError, match=nobody):
        await asyncio.to_thread(remind.revoke_blocking, uuid.uuid4(), timeout_s=6)


async def test_revoke_with_kafka_down_gives_up_after_its_own_timeout(settings: Settings) -> None:
    # A caller whose Kafka does not answer (nothing listens there); Redis is up.
    unreachable = f"127.0.0.1:{free_port()}"
    down = dataclasses.replace(
        settings, kafka=dataclasses.replace(settings.kafka, bootstrap_servers=(unreachable,))
    )
    app, _ = reminders(down)
    remind = app.handlers["remind"]
    unsent = r": Kafka did not acknowledge the revocation within 3 s; this process's producer"
    # A revoke that waited for Kafka would end here with a bare TimeoutError instead.
    async with app.bus:
        with pytest.raises(TimeoutError, match=unsent):
            await asyncio.wait_for(remind.revoke(uuid.uuid4(), timeout_s=3), 60)
    with pytest.raises(TimeoutError, match=unsent):
        blocking = asyncio.to_thread(remind.revoke_blocking, uuid.uuid4(), timeout_s=3)
        await asyncio.wait_for(blocking, 60)
