"""The handlers' fast lane: fetched records go straight to the handler.

Faust takes each record through the conductor, a channel queue, a stream and
an event, with two tasks and an ``asyncio.wait`` per message; a do-nothing
agent manages about a tenth of what a plain aiokafka loop does. A handler's
source topic needs none of that, so the consumer (``transport.Consumer``)
hands whole fetched batches of those topics to the handler's :class:`Lane`,
which calls the handler on each record in offset order, from a few long-lived
worker coroutines: no task, future, queue or event object per message.

The guarantees stay Faust's and the broker's:

- commit after processing: a record's offset becomes committable only when the
  handler (with its retry or dead-letter routing) has finished with it and
  every earlier record of its partition has too; the consumer's periodic commit
  and its commit on rebalance and stop include these offsets;
- per-partition order: with ``concurrency=1`` records are handled one at a
  time, in the order they were fetched;
- rebalances: when partitions are revoked the lane drops what it has buffered,
  lets the records in progress finish before Faust commits, and accepts nothing
  until the consumer has sought to the committed offsets again. A fetch can
  land while a seek is in progress, from a position the seek is about to
  replace, so the lane refuses records from the start of every seek until its
  end; they are fetched again from the committed offset or, on a partition
  with none, from the first of them (:meth:`Lane.refused`). After a seek, the
  records of a partition the worker kept that it has already started come
  again, and are skipped: each is handled once per owner;
- back-pressure: a partition whose buffer is full stops being fetched until the
  lane has caught up, as Faust's stream buffers do; and a worker whose step
  filled the producer's buffer (table writes) waits for it to drain.

While a handler runs, Faust's ``current_event()`` names its record, so tables
(the ordered handlers' parking table, the agents' tables) work as in an agent.

:class:`Lane` and :class:`LaneGroup` share the bookkeeping that decides which
offsets are committed through a rebalance, the part the fault tests pin down;
it stays in one module, past 400 lines, so one reading covers every path to a
commit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from faust.types import TP
from mode import Service

from dawning_streams.kafka import faust_compat

if TYPE_CHECKING:
    from faust.types import AppT

__all__ = ["Lane", "LaneGroup", "acting_on"]

#: Records a worker handles before it lets the event loop run other tasks.
_YIELD_EVERY = 100

Step = Callable[[Any], Awaitable[None]]


class _Current:
    """What Faust's ``current_event()`` returns while a lane runs a handler:
    tables read ``.message.topic`` and ``.message.partition`` from it, and
    ``current_delivery()`` the handler's name."""

    __slots__ = ("__weakref__", "handler", "message")

    def __init__(self, message: Any, handler: str | None = None) -> None:
        self.message = message
        self.handler = handler


def acting_on(message: Any, handler: str | None = None) -> _Current:
    """Make ``message`` Faust's current event in this task, as a lane does, so
    tables written meanwhile send to its partition; keep the result alive."""
    current = _Current(message, handler)
    faust_compat.set_current_event(current)
    return current


class _Progress:
    """One partition's offsets: started in order, finished in any order.

    ``committable`` is one past the last offset below which every started
    record has finished, which is what Kafka's committed offset means.
    """

    __slots__ = ("committable", "done", "started")

    def __init__(self) -> None:
        self.started: deque[int] = deque()
        self.done: set[int] = set()
        self.committable: int | None = None

    def finish(self, offset: int) -> None:
        started = self.started
        if started and started[0] == offset:
            started.popleft()
            done = self.done
            while started and started[0] in done:
                offset = started.popleft()
                done.discard(offset)
            # After a seek back, records below it come again: it never goes back.
            if self.committable is None or offset >= self.committable:
                self.committable = offset + 1
        else:
            self.done.add(offset)

    @property
    def next_offset(self) -> int | None:
        """The first offset not started yet: everything below is finished or in progress."""
        return self.started[-1] + 1 if self.started else self.committable


class Lane(Service):
    """The records of one handler's source topic, and the workers that handle them."""

    def __init__(
        self,
        app: AppT,
        topic: str,
        step: Step,
        *,
        concurrency: int = 1,
        batch_size: int = 1,
        batch_within_s: float = 1.0,
        handler: str | None = None,
        ready: Callable[[int], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        self.app = app
        #: Whether a partition's state is ready for its records (an ordered
        #: handler's timers, recovered); records of one that is not are refused,
        #: and fetched again by the seek that ends every recovery.
        self.ready = ready
        #: The handler's name, for ``current_delivery()``.
        self.handler = handler
        self.topic = topic
        #: Called with one record, or with a list of them when ``batch_size > 1``.
        self.step = step
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.batch_within_s = batch_within_s
        self.max_buffered = app.conf.stream_buffer_maxsize
        self._batches: deque[tuple[TP, list[Any]]] = deque()
        #: The batch the workers share, and their iterator over its records.
        self._current_batch: tuple[TP, list[Any]] | None = None
        self._current: Iterator[Any] | None = None
        self._buffered = 0
        self._wakeup = asyncio.Event()
        self._idle_waiter: asyncio.Event | None = None
        self._in_flight = 0
        self._dropped = 0
        self._accepting = True
        self._progress: dict[TP, _Progress] = {}
        self._next_offset: dict[TP, int] = {}
        self._refused: dict[TP, int] = {}
        self._paused: set[TP] = set()
        #: Whom a full buffer asks to stop fetching a partition: the consumer, or
        #: the :class:`LaneGroup` of the topic's handlers.
        self.fetching: Any = None
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        return f"<Lane {self.topic} x{self.concurrency}>"

    async def on_start(self) -> None:
        work = self._work if self.batch_size == 1 else self._work_in_batches
        for _ in range(self.concurrency):
            self.add_future(work())

    # -- from the consumer -----------------------------------------------------

    def deliver(self, tp: TP, records: list[Any]) -> None:
        """Take a fetched batch of ``tp``; records already taken are skipped."""
        if not records:
            return
        if (
            not self._accepting
            or tp in self._refused
            or (self.ready is not None and not self.ready(tp.partition))
        ):
            # Once a partition's records are refused, the consumer's position is
            # past them: later ones wait for the seek back too, or they would
            # be handled first and the seek's records skipped as already taken.
            self.refuse(tp, records)
            return
        expected = self._next_offset.get(tp)
        if expected is not None and records[0].offset < expected:
            records = [r for r in records if r.offset >= expected]
            if not records:
                return
        self._next_offset[tp] = records[-1].offset + 1
        self._batches.append((tp, records))
        self._buffered += len(records)
        self._wakeup.set()
        if self._buffered >= self.max_buffered and tp not in self._paused:
            self._paused.add(tp)
            (self.fetching or self.app.consumer).on_buffer_full(tp)

    def refuse(self, tp: TP, records: list[Any]) -> None:
        """Note a fetched batch of ``tp`` that will not be handled: the consumer's
        position is past it, and the next seek must go back to it."""
        first = records[0].offset
        self._refused[tp] = min(first, self._refused.get(tp, first))

    def refused(self) -> dict[TP, int]:
        """The first offset of each partition fetched and refused since the last seek."""
        return dict(self._refused)

    def on_assign(self, assigned: set[TP]) -> None:
        """A new assignment: the consumer fetches each partition from its committed
        offset again, so what was refused counts no more, and the partitions
        this worker no longer has are forgotten."""
        self._refused.clear()
        self._progress = {tp: p for tp, p in self._progress.items() if tp in assigned}

    def hold(self) -> None:
        """Drop what is buffered and accept nothing until :meth:`on_seek`.

        Records being handled finish, and count: Faust commits after them.
        """
        self._accepting = False
        self._drop_buffered()

    def on_seek(self) -> None:
        """The consumer has sought to the committed offsets: take records again.

        On a partition this worker kept, the records it has already started come
        again from the committed offset, and are skipped; what was handled stays
        committable (the commit on stop comes after such a seek). Nothing is
        buffered: :meth:`hold` came first.
        """
        self._next_offset = {
            tp: offset
            for tp, progress in self._progress.items()
            if (offset := progress.next_offset) is not None
        }
        self._refused.clear()
        self._accepting = True

    async def wait_idle(self) -> None:
        """Wait until no record is being handled."""
        while self._in_flight:
            self._idle_waiter = waiter = asyncio.Event()
            try:
                await waiter.wait()
            finally:
                self._idle_waiter = None

    def in_progress(self) -> list[tuple[TP, int]]:
        """The records being handled now, as (partition, offset)."""
        return [
            (tp, offset)
            for tp, progress in self._progress.items()
            for offset in progress.started
            if offset not in progress.done
        ]

    @property
    def paused(self) -> bool:
        """Whether some partition is not fetched until the lane catches up."""
        return bool(self._paused)

    def committable(self, tp: TP) -> int | None:
        """The offset to commit for ``tp``: everything below it has been handled."""
        progress = self._progress.get(tp)
        return progress.committable if progress is not None else None

    def partitions(self) -> list[TP]:
        """Partitions with handled records."""
        return [tp for tp, p in self._progress.items() if p.committable is not None]

    def _drop_buffered(self) -> None:
        # The consumer's position is past what is dropped: a seek must go back.
        if self._current is not None and self._current_batch is not None:
            self.refuse(*self._current_batch)
        for tp, records in self._batches:
            self.refuse(tp, records)
        self._dropped += 1  # workers leave the batch they are in
        self._batches.clear()
        self._current = None
        self._buffered = 0
        self._resume_paused()

    def _resume_paused(self) -> None:
        consumer = self.fetching or self.app.consumer
        for tp in self._paused:
            consumer.on_buffer_drop(tp)
        self._paused.clear()

    def _next_batch(self) -> tuple[TP, Iterator[Any]] | None:
        """The batch being handled, shared by the workers, or the next one."""
        if self._current is None:
            if not self._batches:
                return None
            tp, records = self._batches.popleft()
            self._current_batch, self._current = (tp, records), iter(records)
        assert self._current_batch is not None
        return self._current_batch[0], self._current

    # -- the workers -----------------------------------------------------------

    async def _work(self) -> None:
        consumer: Any = self.app.consumer  # faust.transport.consumer.Consumer
        step = self.step
        # Each worker runs in its own task, so its own context: set once, and
        # point it at each record in turn.
        current = acting_on(None, self.handler)
        # Table writes queue in the producer's buffer; a full one is waited on.
        buffer: Any = self.app.producer.buffer  # transport.ProducerBuffer
        handled = 0
        while not self.should_stop:
            if not consumer.flow_active:
                # A rebalance: Faust resumes the flow after seeking.
                await consumer.can_resume_flow.wait()
                continue
            batch = self._next_batch()
            if batch is None:
                if self._paused:
                    self._resume_paused()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            tp, records = batch
            progress = self._progress.get(tp)
            if progress is None:
                progress = self._progress[tp] = _Progress()
            started, finish = progress.started, progress.finish
            dropped = self._dropped
            # Workers share the iterator: each record goes to exactly one.
            for record in records:
                self._buffered -= 1
                offset = record.offset
                started.append(offset)
                self._in_flight += 1
                current.message = record
                try:
                    await step(record)
                finally:
                    current.message = None
                    self._in_flight -= 1
                    finish(offset)
                    if not self._in_flight and self._idle_waiter is not None:
                        self._idle_waiter.set()
                if buffer.full:
                    await buffer.ebb()
                handled += 1
                if handled % _YIELD_EVERY == 0:
                    # A function that never awaits must not hold the event loop
                    # (fetches, publishers, heartbeats) for a whole batch.
                    await asyncio.sleep(0)
                if self._dropped != dropped or not consumer.flow_active:
                    break
                if self._paused and self._buffered <= self.max_buffered // 2:
                    self._resume_paused()
            else:
                if self._current is records:
                    self._current = None
            # Faust's livelock detector watches for partitions nobody reads.
            self.app.monitor.stream_inbound_time[tp] = time.monotonic()

    async def _work_in_batches(self) -> None:
        """Hand the step up to ``batch_size`` records, or what came within ``batch_within_s``."""
        consumer: Any = self.app.consumer
        current = acting_on(None, self.handler)
        buffer: Any = self.app.producer.buffer  # transport.ProducerBuffer
        while not self.should_stop:
            if not consumer.flow_active:
                await consumer.can_resume_flow.wait()
                continue
            taken = await self._collect()
            if not taken:
                continue
            started: list[tuple[_Progress, int]] = []
            for tp, record in taken:
                progress = self._progress.get(tp)
                if progress is None:
                    progress = self._progress[tp] = _Progress()
                progress.started.append(record.offset)
                started.append((progress, record.offset))
            self._in_flight += len(taken)
            current.message = taken[-1][1]
            try:
                await self.step([record for _, record in taken])
            finally:
                current.message = None
                self._in_flight -= len(taken)
                for progress, offset in started:
                    progress.finish(offset)
                if not self._in_flight and self._idle_waiter is not None:
                    self._idle_waiter.set()
            if buffer.full:
                await buffer.ebb()
            if self._paused and self._buffered <= self.max_buffered // 2:
                self._resume_paused()
            self.app.monitor.stream_inbound_time[taken[-1][0]] = time.monotonic()

    async def _collect(self) -> list[tuple[TP, Any]]:
        taken: list[tuple[TP, Any]] = []
        dropped = self._dropped
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while len(taken) < self.batch_size:
            batch = self._next_batch()
            if batch is None:
                if self._paused:
                    self._resume_paused()
                self._wakeup.clear()
                timed_out = False
                if deadline is None:
                    await self._wakeup.wait()
                elif (remaining := deadline - loop.time()) <= 0:
                    timed_out = True
                else:
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        timed_out = True
                if self._dropped != dropped or not self.app.consumer.flow_active:  # type: ignore[attr-defined]
                    return []  # a rebalance: nothing taken was started
                if timed_out:
                    break
                continue
            tp, records = batch
            for record in records:
                self._buffered -= 1
                taken.append((tp, record))
                if len(taken) == self.batch_size:
                    break
            else:
                if self._current is records:
                    self._current = None
            if deadline is None:
                deadline = loop.time() + self.batch_within_s
        return taken


class LaneGroup(Service):
    """The lanes of two or more handlers of one topic: each fetched record goes to
    every one of them, and a partition is committed only up to where all of them
    have handled it.

    A lane that refuses a batch (it holds, or its partition is not ready) has the
    consumer seek back to it; the lanes that took it skip it when it comes again.
    A partition stops being fetched while any lane's buffer is full.
    """

    def __init__(self, lanes: list[Lane], **kwargs: Any) -> None:
        self.lanes = lanes
        self.topic = lanes[0].topic
        self.app = lanes[0].app
        #: Per partition, how many lanes have a full buffer.
        self._full: dict[TP, int] = {}
        for lane in lanes:
            lane.fetching = self
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        return f"<LaneGroup {self.topic} x{len(self.lanes)}>"

    def on_init_dependencies(self) -> list[Lane]:
        return self.lanes

    def add(self, lane: Lane) -> None:
        lane.fetching = self
        self.lanes.append(lane)

    # -- what a lane asks of the consumer ------------------------------------------

    def on_buffer_full(self, tp: TP) -> None:
        self._full[tp] = self._full.get(tp, 0) + 1
        if self._full[tp] == 1:
            self.app.consumer.on_buffer_full(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        left = self._full.get(tp, 0) - 1
        if left > 0:
            self._full[tp] = left
            return
        self._full.pop(tp, None)
        self.app.consumer.on_buffer_drop(tp)

    # -- what the consumer asks of a lane ------------------------------------------

    def deliver(self, tp: TP, records: list[Any]) -> None:
        for lane in self.lanes:
            lane.deliver(tp, records)

    def refuse(self, tp: TP, records: list[Any]) -> None:
        for lane in self.lanes:
            lane.refuse(tp, records)

    def refused(self) -> dict[TP, int]:
        merged: dict[TP, int] = {}
        for lane in self.lanes:
            for tp, offset in lane.refused().items():
                merged[tp] = min(offset, merged.get(tp, offset))
        return merged

    def on_assign(self, assigned: set[TP]) -> None:
        for lane in self.lanes:
            lane.on_assign(assigned)

    def hold(self) -> None:
        for lane in self.lanes:
            lane.hold()

    def on_seek(self) -> None:
        for lane in self.lanes:
            lane.on_seek()

    async def wait_idle(self) -> None:
        for lane in self.lanes:
            await lane.wait_idle()

    @property
    def paused(self) -> bool:
        return any(lane.paused for lane in self.lanes)

    def committable(self, tp: TP) -> int | None:
        """The lowest of the lanes' offsets: none while any lane has handled nothing."""
        offsets = [lane.committable(tp) for lane in self.lanes]
        return None if None in offsets else min(offsets)  # type: ignore[type-var]

    def partitions(self) -> list[TP]:
        return sorted({tp for lane in self.lanes for tp in lane.partitions()})
