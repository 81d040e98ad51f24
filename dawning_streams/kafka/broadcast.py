"""Broadcast: every instance reads every record of a topic, outside the group.

The consumer group balances a topic's partitions across instances; some work
must instead happen on every instance (evicting its in-process cache, applying
a config change). A :class:`Broadcast` follows all partitions of one topic with
its own group-less consumer and hands each record to a callback.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from mode import Service

from dawning_streams.core.errors import DawningError
from dawning_streams.core.settings import KafkaSettings
from dawning_streams.kafka import faust_compat
from dawning_streams.kafka.security import client_options

__all__ = ["Broadcast"]

logger = logging.getLogger(__name__)

METADATA_WAIT_S = 60.0

OnRecord = Callable[[ConsumerRecord], Awaitable[Any] | Any]


class Broadcast(Service):
    """Follows every partition of ``topic`` on this instance."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        on_record: OnRecord,
        *,
        from_beginning: bool = False,
        **kwargs: Any,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.on_record = on_record
        self.from_beginning = from_beginning
        self.seen = 0
        #: Per partition, the end offset when following began (from the beginning):
        #: records before it are history being replayed, the rest are new.
        self.history_ends: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        super().__init__(**kwargs)

    def replaying(self, record: ConsumerRecord) -> bool:
        """Whether ``record`` was already in the topic when following began."""
        return record.offset < self.history_ends.get(record.partition, 0)

    async def on_start(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self.settings), group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        partitions = await self._partitions(consumer)
        consumer.assign(partitions)
        if self.from_beginning:
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            self.history_ends = {tp.partition: offset for tp, offset in ends.items()}
        else:
            await consumer.seek_to_end(*partitions)
        self._consumer = consumer
        logger.info(
            "following %s (%d partitions) from the %s on this instance",
            self.topic,
            len(partitions),
            "beginning" if self.from_beginning else "end",
        )

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """The topic's partitions, once the broker's metadata shows them.

        The app declares the topic just before this starts, and a new topic can
        take a moment to appear in metadata; following none of it would be silent.
        """
        for _ in range(int(METADATA_WAIT_S / 0.25)):
            cluster = await faust_compat.cluster_metadata(consumer)
            found = cluster.partitions_for_topic(self.topic)
            if found:
                return [TopicPartition(self.topic, p) for p in sorted(found)]
            await asyncio.sleep(0.25)
        await consumer.stop()
        raise DawningError(f"topic {self.topic} has no partitions after {METADATA_WAIT_S} s")

    async def on_stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    @Service.task
    async def _follow(self) -> None:
        while not self.should_stop:
            if self._consumer is None:
                await self.sleep(0.1)
                continue
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                logger.warning("broadcast of %s paused: %r", self.topic, exc)
                await self.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    await self._deliver(record)

    async def _deliver(self, record: ConsumerRecord) -> None:
        try:
            result = self.on_record(record)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception(
                "broadcast of %s/%d/%d failed; going on",
                record.topic,
                record.partition,
                record.offset,
            )
        self.seen += 1
