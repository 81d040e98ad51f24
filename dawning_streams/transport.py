"""The Faust transport, with the producer settings Faust leaves out, and its metrics.

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
    """Faust's aiokafka consumer, with each poll timed."""

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        started = time.perf_counter()
        try:
            return await super()._getmany(active_partitions, timeout)
        finally:
            self.app.telemetry.metrics.polled(time.perf_counter() - started)  # type: ignore[attr-defined]


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Producer` and :class:`Consumer`."""

    Producer = Producer
    Consumer = Consumer
