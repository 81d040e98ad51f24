"""The Faust transport: the producer settings Faust leaves out, metrics, the handlers'
fast lane, and a consumer whose commits keep up after a rebalance.

Faust builds aiokafka's producer without ``enable_idempotence`` unless it is in
a transaction; this transport passes it, with ``acks``, from the settings, and
creates every topic with the settings' ``min.insync.replicas``. It
also counts every send by its outcome (``kafka.producer.send.total``) and
times every consumer poll (``kafka.consumer.poll.time``), whoever sends or
polls: the bus, retries, dead letters, table changelogs.

Its consumer hands the records of handler source topics to their
:class:`~dawning_streams.kafka.lanes.Lane` instead of Faust's per-message path, and
commits the offsets the lanes have finished along with Faust's own, once
everything sent before the commit (table changelog writes above all, which
Faust only queues, and the bus's sends) is acknowledged. Its aiokafka consumer
lets the broker hold an empty fetch for ``Kafka:FetchMaxWaitMs`` instead of
Faust's fixed 1.5 s, which a partition resumed meanwhile would otherwise sit out.

Its aiokafka consumer also asks for the cluster's metadata again every second
while a topic it subscribes to is missing from it
(:class:`~dawning_streams.kafka.watches.MissingTopicsWatch`), so a group leader
that assigned without that topic rejoins as soon as the topic shows.

And it watches the tables' recovery
(:func:`~dawning_streams.kafka.watches.stalled_changelogs`): an active
changelog partition that has received nothing for ``RECOVERY_STALL_S`` since
the recovery began, while records wait below its highwater, is read again
from the recovery's offset. A fetch that landed just as the group rebalanced
again could leave the consumer past records the recovery never got, and the
worker in recovery, firing no timer, for good.

Faust queues a table's changelog writes in the producer's buffer, since
``table[key] = value`` cannot wait. When the buffer outgrows
``ProducerBuffer.max_messages`` (an outage, or a handler writing faster than
the brokers take it), the writer waits for it to drain: back-pressure, without
Faust's warning per message. Its high-water mark is a metric.

Before its first join, the consumer asks whether the group's members run other
modules (:mod:`~dawning_streams.kafka.membership`); a worker that would break
them stops instead.

The module passes 400 lines because each part above changes what Faust's
consumer does around a join or a rebalance, and they are checked best side by side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from contextlib import suppress
from typing import Any

from aiokafka.structs import RecordMetadata
from faust.exceptions import ConsumerNotStarted
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer as FaustProducerBuffer
from faust.types import TP
from mode import Service

from dawning_streams.kafka import faust_compat
from dawning_streams.kafka.lanes import Lane
from dawning_streams.kafka.membership import other_apps_in_group
from dawning_streams.kafka.watches import MissingTopicsWatch, stalled_changelogs

__all__ = ["Consumer", "Producer", "ProducerBuffer", "Transport"]

logger = logging.getLogger(__name__)

_PAUSED_FETCH_TIMEOUT_S = 0.01


class ProducerBuffer(FaustProducerBuffer):
    """Faust's queue of sends that cannot wait (table changelog writes), with
    quiet back-pressure and a high-water mark."""

    #: The most sends it has held at once.
    high_water = 0

    def put(self, fut: Any) -> None:
        super().put(fut)
        size = self.size
        if size > self.high_water:
            self.high_water = size

    @property
    def size(self) -> int:
        # Faust's reads its settings on every call; this is asked per record.
        return (self.queue or self.pending).qsize()

    @property
    def full(self) -> bool:
        """More queued than ``max_messages``: whoever is writing should :meth:`ebb`."""
        return self.size > self.max_messages

    async def wait_until_ebb(self) -> None:
        # Faust's own logs a warning per message while the buffer is full.
        if self.full:
            await self.flush_atmost(self.max_messages)

    ebb = wait_until_ebb


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer, idempotent when the settings say so."""

    buffer: ProducerBuffer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        threaded = self.buffer.__dict__.get("threaded_producer")
        self.buffer = ProducerBuffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = self.app
        if threaded is not None:
            self.buffer.threaded_producer = threaded

    async def create_topic(
        self, topic: str, partitions: int, replication: int, **kwargs: Any
    ) -> None:
        """Create ``topic`` (if missing) with the settings' topic configuration
        (``min.insync.replicas``) under what its declaration asks for.

        Every topic a worker declares is created here: message, timer and
        dead-letter topics, and Faust's table changelogs.
        """
        kafka = self.app.dawning_settings.kafka  # type: ignore[attr-defined]
        kwargs["config"] = {**kafka.topic_config(), **(kwargs.get("config") or {})}
        await super().create_topic(topic, partitions, replication, **kwargs)

    def _settings_extra(self) -> Mapping[str, Any]:
        settings = self.app.dawning_settings.kafka.producer  # type: ignore[attr-defined]
        return {
            **super()._settings_extra(),
            "acks": settings.acks,
            "enable_idempotence": settings.enable_idempotence,
        }

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> Awaitable[RecordMetadata]:
        try:
            pending = await super().send(topic, *args, **kwargs)
        except BaseException:
            self._sent(topic, ok=False)
            raise
        return self.counted(topic, pending)

    def _sent(self, topic: str, *, ok: bool) -> None:
        self.app.telemetry.metrics.sent(topic, ok=ok)  # type: ignore[attr-defined]

    def counted(self, topic: str, pending: Awaitable[RecordMetadata]) -> Awaitable[RecordMetadata]:
        """``pending``, counted in ``kafka.producer.send.total`` when the broker answers."""

        def count(done: asyncio.Future[RecordMetadata]) -> None:
            self._sent(topic, ok=not done.cancelled() and done.exception() is None)

        future = asyncio.ensure_future(pending)
        future.add_done_callback(count)
        return future


def _seek(consumer: Any, offsets: Mapping[TP, int]) -> None:
    for tp, offset in offsets.items():
        consumer.seek(tp, offset)


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, whose aiokafka consumer honours ``Kafka:FetchMaxWaitMs``
    and asks again for the metadata of a subscribed topic it is missing."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        settings = self.app.dawning_settings  # type: ignore[attr-defined]
        faust_compat.set_fetch_max_wait(consumer, settings.kafka.fetch_max_wait_ms)
        self.missing_topics = MissingTopicsWatch(consumer)
        return consumer


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, with the handlers' lanes beside its streams,
    committing what it handled before a rebalance, and at full speed after one.

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

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    #: The start of the recovery whose stall was last logged.
    _unstalled_at: float | None = None
    #: Whether the group's members were compared with this one (before its first join).
    _members_compared = False

    async def subscribe(self, topics: Iterable[str]) -> None:
        wanted = set(topics)
        if not self._members_compared:
            # Before the first join: a worker whose group runs other modules stops here.
            self._members_compared = True
            problem = await other_apps_in_group(self.app.dawning_settings.kafka, wanted)  # type: ignore[attr-defined]
            if problem is not None:
                logger.error("%s", problem)
                if self.app.in_worker:  # type: ignore[attr-defined]
                    self.app._exit_now(2)  # type: ignore[attr-defined]
        await super().subscribe(wanted)

    @Service.timer(2.0)
    async def _look_for_missing_topics(self) -> None:
        watch: MissingTopicsWatch | None = getattr(self._thread, "missing_topics", None)
        if watch is None:
            return
        with suppress(ConsumerNotStarted):
            await faust_compat.call_in_consumer_thread(
                self._thread, lambda _consumer: watch.check(), wait=False
            )

    @Service.timer(5.0)
    async def _unstall_recovery(self) -> None:
        recovery: Any = self.app.tables.recovery  # type: ignore[attr-defined]
        if not recovery.in_recovery:
            return
        started_at, received = faust_compat.recovery_progress(recovery)
        stalled = stalled_changelogs(
            started_at,
            time.monotonic(),
            dict(recovery.active_offsets),
            dict(recovery.active_highwaters),
            received,
        )
        if not stalled:
            return
        if self._unstalled_at != started_at:  # said once per recovery
            self._unstalled_at = started_at
            logger.warning(
                "table recovery: no record received from %s since the recovery began %.0f s "
                "ago; reading them again from the recovery's offsets",
                ", ".join(f"{tp.topic}[{tp.partition}]@{n}" for tp, n in stalled.items()),
                time.monotonic() - started_at,  # type: ignore[operator]
            )
        await faust_compat.call_in_consumer_thread(
            self._thread, lambda consumer: _seek(consumer, stalled), wait=True
        )

    @property
    def _lanes(self) -> Mapping[str, Lane]:
        return getattr(self.app, "lanes", {})  # type: ignore[no-any-return]

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        started = time.perf_counter()
        try:
            return await self._getmany_for_lanes(active_partitions, timeout)
        finally:
            self.app.telemetry.metrics.polled(time.perf_counter() - started)  # type: ignore[attr-defined]

    async def _getmany_for_lanes(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        lanes = self._lanes
        if any(lane.paused for lane in lanes.values()):
            # A lane catching up resumes its partitions within milliseconds; a
            # fetch of the other partitions must not sit out Faust's full second.
            timeout = min(timeout, _PAUSED_FETCH_TIMEOUT_S)
        records: dict[TP, list[Any]] = await super()._getmany(active_partitions, timeout)  # type: ignore[assignment]
        if records and lanes:
            # Whole batches for the lanes; the rest go Faust's way.
            for fetched in [tp for tp in records if tp.topic in lanes]:
                batch, tp = records.pop(fetched), TP(fetched.topic, fetched.partition)
                if self.flow_active:
                    lanes[tp.topic].deliver(tp, batch)
                else:
                    # Faust seeks back after a fetch that lands with the flow stopped.
                    lanes[tp.topic].refuse(tp, batch)
        return records

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # A lane drops what it has buffered but not started.
        for lane in self._lanes.values():
            lane.hold()
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

    # The consumer thread hands each rebalance to the main loop and waits for it.
    # When the group rebalances while this worker stops, the main loop's method
    # queue may be gone already and the thread (and the stop with it) would wait
    # for ever; the rebalance means nothing to a worker that is leaving.

    async def threadsafe_partitions_revoked(self, receiver_loop: Any, revoked: set[TP]) -> None:
        if not self.should_stop:
            await super().threadsafe_partitions_revoked(receiver_loop, revoked)

    async def threadsafe_partitions_assigned(
        self, receiver_loop: Any, assigned: set[TP], generation_id: int = 0
    ) -> None:
        if not self.should_stop:
            await super().threadsafe_partitions_assigned(receiver_loop, assigned, generation_id)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        tps = {TP(tp.topic, tp.partition) for tp in assigned}
        for lane in self._lanes.values():
            lane.on_assign(tps)
        await super().on_partitions_assigned(assigned, generation_id)

    async def wait_empty(self) -> None:
        # Records a lane is handling finish before Faust's commit.
        for lane in self._lanes.values():
            if not self.should_stop:
                await lane.wait_idle()
        await super().wait_empty()

    _seeking: asyncio.Lock | None = None

    async def perform_seek(self) -> None:
        # Faust seeks from its recovery and from its fetcher (when a fetch lands
        # with the flow stopped): one at a time, or the end of one would let the
        # lanes take records in the middle of the other.
        if self._seeking is None:
            self._seeking = asyncio.Lock()
        async with self._seeking:
            await self._seek_held()

    async def _seek_held(self) -> None:
        # A fetch can land while the seek is in progress, from the position
        # before it. The lanes refuse what was fetched before their partitions
        # are paused in the client, and nothing is fetched until the seek is done.
        # A seek that fails or is cancelled (the worker stops, or a new
        # rebalance restarts recovery) leaves the lanes holding and their
        # partitions paused: the seek that follows every assignment resumes them.
        lanes = self._lanes
        held = [tp for tp in self.assignment() if tp.topic in lanes]
        for lane in lanes.values():
            lane.hold()
        await self._fetching(held, paused=True)
        await super().perform_seek()
        for lane in lanes.values():
            lane.on_seek()
        await self._fetching(held, paused=False, wait=False)

    async def _fetching(self, tps: list[TP], *, paused: bool, wait: bool = True) -> None:
        """Pause or resume ``tps`` in aiokafka, which then neither fetches them nor
        returns what it fetched before (Faust's own pause only stops asking).

        Without ``wait`` the call is only handed to the consumer's thread: a
        worker stopping must not wait on a thread that is stopping too.
        """
        if not tps:
            return

        def apply(consumer: Any) -> None:
            assigned = consumer.assignment()  # it may have changed meanwhile
            chosen = [tp for tp in faust_aiokafka.ensure_aiokafka_TPset(tps) if tp in assigned]
            (consumer.pause if paused else consumer.resume)(*chosen)

        await faust_compat.call_in_consumer_thread(self._thread, apply, wait=wait)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed: Mapping[TP, int] = await super().seek_to_committed()
        # aiokafka seeks only the partitions with a committed offset above 0; on
        # the others, records a lane refused are behind the consumer's position.
        assigned = self.assignment()
        for lane in self._lanes.values():
            for tp, offset in lane.refused().items():
                if tp in assigned and not committed.get(tp):
                    await self.seek(tp, offset)
        return committed

    async def _commit_tps(self, tps: Any, start_new_transaction: bool) -> bool:
        # Commit after processing means after its effects too: a table write
        # still queued when the offset is committed would be lost in a crash,
        # and so would a message a handler sent through the bus (its own
        # producer) without waiting for the ack.
        await self.app.producer.flush()
        flush_bus = getattr(self.app, "flush_bus", None)
        if flush_bus is not None:
            await flush_bus()
        return await super()._commit_tps(tps, start_new_transaction)  # type: ignore[no-any-return]

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


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`Producer` and :class:`Consumer`."""

    Consumer = Consumer
    Producer = Producer
