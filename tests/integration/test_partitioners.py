"""Partitioners agree with Kafka's Java client and with librdkafka on every key."""

from __future__ import annotations

import asyncio
import random
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import confluent_kafka
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from dawning_streams import Settings
from dawning_streams.core.partitioners import consistent_random, murmur2, murmur2_hash

PARTITIONS = [0, 1, 2]

# Utils.murmur2 of org.apache.kafka:kafka-clients:3.9.1, and the partition its
# DefaultPartitioner picks out of three.
JAVA_MURMUR2 = [
    ("21", 0),
    ("foobar", 0),
    ("a-little-bit-long-string", 2),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", 2),
    ("9f706e05-3812-4496-a6d4-6f1f5f5e0512", 0),
    ("user-42", 1),
]


@pytest.mark.parametrize(("key", "partition"), JAVA_MURMUR2)
def test_murmur2_picks_the_java_clients_partition(key: str, partition: int) -> None:
    assert murmur2(key.encode(), PARTITIONS, PARTITIONS) == partition


def test_murmur2_hashes_every_key_as_aiokafka_does() -> None:
    keys = [random.randbytes(length) for length in range(64) for _ in range(20)]
    keys += [bytes([255] * n) for n in range(9)]
    assert [murmur2_hash(key) for key in keys] == [aiokafka_murmur2(key) for key in keys]
    # Asked again, from the cache.
    assert [murmur2_hash(key) for key in keys] == [aiokafka_murmur2(key) for key in keys]


def test_murmur2_takes_a_bytearray_key_too() -> None:
    key = b"9f706e05-3812-4496-a6d4-6f1f5f5e0512"
    assert murmur2(bytearray(key), PARTITIONS, PARTITIONS) == 0


def test_consistent_random_is_librdkafkas_crc32() -> None:
    # 0xCBF43926 is CRC-32's published check value for "123456789".
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert consistent_random(b"123456789", PARTITIONS, PARTITIONS) == 0xCBF43926 % 3


@pytest.mark.parametrize("partitioner", [murmur2, consistent_random])
def test_keyless_messages_go_to_an_available_partition(partitioner) -> None:  # type: ignore[no-untyped-def]
    assert {partitioner(None, PARTITIONS, [1]) for _ in range(20)} == {1}


def test_an_empty_key_is_keyless_to_consistent_random_and_hashed_by_murmur2() -> None:
    assert {consistent_random(b"", PARTITIONS, PARTITIONS) for _ in range(100)} == {0, 1, 2}
    assert {murmur2(b"", PARTITIONS, PARTITIONS) for _ in range(100)} == {
        (murmur2_hash(b"") & 0x7FFFFFFF) % 3
    }


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("ours", "librdkafka"), [(consistent_random, "consistent_random"), (murmur2, "murmur2_random")]
)
async def test_each_key_lands_where_librdkafka_itself_puts_it(
    settings: Settings, ours: Callable[..., int], librdkafka: str
) -> None:
    """confluent-kafka (the .NET gateway's librdkafka) produces to the real broker,
    and its delivery reports say which partition each key went to."""
    bootstrap = settings.kafka.bootstrap_servers[0]
    topic = f"{settings.kafka.topics.audit_log}.partitions"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, len(PARTITIONS), 1)])
    finally:
        await admin.close()
    # .NET's Guid.ToString() keys, as the gateway sends them, and odd ones.
    keys = [str(uuid.uuid4()).encode() for _ in range(10_000)]
    keys += [random.randbytes(n) for n in range(1, 51)] + [b"user-42", b"21"]
    landed: dict[bytes, int] = {}
    empty_landed: list[int] = []

    def delivered(error: object, message: Any) -> None:
        assert error is None, error
        if message.key():
            landed[message.key()] = message.partition()
        else:
            empty_landed.append(message.partition())

    def produce() -> None:
        producer = confluent_kafka.Producer(
            {
                "bootstrap.servers": bootstrap,
                "partitioner": librdkafka,
                "acks": "all",
                # Else a run of key-less records sticks to one partition for 10 ms.
                "sticky.partitioning.linger.ms": 0,
            }
        )
        for key in keys:
            producer.produce(topic, value=b"v", key=key, on_delivery=delivered)
            producer.poll(0)
        for _ in range(60):
            producer.produce(topic, value=b"v", key=b"", on_delivery=delivered)
        assert producer.flush(30) == 0

    await asyncio.to_thread(produce)
    assert len(landed) == len(set(keys))
    wrong = {k: (p, ours(k, PARTITIONS, PARTITIONS)) for k, p in landed.items()}
    wrong = {k: v for k, v in wrong.items() if v[0] != v[1]}
    assert wrong == {}, f"{len(wrong)} keys where librdkafka and ours disagree: {wrong}"
    # An empty key: one partition each time, or several, on both sides alike.
    ours_empty = {ours(b"", PARTITIONS, PARTITIONS) for _ in range(60)}
    assert (len(set(empty_landed)) > 1) == (len(ours_empty) > 1), (empty_landed, ours_empty)
    if len(ours_empty) == 1:
        assert set(empty_landed) == ours_empty
