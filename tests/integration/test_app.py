"""The Faust app against the real broker: every setting reaches the live clients."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import TopicPartition

from dawning_streams import App, AuditLogMessage, Settings, create_app
from dawning_streams.core.partitioners import consistent_random

from ..kafka_helpers import committed

pytestmark = pytest.mark.kafka


@pytest.fixture
async def running_app(settings: Settings) -> AsyncIterator[App]:
    app = create_app(settings, web_enabled=False, broker_commit_interval=0.2)
    started = asyncio.Event()
    release = asyncio.Event()
    app.handled: list[AuditLogMessage] = []  # type: ignore[misc]
    app.release = release  # type: ignore[attr-defined]
    app.first_seen = started  # type: ignore[attr-defined]

    @app.agent(app.topic_for(AuditLogMessage))
    async def record(stream):  # type: ignore[no-untyped-def]
        async for message in stream:
            started.set()
            await release.wait()
            app.handled.append(message)  # type: ignore[attr-defined]

    await app.start()
    try:
        yield app
    finally:
        release.set()
        await app.stop()


async def test_the_live_producer_has_every_setting(running_app: App, settings: Settings) -> None:
    producer = running_app.producer._producer
    assert producer is not None
    assert producer._txn_manager is not None, "enable_idempotence did not reach aiokafka"
    assert producer._sender._acks == -1
    assert producer._compression_type == "snappy"
    assert producer._message_accumulator._batch_size == 16384
    assert producer._message_accumulator._linger_time == pytest.approx(0.005)
    assert producer._partitioner is consistent_random
    await running_app.bus.publish(
        AuditLogMessage(user_id=uuid.uuid4(), action="login", entity_type="User")
    )
    assert producer._txn_manager.producer_id >= 0, "the broker gave no producer id"


async def test_the_live_consumer_has_every_setting(running_app: App, settings: Settings) -> None:
    consumer = running_app.consumer._thread._consumer
    assert consumer._group_id == settings.kafka.consumer_group_id
    assert consumer._enable_auto_commit is False
    assert consumer._auto_offset_reset == "earliest"
    assert consumer._session_timeout_ms == settings.kafka.session_timeout_ms
    assert consumer._heartbeat_interval_ms == settings.kafka.heartbeat_interval_ms
    assert consumer._max_poll_interval_ms == settings.kafka.max_poll_interval_ms
    assert consumer._fetcher._fetch_max_wait_ms == settings.kafka.fetch_max_wait_ms == 100


async def test_an_offset_is_committed_only_after_the_message_is_processed(
    running_app: App,
    settings: Settings,
) -> None:
    message = AuditLogMessage(user_id=uuid.uuid4(), action="login", entity_type="User")
    ack = await running_app.bus.publish(message)
    tp = TopicPartition(ack.topic, ack.partition)
    async with asyncio.timeout(30):
        await running_app.first_seen.wait()  # type: ignore[attr-defined]
    await asyncio.sleep(1.0)  # five commit intervals while the handler is still busy
    assert await committed(settings, tp) is None
    running_app.release.set()  # type: ignore[attr-defined]
    async with asyncio.timeout(30):
        while await committed(settings, tp) != ack.offset + 1:
            await asyncio.sleep(0.2)
    assert running_app.handled == [message]  # type: ignore[attr-defined]
