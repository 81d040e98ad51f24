"""The handlers' fast lane on the real broker: order, commits after processing, rebalances."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.types import TP

from dawning_streams import App, AuditLogMessage, Settings, create_app
from dawning_streams.core.partitioners import consistent_random
from dawning_streams.kafka import transport
from dawning_streams.kafka.lanes import Lane, _Progress

from ..handler_helpers import Calls, eventually, running, same_partition_users
from ..kafka_helpers import committed

pytestmark = pytest.mark.kafka


def entry(user: uuid.UUID, action: str) -> AuditLogMessage:
    return AuditLogMessage(user_id=user, action=action, entity_type="User")


def quick_commits(settings: Settings) -> App:
    return create_app(settings, web_enabled=False, broker_commit_interval=0.2)


def test_only_a_finished_prefix_of_offsets_is_committable() -> None:
    progress = _Progress()
    progress.started.extend([10, 11, 12, 13])
    progress.finish(12)
    progress.finish(11)
    assert progress.committable is None  # 10 is still in progress
    progress.finish(10)
    assert progress.committable == 13
    progress.finish(13)
    assert progress.committable == 14


def test_the_next_offset_is_the_first_not_started() -> None:
    progress = _Progress()
    assert progress.next_offset is None  # nothing fetched yet: from the committed offset
    progress.started.extend([10, 11, 12])
    progress.finish(10)
    assert progress.next_offset == 13  # 11 and 12 are in progress
    progress.finish(12)
    progress.finish(11)
    assert (progress.committable, progress.next_offset) == (13, 13)


async def test_the_handler_topic_goes_through_the_lane(settings: Settings) -> None:
    app = quick_commits(settings)

    @app.handler(AuditLogMessage)
    async def noop(message: AuditLogMessage) -> None: ...

    # The source, and the timers topic whose records go into the timer table.
    assert list(app.lanes) == [app.topic_for(AuditLogMessage).get_topic_name(), noop.timers_topic]


async def test_two_handlers_on_one_topic_each_see_every_message(settings: Settings) -> None:
    app = quick_commits(settings)
    first, second = Calls(), Calls()

    @app.handler(AuditLogMessage)
    async def store(message: AuditLogMessage) -> None:
        first.add(message.action)

    @app.handler(AuditLogMessage)
    async def index(message: AuditLogMessage) -> None:
        second.add(message.action)

    # One group of lanes hands the topic to both; each timers topic has its lane.
    topic = app.topic_for(AuditLogMessage).get_topic_name()
    assert list(app.lanes) == [topic, store.timers_topic, index.timers_topic]
    assert [lane.handler for lane in app.lanes[topic].lanes] == ["store", "index"]
    async with running(app):
        await app.bus.publish_many([entry(uuid.uuid4(), str(i)) for i in range(20)])
        await first.wait_until(lambda items: len(items) == 20)
        await second.wait_until(lambda items: len(items) == 20)
    assert sorted(first.items) == sorted(second.items) == sorted(str(i) for i in range(20))  # type: ignore[type-var]


async def test_each_partition_is_handled_in_offset_order(settings: Settings) -> None:
    app = quick_commits(settings)
    handled: list[int] = []
    calls = Calls()

    @app.handler(AuditLogMessage)
    async def record(message: AuditLogMessage) -> None:
        handled.append(int(message.action))
        calls.add(message.action)

    users = users_on_every_partition(4)
    async with running(app):
        acks = await app.bus.publish_many([entry(users[i % 12], str(i)) for i in range(600)])
        await calls.wait_until(lambda items: len(items) >= 600)
    assert sorted(handled) == list(range(600))
    by_partition: dict[int, list[int]] = defaultdict(list)
    for i in handled:
        by_partition[acks[i].partition].append(acks[i].offset)
    assert len(by_partition) == 3
    for partition, offsets in by_partition.items():
        assert offsets == sorted(offsets), f"partition {partition} out of order"


async def test_an_offset_is_committed_only_after_the_handler_finished(settings: Settings) -> None:
    app = quick_commits(settings)
    release = asyncio.Event()
    calls = Calls()

    @app.handler(AuditLogMessage)
    async def slow_second(message: AuditLogMessage) -> None:
        calls.add(message.action)
        if message.action == "second":
            await release.wait()

    (user,) = same_partition_users(1)
    async with running(app):
        first, _, third = await app.bus.publish_many(
            [entry(user, "first"), entry(user, "second"), entry(user, "third")]
        )
        tp = TopicPartition(first.topic, first.partition)
        await calls.wait_until(lambda items: "second" in items)
        await eventually(
            lambda: _is(committed(settings, tp), first.offset + 1), what="the first commit"
        )
        await asyncio.sleep(1.0)  # five commit intervals while the second is in progress
        assert await committed(settings, tp) == first.offset + 1
        release.set()
        await eventually(
            lambda: _is(committed(settings, tp), third.offset + 1), what="the last commit"
        )
    assert calls.items == ["first", "second", "third"]


async def test_with_concurrency_the_commit_waits_for_the_earliest_unfinished(
    settings: Settings,
) -> None:
    app = quick_commits(settings)
    release = asyncio.Event()
    calls = Calls()

    @app.handler(AuditLogMessage, concurrency=4)
    async def slow_second(message: AuditLogMessage) -> None:
        if message.action == "1":
            await release.wait()
        calls.add(message.action)

    (user,) = same_partition_users(1)
    async with running(app):
        acks = await app.bus.publish_many([entry(user, str(i)) for i in range(8)])
        tp = TopicPartition(acks[0].topic, acks[0].partition)
        # Everything but "1" finishes: the committed offset stays at "1".
        await calls.wait_until(lambda items: len(items) == 7)
        await eventually(
            lambda: _is(committed(settings, tp), acks[1].offset), what="the commit before 1"
        )
        await asyncio.sleep(1.0)
        assert await committed(settings, tp) == acks[1].offset
        release.set()
        await eventually(
            lambda: _is(committed(settings, tp), acks[-1].offset + 1), what="the last commit"
        )
    assert sorted(calls.items) == [str(i) for i in range(8)]  # type: ignore[type-var]


async def test_a_second_worker_joining_loses_nothing(settings: Settings) -> None:
    first_app, second_app = quick_commits(settings), quick_commits(settings)
    handled: dict[str, list[str]] = {"first": [], "second": []}

    for name, app in (("first", first_app), ("second", second_app)):

        @app.handler(AuditLogMessage, name="count")
        async def count(message: AuditLogMessage, name: str = name) -> None:
            handled[name].append(message.action)
            await asyncio.sleep(0.004)

    users = [uuid.uuid4() for _ in range(30)]
    # Enough work (about 16 s for one worker) that some is left for the second
    # after its rebalance and recovery, however slow the machine.
    total = 4000
    async with running(first_app):
        await first_app.bus.publish_many([entry(users[i % 30], str(i)) for i in range(total)])
        await eventually(lambda: len(handled["first"]) > 100, what="the first worker starting")
        async with running(second_app):
            await eventually(
                lambda: (
                    set(handled["first"]) | set(handled["second"]) >= {str(i) for i in range(total)}
                ),
                what="every message handled",
            )
        await eventually(
            lambda: _all_committed(settings, first_app, total), what="every offset committed"
        )
    assert handled["second"], "the second worker was given no partition to handle"
    # At least once: repeats are allowed around the rebalance, gaps are not.
    assert set(handled["first"]) | set(handled["second"]) == {str(i) for i in range(total)}


async def test_a_fetch_that_lands_while_the_consumer_seeks_is_fetched_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When a table has a changelog to read after a rebalance, Faust resumes the
    # flow before it seeks to the committed offsets. A fetch landing in between
    # comes from positions the seek then replaces: the lane must refuse it and
    # take the records again after the seek, never let a later batch jump over them.
    # The windows a loaded machine opens by chance: before the seek, and during it.
    perform_seek, seek_to_committed = (
        transport.Consumer.perform_seek,
        transport.Consumer.seek_to_committed,
    )

    async def late_seek(self: transport.Consumer) -> None:
        await asyncio.sleep(0.3)
        await perform_seek(self)

    async def slow_seek(self: transport.Consumer) -> Mapping[TP, int]:
        await asyncio.sleep(0.3)
        committed = await seek_to_committed(self)
        await asyncio.sleep(0.3)  # more partitions to seek, one after the other
        return committed

    refused: list[tuple[TP, int]] = []
    refuse = Lane.refuse

    def noted_refuse(self: Lane, tp: TP, records: list[Any]) -> None:
        refused.append((tp, len(records)))
        refuse(self, tp, records)

    monkeypatch.setattr(transport.Consumer, "perform_seek", late_seek)
    monkeypatch.setattr(transport.Consumer, "seek_to_committed", slow_seek)
    monkeypatch.setattr(Lane, "refuse", noted_refuse)
    first_app, second_app = quick_commits(settings), quick_commits(settings)
    handled: list[str] = []
    for app in (first_app, second_app):
        seen = app.Table("seen", default=int, partitions=3)

        @app.handler(AuditLogMessage, name="count")
        async def count(message: AuditLogMessage, seen: Any = seen) -> None:
            handled.append(message.action)
            seen[str(message.user_id)] += 1  # the changelog the newcomer recovers
            await asyncio.sleep(0.002)

    users = users_on_every_partition(10)
    total = 6000
    wanted = {str(i) for i in range(total)}
    messages = [entry(users[i % len(users)], str(i)) for i in range(total)]

    async def keep_publishing() -> None:
        # Records keep coming while the newcomer joins, reads the changelog and seeks.
        for start in range(1000, total, 25):
            await first_app.bus.publish_many(messages[start : start + 25])
            await asyncio.sleep(0.005)

    async with running(first_app):
        await first_app.bus.publish_many(messages[:1000])
        await eventually(lambda: len(handled) > 100, what="the first worker starting")
        publishing = asyncio.create_task(keep_publishing())
        async with running(second_app):
            await publishing
            await eventually(lambda: set(handled) >= wanted, what="every message handled")
        await eventually(
            lambda: _all_committed(settings, first_app, total), what="every offset committed"
        )
    assert refused, "no fetch landed between the assignment and the seek"
    assert set(handled) == wanted


def users_on_every_partition(each: int, partitions: int = 3) -> list[uuid.UUID]:
    """``each`` user ids for every one of the ``partitions``, placed by the default partitioner."""
    found: dict[int, list[uuid.UUID]] = defaultdict(list)
    while any(len(found[p]) < each for p in range(partitions)):
        user = uuid.uuid4()
        found[consistent_random(str(user).encode(), list(range(partitions)), [])].append(user)
    return [user for p in range(partitions) for user in found[p][:each]]


async def _is(value: object, wanted: int) -> bool:
    return await value == wanted  # type: ignore[misc]


async def _all_committed(settings: Settings, app: App, total: int) -> bool:
    topic = app.topic_for(AuditLogMessage).get_topic_name()
    offsets = [await committed(settings, TopicPartition(topic, p)) for p in range(3)]
    return sum(o or 0 for o in offsets) == total


async def test_a_worker_stopped_right_after_handling_commits_what_it_handled(
    settings: Settings,
) -> None:
    # Stopping stops the flow first; a fetch that returns then makes Faust seek
    # back to the committed offsets, and what was handled must still be committed.
    for round_ in range(3):
        app = create_app(settings, web_enabled=False)
        calls = Calls()

        @app.handler(AuditLogMessage)
        async def count(message: AuditLogMessage, calls: Calls = calls) -> None:
            calls.add(message.action)

        wanted = {f"{round_}-{i}" for i in range(200)}
        async with running(app):
            acks = await app.bus.publish_many([entry(uuid.uuid4(), a) for a in sorted(wanted)])
            await calls.wait_until(lambda items, wanted=wanted: set(items) >= wanted)
        ends: dict[int, int] = {}
        for ack in acks:
            ends[ack.partition] = max(ends.get(ack.partition, 0), ack.offset + 1)
        name = app.topic_for(AuditLogMessage).get_topic_name()
        for partition, end in ends.items():
            assert await committed(settings, TopicPartition(name, partition)) == end
