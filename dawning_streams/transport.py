"""The Faust transport: the producer settings Faust leaves out, metrics, and a consumer
whose commits keep up after a rebalance.

Faust builds aiokafka's producer without ``enable_idempotence`` unless it is in
a transaction; this transport passes it, with ``acks``, from the settings. It
also counts every send by its outcome (``kafka.producer.send.total``) and
times every consumer poll (``kafka.consumer.poll.time``), whoever sends or
polls: the bus, retries, dead letters, table changelogs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from aiokafka.structs import RecordMetadata
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

__all__ = ["Consumer", "Producer", "Transport"]


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer, idempotent when the settings say so."""

    def _settings_extra(self) -> Mapping[str, Any]:
        settings = self.app.dawning_settings.kafka.producer  # type: ignore[attr-defined]
        return {
            **super()._settings_extra(),
            "acks": settings.acks,
            "enable_idempotence": settings.enable_idempotence,
        }

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> Awaitable[RecordMetadata]:
        metrics = self.app.telemetry.metrics  # type: ignore[attr-defined]
        try:
            pending = await super().send(topic, *args, **kwargs)
        except BaseException:
            metrics.sent(topic, ok=False)
            raise

        def count(done: asyncio.Future[RecordMetadata]) -> None:
            metrics.sent(topic, ok=not done.cancelled() and done.exception() is None)

        asyncio.ensure_future(pending).add_done_callback(count)
        return pending


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, committing what it handled before a rebalance,
    and at full speed after one.

    Faust commits the longest run of consecutive acknowledged offsets. After a
    rebalance, records fetched before the seek to the committed offset arrive
    with a jump in offsets, which Faust records as a "gap" to fill; when the
    records of that gap are then read and acknowledged too, each offset is in
    the list twice, every run is one offset long, and the committed offset
    advances by one per commit interval (faust #559, #625). Nothing is lost,
    but the next rebalance or restart handles everything since again. Merging
    the gaps first and dropping repeats gives Faust a list it handles right.

    Each poll is timed (``kafka.consumer.poll.time``).
    """

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        started = time.perf_counter()
        try:
            return await super()._getmany(active_partitions, timeout)
        finally:
            self.app.telemetry.metrics.polled(time.perf_counter() - started)  # type: ignore[attr-defined]

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        gaps = self._gap[tp]
        if acked and gaps:
            top = max(acked)
            filled = [n for gap in gaps.overlap(0, top) for n in range(gap.begin, gap.end)]
            if filled:
                acked.extend(filled)
                gaps.chop(0, max(max(filled) + 1, top + 1))
        unique = sorted(set(acked))
        if len(unique) != len(acked):
            acked[:] = unique
        return super()._new_offset(tp)  # type: ignore[no-any-return]

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Faust drops the acknowledged offsets of revoked partitions before its
        # own final commit, so every rebalance would hand out again what each
        # member handled since its last periodic commit. Stop taking new
        # events, let the ones in flight finish, and commit all of it while
        # this member still owns the partitions; Faust's own steps then find
        # nothing left to do.
        if revoked and self.assignment():
            self.stop_flow()
            self.app.flow_control.suspend()
            self.app.flow_control.clear()
            await self.wait_empty()
        await super().on_partitions_revoked(revoked)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Producer` and :class:`Consumer`."""

    Consumer = Consumer
    Producer = Producer
