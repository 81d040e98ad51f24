"""Kafka unavailable: ``publish`` spools to disk and nothing is lost.

Each test runs a broker of its own, so it can be down at start-up or killed
mid-stream without disturbing the rest of the suite.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from dawning_streams import Settings, UserEventMessage, create_app, decode
from dawning_streams.bus.spool import SpoolFullError
from dawning_streams.core.settings import SpoolSettings

from ..broker_process import BrokerProcess, own_broker
from ..conftest import ROOT
from ..handler_helpers import eventually
from ..kafka_helpers import read_to_end

pytestmark = pytest.mark.kafka

# More than the broker takes (message.max.bytes counts the compressed batch).
INCOMPRESSIBLE_2MB = base64.b64encode(os.urandom(1_600_000)).decode()

USERS = [uuid.UUID(int=n) for n in range(1, 21)]


def on_broker(
    settings: Settings, broker: BrokerProcess, spool: Path, **spool_options: int
) -> Settings:
    """``settings`` aimed at ``broker``, with a quick give-up so the spool takes over soon."""
    return dataclasses.replace(
        settings,
        kafka=dataclasses.replace(
            settings.kafka,
            bootstrap_servers=(broker.bootstrap,),
            spool=SpoolSettings(path=str(spool), **{"send_timeout_ms": 1500, **spool_options}),
        ),
    )


def events(first: int, count: int) -> list[UserEventMessage]:
    """Numbered events spread over twenty users."""
    return [
        UserEventMessage(user_id=USERS[n % len(USERS)], event_type=f"step.{n}")
        for n in range(first, first + count)
    ]


async def assert_all_arrived_in_order(
    broker: BrokerProcess, topic: str, sent: list[UserEventMessage]
) -> None:
    """Every message of ``sent`` is on ``topic``, and each user's arrive in publish order.

    Delivery is at least once: a message whose ack was lost in the outage may
    be there twice; its first copy must still be in its place.
    """
    expected: dict[str, list[str]] = defaultdict(list)
    for message in sent:
        expected[str(message.user_id)].append(message.event_type)
    arrived: dict[str, list[str]] = defaultdict(list)
    wanted = {m.event_type for m in sent}
    read: dict[int, list[int]] = defaultdict(list)  # partition -> offsets read
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            while wanted:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    for record in batch:
                        read[record.partition].append(record.offset)
                        message = decode(record.value, UserEventMessage)
                        seen = arrived[str(message.user_id)]
                        if message.event_type not in seen:
                            seen.append(message.event_type)
                        wanted.discard(message.event_type)
    except TimeoutError:
        # Whether they are on the topic at all: what each partition holds, and what was read.
        ends = await consumer.end_offsets(list(consumer.assignment()))
        held = {tp.partition: end for tp, end in sorted(ends.items())}
        raise AssertionError(
            f"{len(wanted)} of {len(sent)} messages never arrived ({sorted(wanted)}); "
            f"partition end offsets {held}, offsets read {dict(sorted(read.items()))}"
        ) from None
    finally:
        await consumer.stop()
    assert {user: [e for e in seen if e in expected[user]] for user, seen in arrived.items()} == (
        expected
    )


async def test_with_the_broker_down_at_start_messages_wait_in_the_spool_and_arrive_in_order(
    settings: Settings, tmp_path: Path
) -> None:
    async with own_broker(tmp_path) as broker:
        settings = on_broker(settings, broker, tmp_path / "spool.sqlite3")
        first, second, third = events(0, 400), events(400, 600), events(1000, 100)

        # An instance that starts and stops while Kafka is down keeps what it was given.
        async with create_app(settings).bus as bus:
            assert [await bus.publish(m) for m in first] == [None] * 400
        async with create_app(settings).bus as bus:
            assert bus.spool.count == 400
            assert await bus.publish_many(second) == [None] * 600
            assert bus.spool.count == 1000
            [gauge] = [
                line
                for line in bus.app.telemetry.metrics.render().decode().splitlines()
                if line.startswith("dawning_spool_size{")
            ]
            assert gauge.endswith(" 1000.0")

            await broker.start()
            # Published while the spool drains: they queue up behind it.
            for message in third:
                await bus.publish(message)
            await eventually(lambda: bus.spool.count == 0, 90, "the spool to drain")
            assert await bus.publish(events(2000, 1)[0]) is not None, "publishing directly again"

        await assert_all_arrived_in_order(
            broker, settings.kafka.topics.user_event, first + second + third
        )


async def test_a_broker_killed_mid_stream_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    async with own_broker(tmp_path) as broker:
        settings = on_broker(settings, broker, tmp_path / "spool.sqlite3")
        await broker.start()
        sent = events(0, 1000)
        receipts: list[object] = []
        async with create_app(settings).bus as bus:

            async def publish_all() -> None:
                for message in sent:
                    receipts.append(await bus.publish(message))
                    await asyncio.sleep(0.002)

            publishing = asyncio.create_task(publish_all())
            await eventually(lambda: len(receipts) >= 300, 60, "300 messages published")
            await broker.kill()
            await eventually(lambda: bus.spool.count > 0, 60, "messages to reach the spool")
            await broker.start()
            await publishing
            await eventually(lambda: bus.spool.count == 0, 90, "the spool to drain")
        assert len(receipts) == 1000
        assert any(r is None for r in receipts), "some messages went through the spool"
        await assert_all_arrived_in_order(broker, settings.kafka.topics.user_event, sent)


async def test_an_outage_spanning_several_drain_tries_delivers_each_spooled_message_once(
    settings: Settings, tmp_path: Path
) -> None:
    async with own_broker(tmp_path) as broker:
        settings = on_broker(settings, broker, tmp_path / "spool.sqlite3")
        await broker.start()
        await broker.accepts_idempotent_producers()
        sent = events(0, 200)
        async with create_app(settings).bus as bus:
            # The first record creates the topic and waits on its leader: on a busy
            # machine past the 1.5 s send timeout, and then through the spool.
            if await bus.publish(events(1000, 1)[0]) is None:
                await eventually(lambda: bus.spool.count == 0, 60, "the first record delivered")
            await broker.kill()
            # Handed to the producer, not acknowledged in time: spooled.
            assert await bus.publish_many(sent) == [None] * 200
            # The spool's delivery tries again and again while the broker is away;
            # each try used to hand the producer the same records once more.
            await asyncio.sleep(12)
            assert bus.spool.count == 200
            await broker.start()
            await eventually(lambda: bus.spool.count == 0, 90, "the spool to drain")
        await assert_all_arrived_in_order(broker, settings.kafka.topics.user_event, sent)
        copies = defaultdict(int)
        for record in await read_to_end(broker.bootstrap, settings.kafka.topics.user_event):
            copies[decode(record.value, UserEventMessage).event_type] += 1
        assert {m.event_type: copies[m.event_type] for m in sent} == {m.event_type: 1 for m in sent}


async def test_a_full_spool_refuses_loudly_and_keeps_what_it_has(
    settings: Settings, tmp_path: Path
) -> None:
    async with own_broker(tmp_path) as broker:
        settings = on_broker(settings, broker, tmp_path / "spool.sqlite3", max_bytes=20_000)
        async with create_app(settings).bus as bus:
            accepted = 0
            with pytest.raises(SpoolFullError, match=r"Kafka:Spool:MaxBytes") as refused:
                for message in events(0, 1000):
                    await bus.publish(message)
                    accepted += 1
            assert 0 < accepted < 1000
            assert bus.spool.count == accepted
            assert "is full" in str(refused.value)
            assert bus.spool.size_bytes <= 20_000


async def test_a_record_the_broker_refuses_for_good_is_set_aside_and_the_rest_flow(
    settings: Settings, tmp_path: Path
) -> None:
    async with own_broker(tmp_path) as broker:
        settings = on_broker(settings, broker, tmp_path / "spool.sqlite3")
        before, after = events(0, 10), events(10, 10)
        huge = UserEventMessage(user_id=USERS[0], event_type="huge", user_name=INCOMPRESSIBLE_2MB)
        async with create_app(settings).bus as bus:
            await bus.publish_many([*before, huge, *after])
            assert bus.spool.count == 21
            await broker.start()
            await eventually(lambda: bus.spool.count == 0, 90, "the spool to drain")
            [(rejected, reason)] = await bus.spool.rejected()
        assert decode(rejected.value, UserEventMessage).event_type == "huge"
        assert "MSG_SIZE_TOO_LARGE" in reason
        await assert_all_arrived_in_order(broker, settings.kafka.topics.user_event, before + after)


SPOOLER = """
import asyncio, os, sys
from dawning_streams import Settings, UserEventMessage, create_app
from tests.integration.test_spool import events

async def main(first: int, count: int) -> None:
    bus = create_app(Settings.load()).bus
    await bus.start()
    for message in events(first, count):
        await bus.publish(message)
    print(bus.spool.count, bus.spool.path, flush=True)
    await asyncio.Event().wait()  # until killed

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


async def test_processes_sharing_a_spool_path_keep_apart_and_a_later_one_delivers_what_died(
    settings: Settings, tmp_path: Path
) -> None:
    """Two processes given one spool path, both killed with messages in it: each
    had a file of its own, and the next process to start delivers both."""
    async with own_broker(tmp_path) as broker:
        spool = tmp_path / "shared" / "spool.sqlite3"
        settings = on_broker(settings, broker, spool)
        env = {**os.environ, "PYTHONPATH": str(ROOT), **settings.to_environ()}
        first, second = events(0, 150), events(150, 150)
        spoolers = []
        for start in (0, 150):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                SPOOLER,
                str(start),
                "150",
                env=env,
                cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE,
            )
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 120)
            spoolers.append((process, line.decode().split()))
        [(a, (a_count, a_path)), (b, (b_count, b_path))] = spoolers
        assert (a_count, b_count) == ("150", "150")
        assert a_path == str(spool) and b_path != a_path, (a_path, b_path)
        for process in (a, b):
            process.kill()
            assert await process.wait() == -9

        await broker.start()
        async with create_app(settings).bus as bus:
            assert bus.spool.path == spool
            assert bus.spool.count == 300, "it took in the file of the process that died"
            await eventually(lambda: bus.spool.count == 0, 90, "the spool to drain")
        assert not Path(b_path).exists()
        await assert_all_arrived_in_order(broker, settings.kafka.topics.user_event, first + second)
