"""Partitioners that agree with the Java and .NET producers on every key.

``murmur2`` is Kafka's Java default (``Utils.murmur2(key) & 0x7fffffff % n``).
``consistent_random`` is librdkafka's, the default of the .NET Confluent
client: ``crc32(key) % n``. Pick the one the .NET gateway uses, and one user's
messages land in the same partition whichever side publishes them. Both send
key-less messages to a random available partition.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence

from aiokafka.partitioner import murmur2 as _murmur2

__all__ = ["PartitionerFn", "consistent_random", "murmur2", "partitioner_for"]

PartitionerFn = Callable[[bytes | None, Sequence[int], Sequence[int]], int]


def _random(all_partitions: Sequence[int], available: Sequence[int]) -> int:
    return random.choice(available or all_partitions)


def murmur2(key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]) -> int:
    """Kafka's Java ``DefaultPartitioner`` for keyed messages."""
    if key is None:
        return _random(all_partitions, available)
    return all_partitions[(_murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]


def consistent_random(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """librdkafka's ``consistent_random``: CRC32 of the key."""
    if key is None:
        return _random(all_partitions, available)
    return all_partitions[zlib.crc32(key) % len(all_partitions)]


def partitioner_for(name: str) -> PartitionerFn:
    """The partitioner a ``Kafka:Partitioner`` setting names."""
    return {"murmur2": murmur2, "consistent_random": consistent_random}[name]
