"""Reading topics without a consumer group: whole, or the records of a time range."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from dawning_streams.core.errors import KafkaUnavailable
from dawning_streams.core.settings import KafkaSettings
from dawning_streams.kafka import faust_compat
from dawning_streams.kafka.security import client_options

__all__ = ["Scan", "read_to_end", "scan"]


#: How long the broker may hold a reader's fetch that finds nothing: a read
#: waits that long at each partition whose last records are gaps (a compacted
#: changelog's), so it is short; aiokafka's default is 500 ms.
_READ_WAIT_MS = 20


class _QuietAssignment(logging.Filter):
    """Drops aiokafka's INFO line naming every topic of a reader's assignment:
    a search or a dead-letter list would log it on each request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            _quiet_assignments and record.getMessage().startswith("Updating subscribed topics")
        )


#: Non-empty while a reader assigns itself its partitions.
_quiet_assignments: list[bool] = []
logging.getLogger("aiokafka.consumer.subscription_state").addFilter(_QuietAssignment())


def _assign(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
    _quiet_assignments.append(True)
    try:
        consumer.assign(partitions)
    finally:
        _quiet_assignments.pop()


@asynccontextmanager
async def _reader(settings: KafkaSettings) -> AsyncIterator[AIOKafkaConsumer]:
    """A started consumer of no group, stopped afterwards (also when its start
    failed); :class:`KafkaUnavailable` when Kafka does not answer."""
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        enable_auto_commit=False,
        group_id=None,
        fetch_max_wait_ms=_READ_WAIT_MS,
    )
    try:
        await consumer.start()
        yield consumer
    except (KafkaError, OSError) as exc:
        servers = ",".join(settings.bootstrap_servers)
        raise KafkaUnavailable(f"Kafka ({servers}) did not answer: {exc}") from exc
    finally:
        await consumer.stop()


async def existing_topics(settings: KafkaSettings, topics: Iterable[str]) -> set[str]:
    """Those of ``topics`` the cluster has (asked without creating any)."""
    async with _reader(settings) as consumer:
        cluster = await faust_compat.cluster_metadata(consumer)
    return {name for name in topics if cluster.partitions_for_topic(name)}


async def read_to_end(settings: KafkaSettings, topics: Iterable[str]) -> list[Any]:
    """Every record of ``topics`` below their end offsets at the time of the call.

    No consumer group: nothing is moved or committed. A topic that does not
    exist reads as empty. Records come partition by partition, each in offset order.
    """
    names = list(topics)
    records: list[Any] = []
    async with _reader(settings) as consumer:
        cluster = await faust_compat.cluster_metadata(consumer)
        partitions = [
            TopicPartition(name, p)
            for name in names
            for p in sorted(cluster.partitions_for_topic(name) or ())
        ]
        if not partitions:
            return []
        _assign(consumer, partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, batch in batches.items():
                records.extend(record for record in batch if record.offset < end[tp])
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
    return records


@dataclass(slots=True)
class Scan:
    """What :func:`scan` kept, and how much it read to find it."""

    records: list[Any] = field(default_factory=list)
    scanned: int = 0
    #: True when it stopped at its limit before the end of the range.
    truncated: bool = False


async def scan(
    settings: KafkaSettings,
    ranges: dict[str, tuple[int | None, int | None]],
    keep: Callable[[Any], bool],
    *,
    limit: int,
) -> Scan:
    """The records that ``keep`` accepts, of each topic's time range.

    ``ranges`` maps a topic to ``(since_ms, until_ms)``: records with a
    timestamp from ``since_ms`` (None: the first record) up to ``until_ms``
    (None: the end offset at the time of the call). At most ``limit`` records
    are read in all. No consumer group: nothing is moved or committed.
    """
    result = Scan()
    async with _reader(settings) as consumer:
        cluster = await faust_compat.cluster_metadata(consumer)
        partitions = [
            TopicPartition(name, p)
            for name in ranges
            for p in sorted(cluster.partitions_for_topic(name) or ())
        ]
        if not partitions:
            return result
        # Assigned first: the client then has their leaders, and the offset
        # requests below do not wait for a metadata refresh.
        _assign(consumer, partitions)
        end = await consumer.end_offsets(partitions)
        start = await _offsets_at(consumer, partitions, lambda tp: ranges[tp.topic][0], None)
        stop = await _offsets_at(consumer, partitions, lambda tp: ranges[tp.topic][1], end)
        remaining = set()
        for tp in partitions:
            first = start.get(tp)
            last = min(stop.get(tp, end[tp]), end[tp])
            if first is not None and first < last:
                consumer.seek(tp, first)
                remaining.add(tp)
            else:
                stop[tp] = -1
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, batch in batches.items():
                last = min(stop[tp], end[tp])
                for record in batch:
                    if record.offset >= last:
                        break
                    result.scanned += 1
                    if keep(record):
                        result.records.append(record)
                if await consumer.position(tp) >= last:
                    remaining.discard(tp)
            if result.scanned >= limit and remaining:
                result.truncated = True
                break
    return result


async def _offsets_at(
    consumer: AIOKafkaConsumer,
    partitions: list[TopicPartition],
    at_ms: Callable[[TopicPartition], int | None],
    otherwise: dict[TopicPartition, int] | None,
) -> dict[TopicPartition, int]:
    """Per partition, the first offset at or after its time; without a time, its
    first offset (``otherwise`` None) or ``otherwise``'s offset."""
    timed = {tp: ms for tp in partitions if (ms := at_ms(tp)) is not None}
    found = await consumer.offsets_for_times(timed) if timed else {}
    untimed = [tp for tp in partitions if tp not in timed]
    if otherwise is None:
        offsets = await consumer.beginning_offsets(untimed) if untimed else {}
    else:
        offsets = {tp: otherwise[tp] for tp in untimed}
    for tp in timed:
        hit = found.get(tp)
        if hit is not None:
            offsets[tp] = hit.offset
        elif otherwise is not None:
            # Nothing at or after the end of the range: it reaches the end offset.
            offsets[tp] = otherwise[tp]
    return offsets
