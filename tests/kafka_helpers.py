"""Reading topics back with a plain aiokafka client, independent of the library."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord, RecordMetadata

from dawning_streams import Settings


async def read_topic(
    bootstrap: str, topic: str, count: int, timeout_s: float = 20.0
) -> list[ConsumerRecord]:
    """The first ``count`` records of ``topic``, from every partition."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(records) < count:
                batches = await consumer.getmany(timeout_ms=500)
                for batch in batches.values():
                    records.extend(batch)
    except TimeoutError:
        raise AssertionError(
            f"{topic}: {len(records)} of {count} records within {timeout_s} s"
        ) from None
    finally:
        await consumer.stop()
    return records


async def produce_raw(
    bootstrap: str, topic: str, values: list[bytes], *, partition: int, key: bytes = b"k"
) -> list[RecordMetadata]:
    """Write ``values`` to one partition as they are, as a foreign producer would."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        return [
            await producer.send_and_wait(topic, value, key=key, partition=partition)
            for value in values
        ]
    finally:
        await producer.stop()


async def committed(settings: Settings, tp: TopicPartition) -> int | None:
    """The offset ``settings``' consumer group has committed for ``tp``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers[0],
        group_id=settings.kafka.consumer_group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def partition_count(bootstrap: str, topic: str) -> int:
    """How many partitions the broker has for ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = await consumer._client.fetch_all_metadata()
        return len(partitions.partitions_for_topic(topic) or ())
    finally:
        await consumer.stop()


__all__ = ["TopicPartition", "committed", "partition_count", "produce_raw", "read_topic"]
