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


async def read_to_end(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to its end offsets at the time of the call."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(tps) if tps else {}
        left = {tp: end for tp, end in ends.items() if end > 0}
        if not left:
            return records
        consumer.assign(list(left))
        await consumer.seek_to_beginning(*left)
        async with asyncio.timeout(timeout_s):
            while left:
                for tp, batch in (await consumer.getmany(*left, timeout_ms=500)).items():
                    records.extend(r for r in batch if r.offset < ends[tp])
                    if batch and batch[-1].offset >= ends[tp] - 1:
                        left.pop(tp, None)
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


def _group_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A consumer of ``settings``' group that joins nothing: for its offsets only."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers[0],
        group_id=settings.kafka.consumer_group_id,
        enable_auto_commit=False,
    )


async def committed(settings: Settings, tp: TopicPartition) -> int | None:
    """The offset ``settings``' consumer group has committed for ``tp``."""
    consumer = _group_consumer(settings)
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def rewind(settings: Settings, tp: TopicPartition) -> None:
    """Commit offset 0 of ``tp`` for ``settings``' (idle) group: its records come
    again, as after a crash between handling and committing."""
    consumer = _group_consumer(settings)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: 0})
    finally:
        await consumer.stop()


async def caught_up(settings: Settings, *topics: str, timeout_s: float = 60) -> None:
    """Return once ``settings``' group has committed every partition of ``topics``
    to its end offset at the time of the call.

    Offsets are committed after processing, so everything published before the
    call has then been handled: a repeat that was going to have an effect has
    had it. This is how a test proves "nothing more happened", not a sleep.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers[0],
        group_id=settings.kafka.consumer_group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(cluster.partitions_for_topic(topic) or ())
        ]
        assert tps, f"no partitions for {topics}"
        ends = await consumer.end_offsets(tps)
        behind: dict[TopicPartition, tuple[int | None, int]] = {}
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    behind = {}
                    for tp in tps:
                        done = await consumer.committed(tp)
                        if (done or 0) < ends[tp]:
                            behind[tp] = (done, ends[tp])
                    if not behind:
                        return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(
                f"not committed to the end within {timeout_s} s (committed, end): {behind}"
            ) from None
    finally:
        await consumer.stop()


async def partition_count(bootstrap: str, topic: str, timeout_s: float = 10.0) -> int:
    """How many partitions the broker has for ``topic``, once its metadata lists it
    (a topic just created can be missing from a fresh broker's first answers)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                partitions = await consumer._client.fetch_all_metadata()
                found = partitions.partitions_for_topic(topic)
                if found:
                    return len(found)
                await asyncio.sleep(0.2)
    except TimeoutError:
        return 0
    finally:
        await consumer.stop()


__all__ = ["TopicPartition", "committed", "partition_count", "produce_raw", "read_topic"]
