"""The Faust transport, with the producer settings Faust leaves out and the handlers' fast lane.

Faust builds aiokafka's producer without ``enable_idempotence`` unless it is in
a transaction; this transport passes it, with ``acks``, from the settings.

Its consumer hands the records of handler source topics to their
:class:`~dawning_streams.lanes.Lane` instead of Faust's per-message path, and
commits the offsets the lanes have finished along with Faust's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator, Mapping
from typing import Any

from aiokafka.structs import RecordMetadata
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from .lanes import Lane

__all__ = ["Consumer", "Producer", "Transport"]

_PAUSED_FETCH_TIMEOUT_S = 0.01


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer, idempotent when the settings say so."""

    async def send_record(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[RecordMetadata]:
        """Hand one record to aiokafka; the result resolves on the broker's ack.

        The bus's path: Faust's ``send`` around the same call adds a signal
        and header conversions the bus does not use, per message. aiokafka's
        errors (KafkaError) pass through.
        """
        return await self._ensure_producer().send(  # type: ignore[no-any-return]
            topic, value, key=key, timestamp_ms=timestamp_ms, headers=headers
        )

    def _settings_extra(self) -> Mapping[str, Any]:
        settings = self.app.dawning_settings.kafka.producer  # type: ignore[attr-defined]
        return {
            **super()._settings_extra(),
            "acks": settings.acks,
            "enable_idempotence": settings.enable_idempotence,
        }


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, with the handlers' lanes beside its streams."""

    @property
    def _lanes(self) -> Mapping[str, Lane]:
        return getattr(self.app, "lanes", {})  # type: ignore[no-any-return]

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        lanes = self._lanes
        if any(lane.paused for lane in lanes.values()):
            # A lane catching up resumes its partitions within milliseconds; a
            # fetch of the other partitions must not sit out Faust's full second.
            timeout = min(timeout, _PAUSED_FETCH_TIMEOUT_S)
        records: dict[TP, list[Any]] = await super()._getmany(active_partitions, timeout)  # type: ignore[assignment]
        if records and lanes:
            # Whole batches for the lanes; the rest go Faust's way.
            for tp in [tp for tp in records if tp.topic in lanes]:
                batch = records.pop(tp)
                if self.flow_active:
                    lanes[tp.topic].deliver(TP(tp.topic, tp.partition), batch)
        return records

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for lane in self._lanes.values():
            lane.on_revoke()
        await super().on_partitions_revoked(revoked)

    async def wait_empty(self) -> None:
        # Records a lane is handling finish before Faust's commit.
        for lane in self._lanes.values():
            if not self.should_stop:
                await lane.wait_idle()
        await super().wait_empty()

    async def perform_seek(self) -> None:
        assigned = {TP(tp.topic, tp.partition) for tp in self.assignment()}
        for lane in self._lanes.values():
            lane.on_seek(assigned)
        await super().perform_seek()

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        yield from super()._filter_tps_with_pending_acks(topics)
        for lane in self._lanes.values():
            for tp in lane.partitions():
                if topics is None or tp in topics or tp.topic in topics:
                    yield tp

    def _new_offset(self, tp: TP) -> int | None:
        lane = self._lanes.get(tp.topic)
        if lane is not None:
            return lane.committable(tp)
        return super()._new_offset(tp)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Producer` and :class:`Consumer`."""

    Consumer = Consumer
    Producer = Producer
