"""Durable timers: countdowns, etas, expiry, retry backoff and ``RetryLater``.

Every delayed attempt of a handler is an entry in one changelog-backed table
per handler, ``<handler>-timers``, co-partitioned with the handler's source
topic: partition *p* of the table holds the timers of partition *p* of the
source, so the worker that owns a source partition owns its timers too.

- **In.** A retry or ``RetryLater`` is written into the table by the worker
  that handled the failed attempt, and the failed record's offset becomes
  committable only once the broker has the table write. ``apply_async`` with a
  countdown, an eta or an expiry publishes to ``<topic>.<handler>.timers``
  instead (any process can), and the owner of that partition moves each record
  into the table, committing the offset only after the table write. Nothing
  waits unacknowledged.
- **Out.** The owner keeps an in-memory heap of its partitions' timers and
  fires each when due, earliest first, up to the handler's ``concurrency`` at
  once: it runs the handler (or routes the failure), and only then deletes the
  entry. A timer due later never holds back one due sooner, on any key or
  partition.
- **Rebalances.** When partitions are revoked nothing new fires; what is
  firing may finish. When the new assignment's tables are recovered, each
  owner rebuilds its heap from the table and fires whatever is overdue. A
  crash between firing and deleting repeats the attempt (at least once); a
  timer is never lost, and never fires early.

Ordered handlers keep their key order in the same table. While a key's
message waits on a retry, the key is *held*: an entry names the timer that
holds it, and later messages of the key are *parked*, each in an entry of its
own (O(1) per message; a redelivered message is parked once). When the holder
succeeds or is dead-lettered, the parked messages run in order, and the key
is released. Writes reach one partition of the changelog in order, so every
crash leaves a prefix of them: the holder's timer is written before the hold
and deleted after it. A hold whose timer no longer exists (revoked, or
released by an operator) is found by the watchdog within a second and its
parked messages run; a hold whose timer is overdue by ``Timers:StuckAfterS``
is reported stuck on ``/ready``, in metrics and on the dashboard.

Table keys (bytes): ``t:<timer id>``, ``h:<message key>``,
``q:<message key>\\0<sequence>``, ``w:<partition>``; values are JSON with the
partition ``p``. A timer's id is its message's ``MessageId`` (or
``topic/partition/offset`` for bytes without one), so a message is pending at
most once per handler. ``w:`` holds the offset of the last timers-topic record
taken from that partition, and the newest timestamp taken: a record read again
(its offset was not committed before a crash or an outage) is not scheduled
again after it has fired.

The module runs past 400 lines: the entries, the heap, holds and parking are
one state machine whose crash safety rests on the order of its table writes,
and that order is checked best where it is all in view.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import faust
import orjson
from faust.types import TP
from mode import Service

from dawning_streams.core.names import (
    Header,
    header_text,
    replay_target,
    replayed_for_another,
    revoke_reply_key,
    timers_table,
)
from dawning_streams.handlers.delivery import Delivery
from dawning_streams.kafka.lanes import Lane, acting_on
from dawning_streams.kafka.reading import read_to_end

if TYPE_CHECKING:
    from dawning_streams.handlers.host import HandlerHost

__all__ = [
    "REVOKE_WAIT_S",
    "Hold",
    "Timer",
    "TimerStats",
    "Timers",
    "due_ms_in",
    "pending_timers",
]

logger = logging.getLogger(__name__)

_TIMER, _HOLD, _PARKED, _TAKEN = b"t:", b"h:", b"q:", b"w:"
_SEPARATOR = b"\x00"
#: How long ``_take`` gives Redis to carry a revoke's answer.
_REPLY_TIMEOUT_S = 2.0
#: A fire whose failure cannot even be routed is tried again this much later.
_UNROUTABLE_DELAY_MS = 60_000
#: The longest a rebalance waits for the timers firing when it began.
REVOKE_WAIT_S = 10.0


def _dumps(entry: dict[str, Any]) -> bytes:
    """JSON of a table entry, in a bytes object of its own size: orjson's output
    keeps a buffer of 8 KiB or more, which every pending timer would hold."""
    return bytes(memoryview(orjson.dumps(entry)))


def now_ms() -> int:
    return math.floor(time.time() * 1000)


def due_ms_in(delay_s: float) -> int:
    """Epoch milliseconds ``delay_s`` from now, rounded up so nothing fires early."""
    return math.ceil((time.time() + delay_s) * 1000)


@dataclass(slots=True, eq=False)
class Timer:
    """One pending attempt of a handler: what to run, and when."""

    id: str
    partition: int
    due_ms: int
    attempt: int
    delivery: Delivery
    expires_ms: int | None = None
    #: ``Type: message`` of the last failure, for operators.
    error: str | None = None

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "p": self.partition,
                "due": self.due_ms,
                "a": self.attempt,
                "exp": self.expires_ms,
                "err": self.error,
                "d": self.delivery.to_json(),
            }
        )

    @classmethod
    def from_json(cls, timer_id: str, data: dict[str, Any]) -> Timer:
        return cls(
            timer_id,
            data["p"],
            data["due"],
            data["a"],
            Delivery.from_json(data["d"]),
            data.get("exp"),
            data.get("err"),
        )

    @classmethod
    def from_record(cls, record: Any) -> Timer:
        """A timer from a record ``apply_async`` published to the timers topic.

        Headers that cannot be read make it due now (it is logged): a record
        there is never dropped. A replayed dead letter has none, and is due now.
        """
        delivery = Delivery.of_record(record)
        due_ms = delivery.header_int(Header.DUE_MS)
        if due_ms is None and delivery.header(Header.REPLAYED_FROM) is None:
            logger.warning(
                "timer %s/%d/%d has no readable %s header; due now",
                record.topic,
                record.partition,
                record.offset,
                Header.DUE_MS,
            )
        return cls(
            id=delivery.header(Header.TIMER_ID) or delivery.origin_id,
            partition=record.partition,
            due_ms=due_ms if due_ms is not None else now_ms(),
            attempt=delivery.header_int(Header.ATTEMPT) or 0,
            delivery=delivery,
            expires_ms=delivery.header_int(Header.EXPIRES_MS),
        )


class _Pending:
    """What the heap needs of a pending timer; the rest stays in the table entry
    until it fires (a timer's message would otherwise be kept twice)."""

    __slots__ = ("due_ms", "id", "partition")

    def __init__(self, timer_id: str, partition: int, due_ms: int) -> None:
        self.id = timer_id
        self.partition = partition
        self.due_ms = due_ms


@dataclass(slots=True)
class Hold:
    """An ordered handler's key that waits on a retry."""

    partition: int
    #: The id of the timer that holds the key.
    holder: str
    since_ms: int
    #: The next parked message's sequence number.
    tail: int = 0
    #: The highest source offset of the key parked or holding: a redelivery is not parked again.
    upto: int = -1
    #: The last timer parked behind the key: a repeated fire is not parked again.
    last: str | None = None

    def to_bytes(self) -> bytes:
        return _dumps(
            {
                "p": self.partition,
                "holder": self.holder,
                "since": self.since_ms,
                "tail": self.tail,
                "upto": self.upto,
                "last": self.last,
            }
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Hold:
        return cls(
            data["p"], data["holder"], data["since"], data["tail"], data["upto"], data["last"]
        )


@dataclass(frozen=True, slots=True)
class TimerStats:
    """What one handler's timers hold on this worker."""

    pending: int
    next_due_ms: int | None
    held_keys: int
    parked: int
    stuck_keys: tuple[str, ...]
    fired: int
    #: Fired minus due, in ms, of the last fires (at most 1,000).
    lateness_ms: tuple[int, ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "next_due_ms": self.next_due_ms,
            "held_keys": self.held_keys,
            "parked": self.parked,
            "stuck_keys": list(self.stuck_keys),
            "fired": self.fired,
        }


class _Table(faust.Table):  # type: ignore[misc]
    """A bytes table whose :class:`Timers` hears when recovery has completed."""

    timers: Timers | None = None

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        if self.timers is not None:
            self.timers.recovered({tp.partition for tp in active_tps})


FireFn = Callable[[Timer], Awaitable[None]]
ReleaseFn = Callable[[str, int], Awaitable[None]]
ExpireFn = Callable[[Timer, str], Awaitable[None]]


class Timers(Service):
    """One handler's timers: the table, the timers topic's lane, and the firing."""

    def __init__(
        self,
        app: HandlerHost,
        *,
        handler: str,
        source: str,
        topic: Any,
        concurrency: int,
        fire: FireFn,
        release: ReleaseFn,
        dead_letter: ExpireFn,
        **kwargs: Any,
    ) -> None:
        self.app = app
        self.handler = handler
        self._replay_id = replay_target(app.conf.id, handler)
        self.source = source
        self.topic_name: str = topic.get_topic_name()
        self.concurrency = concurrency
        self._fire = fire
        self._release = release
        self._dead_letter = dead_letter
        settings = app.dawning_settings
        self.stuck_after_ms = settings.timers.stuck_after_s * 1000
        table = _Table(
            app,
            name=timers_table(handler),
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.kafka.partitions,
            beacon=app.tables.beacon,  # type: ignore[attr-defined]
            help=f"Pending timers and held keys of handler {handler}.",
        )
        table.timers = self
        self.table: Any = app.tables.add(table)  # type: ignore[attr-defined]
        # The timers topic: an agent for the subscription and co-partitioning,
        # a lane that moves its records into the table in batches.
        app.agent(topic, name=f"{handler}.timers")(self._consume)
        # Revocations must meet the recovered table: the records wait for it.
        app.add_lane(
            Lane(
                app,
                self.topic_name,
                self._take,
                batch_size=500,
                batch_within_s=0.005,
                ready=self.owns,
            )
        )
        self._timers: dict[str, _Pending] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._order = itertools.count()
        self._holds: dict[str, Hold] = {}
        self._parked: dict[str, dict[int, Delivery]] = {}
        self._owned: set[int] = set()
        #: Per timers-topic partition: (offset, timestamp ms) of the last record taken.
        self._taken: dict[int, tuple[int, int]] = {}
        self._running: dict[str, _Pending] = {}
        self._releasing: set[str] = set()
        #: Table writes not yet acknowledged (kept so they are not collected).
        self._writing: set[asyncio.Future[Any]] = set()
        #: Timers being fired, and holds being released.
        self._firing_now: set[asyncio.Future[Any]] = set()
        self._wakeup = asyncio.Event()
        self._stuck: tuple[str, ...] = ()
        self._fired = 0
        self._lateness: list[int] = []
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        return f"<Timers of {self.handler}>"

    # -- what there is ---------------------------------------------------------

    def stats(self) -> TimerStats:
        pending = [t for t in self._timers.values() if t.partition in self._owned]
        return TimerStats(
            pending=len(pending),
            next_due_ms=min((t.due_ms for t in pending), default=None),
            held_keys=len(self._holds),
            parked=sum(len(parked) for parked in self._parked.values()),
            stuck_keys=self._stuck,
            fired=self._fired,
            lateness_ms=tuple(self._lateness),
        )

    def pending(self, timer_id: str) -> Timer | None:
        """The pending timer ``timer_id`` on this worker, or None."""
        pending = self._timers.get(timer_id)
        if pending is None or pending.partition not in self._owned:
            return None
        return self._load(timer_id)

    def _load(self, timer_id: str) -> Timer | None:
        """The whole timer, from its table entry (None if it went, or cannot be read)."""
        key = _TIMER + timer_id.encode()
        value = self.table.data.get(key)
        if value is None:
            return None
        try:
            return Timer.from_json(timer_id, _entry(key, value))
        except _UNREADABLE as exc:
            self._say_unreadable([(key, _why(exc))])
            self._timers.pop(timer_id, None)
            return None

    def _say_unreadable(self, entries: list[tuple[bytes, str]]) -> None:
        """Name entries of the table that cannot be read: skipped, never fired,
        and kept in the changelog for an operator (each one at every recovery)."""
        shown = "; ".join(f"{key!r}: {why}" for key, why in entries[:5])
        more = f"; and {len(entries) - 5} more" if len(entries) > 5 else ""
        logger.error(
            "%s: %d entries of its timer table (changelog %s) cannot be read and are skipped,"
            " the other timers are not: %s%s. Written by something other than this"
            " framework; once inspected, a tombstone (the key with a null value) on that"
            " topic removes one",
            self.handler,
            len(entries),
            self.table.changelog_topic.get_topic_name(),
            shown,
            more,
        )

    def holder(self, key: str) -> str | None:
        """The id of the timer ``key`` waits on, or None when it is not held."""
        hold = self._holds.get(key)
        return hold.holder if hold is not None else None

    # -- scheduling ------------------------------------------------------------

    def schedule(self, timer: Timer, *, hold: str | None = None) -> Awaitable[Any]:
        """Keep ``timer`` (replacing a pending one of the same id) and, with
        ``hold``, make it the timer that key waits on. The result resolves when
        the broker has the table writes."""
        self._timers[timer.id] = _Pending(timer.id, timer.partition, timer.due_ms)
        heapq.heappush(self._heap, (timer.due_ms, next(self._order), timer.id))
        writes = [self._write(timer.partition, _TIMER + timer.id.encode(), timer.to_bytes())]
        if hold is not None:
            current = self._holds.get(hold)
            if current is None:
                current = self._holds[hold] = Hold(timer.partition, timer.id, now_ms())
            current.holder = timer.id
            if timer.delivery.topic == self.source:
                current.upto = max(current.upto, timer.delivery.offset)
            writes.append(self._write(timer.partition, _HOLD + hold.encode(), current.to_bytes()))
        self._wakeup.set()
        return asyncio.gather(*writes)

    def park(self, key: str, delivery: Delivery, *, timer_id: str | None = None) -> Awaitable[Any]:
        """Put ``delivery`` behind ``key``'s held message; once per message."""
        hold = self._holds[key]
        if timer_id is not None:
            if hold.last == timer_id:
                return _done()
            hold.last = timer_id
        elif delivery.topic == self.source:
            if delivery.offset <= hold.upto:
                return _done()  # a redelivery: parked already, or the holder itself
            hold.upto = delivery.offset
        sequence = hold.tail
        hold.tail += 1
        self._parked.setdefault(key, {})[sequence] = delivery
        entry = _dumps({"p": hold.partition, "d": delivery.to_json()})
        return asyncio.gather(
            self._write(hold.partition, _parked_key(key, sequence), entry),
            self._write(hold.partition, _HOLD + key.encode(), hold.to_bytes()),
        )

    def first_parked(self, key: str) -> tuple[int, Delivery] | None:
        parked = self._parked.get(key)
        if not parked:
            return None
        sequence = min(parked)
        return sequence, parked[sequence]

    def drop_parked(self, key: str, sequence: int) -> None:
        parked = self._parked.get(key)
        hold = self._holds.get(key)
        if parked is None or hold is None or parked.pop(sequence, None) is None:
            return
        if not parked:
            del self._parked[key]
        self._write(hold.partition, _parked_key(key, sequence), None)

    def unhold(self, key: str) -> bool:
        """Release ``key`` if nothing is parked behind it; True when released."""
        if self._parked.get(key):
            return False
        hold = self._holds.pop(key, None)
        if hold is not None:
            self._write(hold.partition, _HOLD + key.encode(), None)
        return True

    def finish(self, timer: Timer) -> None:
        """Delete the fired ``timer`` unless it was rescheduled while it ran."""
        running = self._running.get(timer.id)
        if running is not None and self._timers.get(timer.id) is running:
            del self._timers[timer.id]
            self._write(timer.partition, _TIMER + timer.id.encode(), None)

    def owns(self, partition: int) -> bool:
        return partition in self._owned

    # -- the timers topic ------------------------------------------------------

    async def _consume(self, stream: Any) -> None:
        # Runs only when the consumer cannot give the topic to the lane.
        async for event in stream.events():
            await self._take([event.message])

    async def _take(self, records: list[Any]) -> None:
        """Move records of the timers topic into the table; revocations apply at once."""
        writes: list[Awaitable[Any]] = []
        taken: dict[int, tuple[int, int]] = {}
        for record in records:
            headers = record.headers or ()
            revoked = header_text(headers, Header.REVOKE)
            if revoked is not None:
                await self._revoke(record.partition, revoked, header_text(headers, Header.REPLY_TO))
                continue
            released = header_text(headers, Header.RELEASE)
            if released is not None:
                if not await self.release_into_dead_letters(released):
                    logger.warning(
                        "%s: key %s is not held here; nothing released", self.handler, released
                    )
                continue
            if replayed_for_another(headers, self._replay_id):
                continue  # replayed for the same handler in another group
            if self._was_taken(record):
                # Read again (its offset was not committed, say in an outage): it
                # may have fired since, and must not be scheduled a second time.
                continue
            writes.append(self.schedule(Timer.from_record(record)))
            _, newest = taken.get(record.partition) or self._taken.get(record.partition, (0, 0))
            taken[record.partition] = (record.offset, max(newest, record.timestamp))
        # After the timers: a crash between leaves a timer taken twice, never lost.
        for partition, (offset, newest) in taken.items():
            value = orjson.dumps({"p": partition, "o": offset, "ts": newest})
            writes.append(self._write(partition, _TAKEN + b"%d" % partition, value))
        if writes:
            await asyncio.gather(*writes)
        # Only once the broker has them: a record whose write failed is taken again.
        self._taken.update(taken)

    def _was_taken(self, record: Any) -> bool:
        """Whether ``record`` is at or before the last one taken from its partition,
        and no newer than any taken (a topic made anew starts its offsets again)."""
        last = self._taken.get(record.partition)
        return last is not None and record.offset <= last[0] and record.timestamp <= last[1]

    async def _revoke(self, partition: int, timer_id: str, reply_to: str | None) -> None:
        timer = self._timers.get(timer_id)
        found = timer is not None and timer.partition == partition and timer_id not in self._running
        if found:
            del self._timers[timer_id]
            self._write(partition, _TIMER + timer_id.encode(), None)
            logger.info("%s: revoked timer %s", self.handler, timer_id)
            self._wakeup.set()
        if reply_to is None:
            return
        client = self.app.redis.client
        key = revoke_reply_key(reply_to)
        try:
            async with asyncio.timeout(_REPLY_TIMEOUT_S):
                await client.rpush(key, b"1" if found else b"0")
                await client.expire(key, 300)
        except Exception as exc:  # Redis unreachable: the revocation holds anyway
            logger.warning("%s: could not answer revoke of %s: %r", self.handler, timer_id, exc)

    async def release_into_dead_letters(self, key: str) -> bool:
        """Dead-letter the message ``key`` waits on; what is parked behind it then runs."""
        hold = self._holds.get(key)
        if hold is None or hold.holder in self._running:
            return False
        timer = self._load(hold.holder) if hold.holder in self._timers else None
        if timer is not None:
            await self._dead_letter(timer, "released by an operator")
            del self._timers[timer.id]
            self._write(timer.partition, _TIMER + timer.id.encode(), None)
        self._wakeup.set()
        return True

    # -- rebalances ------------------------------------------------------------

    def recovered(self, active: set[int]) -> None:
        """Rebuild the heap, holds and parked messages of ``active`` from the table."""
        self._owned = set(active)
        timers: dict[str, _Pending] = {}
        holds: dict[str, Hold] = {}
        parked: dict[str, dict[int, Delivery]] = {}
        taken: dict[int, tuple[int, int]] = {}
        store = self.table.data
        stale = []
        unreadable = []
        for key, value in list(store.items()):
            if value is None:
                continue
            try:
                data = _entry(key, value)
                if data["p"] not in active:
                    stale.append(key)
                    continue
                kind, rest = key[:2], key[2:]
                if kind == _TIMER:
                    timer_id = rest.decode()
                    timers[timer_id] = _Pending(timer_id, data["p"], data["due"])
                elif kind == _HOLD:
                    holds[rest.decode()] = Hold.from_json(data)
                elif kind == _PARKED:
                    name, _, sequence = rest.rpartition(_SEPARATOR)
                    parked.setdefault(name.decode(), {})[int(sequence)] = Delivery.from_json(
                        data["d"]
                    )
                elif kind == _TAKEN:
                    taken[data["p"]] = (data["o"], data["ts"])
            except _UNREADABLE as exc:
                unreadable.append((key, _why(exc)))
        if unreadable:
            self._say_unreadable(unreadable)
        for key in stale:  # another worker owns them now
            store.pop(key, None)
        self._timers, self._holds, self._parked = timers, holds, parked
        self._taken = taken
        self._heap = [(t.due_ms, next(self._order), t.id) for t in timers.values()]
        heapq.heapify(self._heap)
        self._wakeup.set()
        if timers or holds:
            logger.info(
                "%s: %d timers, %d held keys on partitions %s",
                self.handler,
                len(timers),
                len(holds),
                sorted(active),
            )

    def revoked(self) -> list[asyncio.Future[Any]]:
        """A rebalance began: nothing new fires until the next recovery. Returns
        what is firing now, which may finish (aiokafka revokes every partition)."""
        self._owned = set()
        return [task for task in self._firing_now if not task.done()]

    # -- writing ---------------------------------------------------------------

    def _write(self, partition: int, key: bytes, value: bytes | None) -> asyncio.Future[None]:
        """Set ``key`` in the table now; the future resolves when the broker has it."""
        store = self.table.data
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value
        written = asyncio.ensure_future(self._sent(partition, key, value))
        self._writing.add(written)
        written.add_done_callback(self._writing.discard)
        return written

    async def _sent(self, partition: int, key: bytes, value: bytes | None) -> None:
        pause_s = 0.5
        while True:
            try:
                await self.table.send_changelog(partition, key, value)
                return
            except Exception as exc:  # the producer's error: try again, the latest value
                if partition not in self._owned or self.should_stop:
                    logger.warning(
                        "%s: table write of %r not sent (%r); partition %d's next owner "
                        "repeats what it covered",
                        self.handler,
                        key,
                        exc,
                        partition,
                    )
                    return
                logger.warning(
                    "%s: table write failed (%r); trying again in %.1f s",
                    self.handler,
                    exc,
                    pause_s,
                )
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 10.0)
            value = self.table.data.get(key)

    # -- firing ----------------------------------------------------------------

    def _next_due(self) -> tuple[_Pending | None, float | None]:
        """The first due timer (taken off the heap), or how long until one is."""
        heap = self._heap
        while heap:
            due_ms, _, timer_id = heap[0]
            timer = self._timers.get(timer_id)
            if (
                timer is None
                or timer.due_ms != due_ms
                or timer_id in self._running
                or timer.partition not in self._owned
            ):
                heapq.heappop(heap)  # replaced, deleted, running or not ours: stale
                continue
            wait_ms = due_ms - time.time() * 1000
            if wait_ms > 0:
                return None, wait_ms / 1000
            heapq.heappop(heap)
            return timer, None
        return None, None

    @Service.task
    async def _firing(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        while not self.should_stop:
            timer, wait_s = self._next_due()
            if timer is None:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait_s)
                continue
            await slots.acquire()
            if self._timers.get(timer.id) is not timer or timer.partition not in self._owned:
                slots.release()
                continue
            self._running[timer.id] = timer
            task = asyncio.ensure_future(self._fire_one(timer))
            self._firing_now.add(task)
            task.add_done_callback(self._firing_now.discard)
            task.add_done_callback(lambda _: slots.release())

    async def _fire_one(self, pending: _Pending) -> None:
        lateness = now_ms() - pending.due_ms
        self._fired += 1
        self._lateness.append(lateness)
        if len(self._lateness) > 1_000:
            del self._lateness[:500]
        timer = self._load(pending.id)
        if timer is None:  # the entry went meanwhile
            self._running.pop(pending.id, None)
            return
        keep = acting_on(timer.delivery, self.handler)  # noqa: F841 (the weak reference's target)
        try:
            await self._fire(timer)  # an expired one is dead-lettered there
        except Exception:
            logger.critical(
                "%s: could not run or route timer %s (attempt %d); trying again in %d s",
                self.handler,
                timer.id,
                timer.attempt + 1,
                _UNROUTABLE_DELAY_MS // 1000,
                exc_info=True,
            )
            if self._timers.get(timer.id) is pending and timer.partition in self._owned:
                timer.due_ms = now_ms() + _UNROUTABLE_DELAY_MS
                self.schedule(timer)
            self._running.pop(timer.id, None)
            return
        if timer.partition not in self._owned:
            self._running.pop(timer.id, None)
            return  # revoked meanwhile: the next owner fires it again
        self.finish(timer)
        self._running.pop(timer.id, None)
        current = self._timers.get(timer.id)
        if current is not None and current is not pending:
            # Rescheduled while it ran (a retry): the heap entry it pushed was
            # skipped as running.
            heapq.heappush(self._heap, (current.due_ms, next(self._order), current.id))
            self._wakeup.set()

    @Service.timer(1.0)
    async def _watch(self) -> None:
        """Release keys whose holder is gone; report keys whose holder is overdue."""
        now = now_ms()
        stuck = []
        for key, hold in list(self._holds.items()):
            if hold.partition not in self._owned or hold.holder in self._running:
                continue
            timer = self._timers.get(hold.holder)
            if timer is None:
                if key not in self._releasing:
                    logger.warning(
                        "%s: key %s is held by timer %s, which is no longer pending; "
                        "releasing what is parked behind it",
                        self.handler,
                        key,
                        hold.holder,
                    )
                    self._releasing.add(key)
                    task = asyncio.ensure_future(self._release_orphan(key, hold.partition))
                    self._firing_now.add(task)
                    task.add_done_callback(self._firing_now.discard)
            elif now - timer.due_ms > self.stuck_after_ms:
                stuck.append(key)
        self._stuck = tuple(stuck)
        if stuck:
            logger.error(
                "%s: %d key(s) held past their retry's due time by over %d s: %s",
                self.handler,
                len(stuck),
                self.stuck_after_ms // 1000,
                ", ".join(stuck[:10]),
            )

    async def _release_orphan(self, key: str, partition: int) -> None:
        try:
            await self._release(key, partition)
        except Exception:
            logger.critical("%s: could not release key %s", self.handler, key, exc_info=True)
        finally:
            self._releasing.discard(key)


def _parked_key(key: str, sequence: int) -> bytes:
    return _PARKED + key.encode() + _SEPARATOR + b"%012d" % sequence


def _done() -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


async def pending_timers(app: HandlerHost, handlers: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What each handler's timer table holds, read from its changelog (no worker needed).

    Per handler: ``pending``, ``next_due_ms``, ``held`` (key -> holder, parked count,
    partition) and ``timers`` (id -> due ms, attempt, partition).
    """
    names = {
        handler: app.tables[timers_table(handler)].changelog_topic.get_topic_name()  # type: ignore[attr-defined]
        for handler in handlers
    }
    by_topic = {topic: handler for handler, topic in names.items()}
    tables: dict[str, dict[bytes, bytes]] = {handler: {} for handler in names}
    for record in await read_to_end(app.dawning_settings.kafka, names.values()):
        table = tables[by_topic[record.topic]]
        if record.value is None:
            table.pop(record.key, None)
        else:
            table[record.key] = record.value
    report: dict[str, dict[str, Any]] = {}
    for handler, table in tables.items():
        timers: dict[str, dict[str, Any]] = {}
        held: dict[str, dict[str, Any]] = {}
        parked: dict[str, int] = {}
        unreadable: dict[str, str] = {}
        for key, value in table.items():
            kind, rest = key[:2], key[2:]
            try:  # read as the worker reads it: what it skips is reported, not counted
                data = _entry(key, value)
                if kind == _TIMER:
                    timer = Timer.from_json(rest.decode(), data)
                    timers[timer.id] = {
                        "due_ms": timer.due_ms,
                        "attempt": timer.attempt,
                        "p": timer.partition,
                    }
                elif kind == _HOLD:
                    hold = Hold.from_json(data)
                    held[rest.decode()] = {
                        "holder": hold.holder,
                        "p": hold.partition,
                        "since_ms": hold.since_ms,
                    }
                elif kind == _PARKED:
                    Delivery.from_json(data["d"])
                    held_key = rest.rpartition(_SEPARATOR)[0].decode()
                    parked[held_key] = parked.get(held_key, 0) + 1
            except _UNREADABLE as exc:
                unreadable[repr(key)] = _why(exc)
        for held_key, entry in held.items():
            entry["parked"] = parked.get(held_key, 0)
        report[handler] = {
            "pending": len(timers),
            "next_due_ms": min((t["due_ms"] for t in timers.values()), default=None),
            "timers": timers,
            "held": held,
            "unreadable": unreadable,
        }
    return report


#: What reading a table entry someone else wrote may raise.
_UNREADABLE = (ValueError, KeyError, TypeError, IndexError)


def _entry(key: bytes, value: bytes) -> dict[str, Any]:
    """A timer table entry's JSON, checked for what every kind of entry has."""
    data = orjson.loads(value)
    if not isinstance(data, dict) or not isinstance(data.get("p"), int):
        raise ValueError("not an entry of this framework's (no partition)")
    if key[:2] == _TIMER and not isinstance(data.get("due"), int):
        raise ValueError("a timer without a due time")
    return data  # type: ignore[no-any-return]


def _why(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}"
    return f"{type(exc).__name__}: {exc}"
