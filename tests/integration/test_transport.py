"""The worker's aiokafka consumer, against the broker: a subscribed topic the
group's leader did not know when it assigned."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from dawning_streams import Settings
from dawning_streams.kafka.watches import MissingTopicsWatch

pytestmark = pytest.mark.kafka


async def test_a_topic_the_leader_did_not_know_is_assigned_once_the_metadata_has_it(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # The test broker creates a topic the first time a client asks for its
    # metadata, and answers that request without it: the leader assigns what it
    # knows, and aiokafka would not ask again for five minutes.
    bootstrap = settings.kafka.bootstrap_servers[0]
    known, new = (f"{settings.kafka.topics.audit_log}.{name}" for name in ("known", "new"))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"{settings.kafka.consumer_group_id}-watch",
        auto_offset_reset="earliest",
    )
    watch = MissingTopicsWatch(consumer, every_s=0.5)
    caplog.set_level(logging.INFO, logger="dawning_streams.kafka.watches")
    await producer.start()
    try:
        await producer.send_and_wait(known, b"known")
        consumer.subscribe([known])
        await consumer.start()
        first = await asyncio.wait_for(consumer.getone(), 30)
        assert (first.topic, first.value) == (known, b"known")

        consumer.subscribe([known, new])
        await producer.send_and_wait(new, b"new")
        second = await asyncio.wait_for(consumer.getone(), 30)
        assert (second.topic, second.value) == (new, b"new")
    finally:
        await consumer.stop()
        await producer.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "dawning_streams.kafka.watches"]
    assert any("missing from the cluster's metadata" in m and new in m for m in said), said
    assert any(m == f"subscribed topics now in the metadata: {new}" for m in said), said
    assert watch.missing == frozenset()
