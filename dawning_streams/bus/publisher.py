"""The publishing core: send through a producer, spool what the broker does not take.

:class:`Publisher` is built from a :class:`ProducerPort` (a producer and the
topics it must declare), a spool and settings, not from the app. The bus
(:mod:`dawning_streams.bus.message_bus`) runs one in the worker, and one per event
loop in every other process (:mod:`dawning_streams.bus.sending`), each on a
librdkafka producer of its own (:mod:`dawning_streams.bus.rdkafka`).

``publish`` does not raise when the broker is unreachable, at start-up or
later: a message the broker has not acknowledged within
``Kafka:Spool:SendTimeoutMs`` goes to the durable spool
(:mod:`dawning_streams.bus.spool`), and so does every message after it until the
spool has been delivered, in order. It raises only for a message the broker
refuses for good (:class:`PublishError`) and when the spool is full
(:class:`SpoolFullError`).

The module runs past 400 lines: sending, spooling and the spool's delivery
share one rule (nothing overtakes what was spooled before it), and it is
checked best with all three in view.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import Awaitable
from contextlib import suppress
from typing import NamedTuple, Protocol

from aiokafka.structs import RecordMetadata
from mode import Service

from dawning_streams.bus.spool import Spool, SpooledRecord
from dawning_streams.core.codec import encode
from dawning_streams.core.errors import PublishError, described
from dawning_streams.core.records import MessageBase

__all__ = [
    "BrokerUnavailable",
    "Outgoing",
    "OutgoingBatch",
    "ProducerPort",
    "Publisher",
    "RefusedError",
]

logger = logging.getLogger(__name__)

#: How many records of one ``publish`` await their ack at a time: enough to
#: keep librdkafka's batches full, few enough to be freed as young objects.
_WINDOW = 1000


class BrokerUnavailable(PublishError):
    """Kafka did not take a record now (no broker answers, no ack in time); later it may."""


class RefusedError(PublishError):
    """Kafka refuses a record for good (too large, not authorised): no retry helps."""


#: What an unreachable (or too slow) broker looks like to a publisher.
UNREACHABLE = (BrokerUnavailable, TimeoutError)
#: Spooled records sent per round trip while the spool drains.
_DRAIN_BATCH = 500


class ProducerPort(Protocol):
    """The producer a :class:`Publisher` sends through.

    It raises :class:`BrokerUnavailable` for what may go through later and
    :class:`RefusedError` for what never will, from ``send_record`` and from
    the futures it returns.
    """

    async def connect(self) -> None:
        """Start the producer and declare the topics it needs; raise if unreachable."""
        ...

    async def send_record(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        """Hand one record to the producer; the future resolves on the broker's ack."""
        ...

    def try_send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: list[tuple[str, bytes]] | None,
        partition: int | None = None,
    ) -> asyncio.Future[RecordMetadata] | None:
        """:meth:`send_record` if it need not wait, else None (every message's path)."""
        ...

    def counted(self, topic: str, pending: Awaitable[RecordMetadata]) -> Awaitable[RecordMetadata]:
        """``pending``, counted in ``kafka.producer.send.total`` when the broker answers."""
        ...

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record sent so far is acknowledged or failed; False on timeout."""
        ...

    async def close(self) -> None:
        """Flush what was sent (for a while), and stop the producer."""
        ...


class Outgoing(NamedTuple):
    """One record as the producer takes it, but for its value and headers.

    The value is encoded when the record is handed to the producer, which
    copies it into a batch, and again only if the record must be spooled:
    keeping every encoded value of a pipelined batch alive until its ack
    costs more than encoding it (fresh memory for each).

    The headers are put together at that moment too, from the trace context
    kept as bytes. A batch keeps its records as columns (:class:`OutgoingBatch`),
    so that none of these tuples lives longer than it is used.
    """

    topic: str
    key: bytes | None
    #: The ``traceparent`` header's value, or None.
    traceparent: bytes | None
    #: The headers but ``traceparent``, or None.
    other_headers: list[tuple[str, bytes]] | None
    timestamp_ms: int | None
    message: MessageBase

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return _headers(self.traceparent, self.other_headers)

    @property
    def value(self) -> bytes:
        return encode(self.message)

    @property
    def what(self) -> str:
        """The message, as errors and logs name it."""
        return _what(self.message)


def _headers(
    traceparent: bytes | None, others: list[tuple[str, bytes]] | None
) -> list[tuple[str, bytes]]:
    if traceparent is None:
        return list(others or ())
    if others is None:
        return [("traceparent", traceparent)]
    return [*others, ("traceparent", traceparent)]


def _what(message: MessageBase) -> str:
    return f"{message.message_type} {message.message_id}"


class OutgoingBatch:
    """Records to publish in order, kept as columns rather than one
    :class:`Outgoing` per record.

    Each column is one list of strings, bytes and ints, which the garbage
    collector does not follow: 50,000 tuples made at once for a
    ``publish_many`` outlived its young generations and cost two or three
    passes over the whole heap, a third of the publish's time. ``batch[n]``
    is record ``n`` as an :class:`Outgoing`, made when it is needed (spooling
    it, naming it in an error).
    """

    __slots__ = ("keys", "messages", "other_headers", "timestamps", "topics", "traceparents")

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.keys: list[bytes | None] = []
        self.traceparents: list[bytes | None] = []
        self.other_headers: list[list[tuple[str, bytes]] | None] = []
        self.timestamps: list[int | None] = []
        self.messages: list[MessageBase] = []

    def add(
        self,
        topic: str,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int | None,
        message: MessageBase,
    ) -> None:
        """Append a record with ``headers``, whose ``traceparent`` (if any) comes last."""
        self.topics.append(topic)
        self.keys.append(key)
        if headers and headers[-1][0] == "traceparent":
            self.traceparents.append(headers[-1][1])
            self.other_headers.append(headers[:-1] or None)
        else:
            self.traceparents.append(None)
            self.other_headers.append(headers or None)
        self.timestamps.append(timestamp_ms)
        self.messages.append(message)

    def __len__(self) -> int:
        return len(self.messages)

    def __getitem__(self, n: int) -> Outgoing:
        return Outgoing(
            self.topics[n],
            self.keys[n],
            self.traceparents[n],
            self.other_headers[n],
            self.timestamps[n],
            self.messages[n],
        )


class _Progress:
    """Waits for acks in turn; TimeoutError after ``timeout_s`` without one.

    An ack is left alone either way (its record stays with the producer, its
    report still to come), as ``asyncio.shield`` would leave it. It costs a
    future and a callback a wait, and one timer for many waits (moved only
    once a hundredth of the timeout has passed since it was set), rather than
    shield's and ``asyncio.timeout``'s machinery on every wait.
    """

    __slots__ = ("_loop", "_set_at", "_timeout_s", "_timer", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._set_at = -timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def settled(self, ack: asyncio.Future[RecordMetadata]) -> None:
        """Wait until ``ack`` is done, within ``timeout_s`` of the last progress."""
        loop = self._loop
        now = loop.time()
        if now - self._set_at > self._timeout_s / 100:
            if self._timer is not None:
                self._timer.cancel()
            self._set_at = now
            self._timer = loop.call_at(now + self._timeout_s, self._wake)
        waiter = self._waiter = loop.create_future()
        ack.add_done_callback(self._wake)
        try:
            await waiter
        finally:
            self._waiter = None
            ack.remove_done_callback(self._wake)
        if not ack.done():
            raise TimeoutError(f"no ack within {self._timeout_s:g} s")

    def _wake(self, _: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _lost(ack: Awaitable[RecordMetadata]) -> bool:
    """Whether the producer let go of an ack's record unsent (closed, purged)."""
    return (
        isinstance(ack, asyncio.Future)
        and ack.done()
        and (ack.cancelled() or isinstance(ack.exception(), BrokerUnavailable))
    )


class Publisher(Service):
    """Publishes records through ``port``, and spools them while it cannot."""

    def __init__(
        self,
        port: ProducerPort,
        spool: Spool,
        *,
        send_timeout_s: float,
        sends: Counter[tuple[str, str]],
        adopt_every_s: float | None = None,
        **kwargs: object,
    ) -> None:
        self.port = port
        self.spool = spool
        self._send_timeout_s = send_timeout_s
        #: How often to take in the spools other processes left (None: never).
        self._adopt_every_s = adopt_every_s
        #: (topic, "ok" or "error") -> sends, as the metrics read them.
        self.sends = sends
        self._connected = False
        #: Set while the spool holds records: new messages queue up behind them.
        self._spooling = False
        self._spool_waiting = asyncio.Event()
        #: Set while nothing is spooled: a publish goes straight to the broker.
        self._direct = asyncio.Event()
        self._direct.set()
        #: Whether the broker answered the last attempt to reach it.
        self._reachable = True
        #: One drain at a time: two would read the same oldest records and send them twice.
        self._draining = asyncio.Lock()
        #: Spooled records the producer already holds, by ``seq``: their ack. The
        #: producer keeps a record until the broker takes it, so a record handed
        #: over before a timeout is not handed over again; its ack is awaited.
        self._handed: dict[int, Awaitable[RecordMetadata]] = {}
        super().__init__(**kwargs)  # type: ignore[arg-type]

    async def on_start(self) -> None:
        await self.spool.open()
        if self.spool.count:
            logger.warning(
                "%d messages wait in the spool %s from an earlier run; delivering them first",
                self.spool.count,
                self.spool.path,
            )
            self._start_spooling()
        try:
            await self.connect()
        except (*UNREACHABLE, PublishError) as exc:
            logger.warning(
                "Kafka is unreachable (%s); messages go to the spool %s until it is back",
                described(exc),
                self.spool.path,
            )
            self._reachable = False
            self._start_spooling()

    async def on_shutdown(self) -> None:
        # After the spool's delivery task has stopped.
        if self.spool.count:
            logger.warning(
                "stopping with %d messages in the spool %s; they are delivered on the next start",
                self.spool.count,
                self.spool.path,
            )
        await self.spool.close()
        await self.port.close()

    async def connect(self) -> None:
        """Connect the port within the send timeout."""
        async with asyncio.timeout(self._send_timeout_s):
            await self.port.connect()
        self._connected = True
        self._reachable = True

    async def send(self, record: Outgoing) -> Awaitable[RecordMetadata]:
        """Hand ``record`` to the producer; no spool, no timeout."""
        value, headers = record.value, record.headers
        try:
            ack = self.port.try_send(
                record.topic, record.key, value, record.timestamp_ms, headers
            ) or await self.port.send_record(
                record.topic,
                record.key,
                value,
                timestamp_ms=record.timestamp_ms,
                headers=headers,
            )
        except RefusedError as exc:
            raise PublishError(f"{record.what}: {exc!r}") from exc
        return self.port.counted(record.topic, ack)

    async def publish(self, records: OutgoingBatch) -> list[RecordMetadata | None]:
        """Send ``records`` pipelined; spool from the first one not acknowledged in time.

        A record the broker refuses for good is neither sent nor spooled: once
        the others are published (or spooled), :class:`PublishError` names it.
        """
        receipts: list[RecordMetadata | None] = [None] * len(records)
        refused: dict[int, str] = {}
        unencodable: dict[int, str] = {}
        confirmed = 0  # records[:confirmed] are acknowledged or refused
        # Each record's ack once handed to the producer (None: not handed over).
        pending: list[asyncio.Future[RecordMetadata] | None] = []
        if self._spooling and self._reachable:
            # The broker is taking what an earlier run or outage spooled: wait
            # for it (within the send timeout) and publish directly after it,
            # rather than queue behind it in the spool and return no receipt.
            with suppress(TimeoutError):
                async with asyncio.timeout(self._send_timeout_s):
                    await self._direct.wait()
        if not self._spooling:
            port = self.port
            # In this loop rather than a coroutine per step: this is every message's path.
            send, try_send = port.send_record, port.try_send
            sends = self.sends
            topics, keys, timestamps = records.topics, records.keys, records.timestamps
            traceparents, other_headers = records.traceparents, records.other_headers
            timeout_s = self._send_timeout_s
            progress = _Progress(asyncio.get_running_loop(), timeout_s)
            try:
                # Records are handed over while fewer than a window of them await
                # their ack, and confirmed in order: the acks alive at a time die
                # young, where a whole batch's would outlive the collector's young
                # generations and make it sweep the heap.
                total, n = len(records), 0
                while confirmed < total:
                    if n < total and n - confirmed < _WINDOW:
                        ack = None
                        value = self._encoded(records, n, unencodable)
                        if value is not None:
                            topic, key, timestamp_ms = topics[n], keys[n], timestamps[n]
                            headers = _headers(traceparents[n], other_headers[n])
                            try:
                                ack = try_send(topic, key, value, timestamp_ms, headers)
                                if ack is None:  # a full queue, or a topic's first record
                                    async with asyncio.timeout(timeout_s):
                                        ack = await send(
                                            topic,
                                            key,
                                            value,
                                            timestamp_ms=timestamp_ms,
                                            headers=headers,
                                        )
                            except RefusedError as exc:
                                refused[n] = f"{records[n].what}: {exc!r}"
                        pending.append(ack)
                        n += 1
                        continue
                    ack = pending[confirmed]
                    if ack is not None:
                        if not ack.done():
                            # The send timeout bounds the time without progress,
                            # not the whole batch.
                            await progress.settled(ack)
                        topic = topics[confirmed]
                        try:
                            receipts[confirmed] = ack.result()
                        except RefusedError as exc:
                            sends[(topic, "error")] += 1
                            refused[confirmed] = f"{records[confirmed].what}: {exc!r}"
                        else:
                            sends[(topic, "ok")] += 1
                        pending[confirmed] = None
                    confirmed += 1
            except BaseException as exc:
                # What was sent but not awaited is counted when the broker answers.
                for n in range(confirmed, len(pending)):
                    ack = pending[n]
                    if ack is not None:
                        port.counted(topics[n], ack)
                if not isinstance(exc, UNREACHABLE):
                    raise
                logger.warning(
                    "Kafka did not take %s (%s); spooling it and what follows "
                    "(Kafka:Spool:Path %s)",
                    records[confirmed].what,
                    described(exc),
                    self.spool.wanted,
                )
                self._reachable = False
                self._start_spooling()
            finally:
                progress.close()
        for n in range(confirmed, len(records)):
            if n in refused or n in unencodable:
                continue
            value = self._encoded(records, n, unencodable)
            if value is not None:
                record = records[n]
                seq = await self.spool.append(
                    record.topic, record.key, value, record.headers, record.timestamp_ms
                )
                if n < len(pending) and (ack := pending[n]) is not None:
                    self._handed[seq] = ack
                self._spool_waiting.set()
        problems = [
            f"{what} " + "; ".join(named[n] for n in sorted(named))
            for what, named in (("the broker refused", refused), ("cannot encode", unencodable))
            if named
        ]
        if problems:
            raise PublishError("; ".join(problems))
        return receipts

    @staticmethod
    def _encoded(records: OutgoingBatch, n: int, unencodable: dict[int, str]) -> bytes | None:
        """The value of ``records[n]``, or None (noted in ``unencodable``) if it has none."""
        message = records.messages[n]
        try:
            return encode(message)
        except TypeError as exc:  # a field's value orjson cannot write
            unencodable[n] = f"{_what(message)} ({exc})"
            return None

    def _start_spooling(self) -> None:
        self._spooling = True
        self._direct.clear()
        self._spool_waiting.set()

    @Service.task
    async def _adopt_strays(self) -> None:
        """Deliver what other processes left spooled for this cluster on this
        machine (a script that ended while Kafka was down): at start, then
        every ``adopt_every_s``, rather than when such a process next runs."""
        if self._adopt_every_s is None:
            return
        while not self.should_stop:
            try:
                taken = await self.spool.adopt_strays()
            except (OSError, sqlite3.Error) as exc:
                logger.warning("spool: could not take in other processes' spools: %s", exc)
            else:
                if taken:
                    self._start_spooling()
            await self.sleep(self._adopt_every_s)

    @Service.task
    async def _deliver_spool(self) -> None:
        """Deliver spooled records, oldest first, whenever there are any."""
        pause_s = 0.5
        while not self.should_stop:
            await self._spool_waiting.wait()
            try:
                if not self._connected:
                    await self.connect()
                await self.drain()
                pause_s = 0.5
            except (*UNREACHABLE, PublishError) as exc:
                self._reachable = False
                # Said once; the app's Kafka watch sums an outage up once a minute.
                logger.log(
                    logging.INFO if pause_s == 0.5 else logging.DEBUG,
                    "spool: Kafka still unreachable (%s); trying again with backoff",
                    described(exc),
                )
                await self.sleep(pause_s)
                pause_s = min(pause_s * 2, 10.0)

    async def drain(self) -> None:
        """Deliver the spool, oldest first; raises while the broker is unreachable.

        One drain runs at a time (the spool's delivery task, and a sender
        closing, both drain); a second waits for the first, then delivers
        whatever is left.
        """
        async with self._draining:
            while self.spool.count:
                batch = await self.spool.oldest(_DRAIN_BATCH)
                delivered: list[SpooledRecord] = []
                try:
                    await self._deliver(batch, delivered)
                finally:
                    if delivered:
                        self._reachable = True
                        await self.spool.remove(delivered)
            # Nothing awaits between the check above and here: a publish that
            # starts now sees the flag down and goes straight to the broker.
            if self._spooling:
                logger.info("spool: everything delivered; publishing directly again")
            self._spooling = False
            self._spool_waiting.clear()
            self._direct.set()

    async def _deliver(self, batch: list[SpooledRecord], delivered: list[SpooledRecord]) -> None:
        """Send ``batch`` pipelined; collect what the broker acknowledged in ``delivered``.

        A record the producer still holds from an earlier try (one that timed
        out while the broker was away) is not sent again: its ack is awaited.
        """
        loop = asyncio.get_running_loop()
        handed = self._handed
        async with asyncio.timeout(self._send_timeout_s) as deadline:
            pending = []
            for record in batch:
                ack = handed.get(record.seq)
                if ack is None or _lost(ack):
                    try:
                        ack = handed[record.seq] = self.port.counted(
                            record.topic,
                            await self.port.send_record(
                                record.topic,
                                record.key,
                                record.value,
                                timestamp_ms=record.timestamp_ms,
                                headers=record.headers,
                            ),
                        )
                    except RefusedError as exc:
                        handed.pop(record.seq, None)
                        await self._reject(record, exc)
                        continue
                pending.append((record, ack))
            for record, ack in pending:
                try:
                    # Shielded: a timeout here leaves the record with the producer.
                    await asyncio.shield(ack)
                except RefusedError as exc:
                    handed.pop(record.seq, None)
                    await self._reject(record, exc)
                except BrokerUnavailable:
                    handed.pop(record.seq, None)
                    raise
                else:
                    handed.pop(record.seq, None)
                    delivered.append(record)
                deadline.reschedule(loop.time() + self._send_timeout_s)

    async def _reject(self, record: SpooledRecord, exc: Exception) -> None:
        logger.error(
            "spool: the broker refused a record for %s for good (%r); it is kept in the"
            " 'rejected' table of %s",
            record.topic,
            exc,
            self.spool.path,
        )
        await self.spool.reject(record, repr(exc))

    async def forward(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> RecordMetadata:
        """Publish raw bytes and wait for the ack, trying again while the error is transient.

        Retries and dead letters go through here: the message they carry is
        committed on its source only after this returns, so it must not give up
        on a broker that is merely unreachable for a while.
        """
        pause_s = 0.5
        while True:
            try:
                pending = await self.port.send_record(
                    topic, key, value, partition=partition, headers=headers
                )
                return await self.port.counted(topic, pending)
            except RefusedError as exc:
                raise PublishError(f"could not publish to {topic}: {exc!r}") from exc
            except BrokerUnavailable as exc:
                logger.warning(
                    "publish to %s failed (%r); trying again in %.1f s", topic, exc, pause_s
                )
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 10.0)
