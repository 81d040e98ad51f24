"""Reading whole topics from the start to their end offsets, without a consumer group."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from dawning_streams.core.settings import KafkaSettings
from dawning_streams.kafka import faust_compat
from dawning_streams.kafka.security import client_options

__all__ = ["read_to_end"]


async def read_to_end(settings: KafkaSettings, topics: Iterable[str]) -> list[Any]:
    """Every record of ``topics`` below their end offsets at the time of the call.

    No consumer group: nothing is moved or committed. A topic that does not
    exist reads as empty. Records come partition by partition, each in offset order.
    """
    names = list(topics)
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    records: list[Any] = []
    try:
        cluster = await faust_compat.cluster_metadata(consumer)
        partitions = [
            TopicPartition(name, p)
            for name in names
            for p in sorted(cluster.partitions_for_topic(name) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, batch in batches.items():
                records.extend(record for record in batch if record.offset < end[tp])
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return records
