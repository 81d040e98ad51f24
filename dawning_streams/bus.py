"""Publishing: ``await bus.publish(message)`` routes a message to its topic.

The topic comes from the message type (``Kafka:Topics``), the key from the
message's natural key (:meth:`MessageBase.partition_key`), and the partition
from the configured partitioner, so the .NET gateway and Python agree on where
each user's messages go.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, NamedTuple, Protocol

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from faust.exceptions import FaustError, ProducerSendError
from mode import Service

from .codec import encode
from .errors import PublishError
from .records import MessageBase
from .spool import Spool, SpooledRecord

if TYPE_CHECKING:
    from .application import App
    from .settings import Settings

__all__ = ["KafkaMessageBus", "MessageBus", "NullMessageBus", "create_bus"]

logger = logging.getLogger(__name__)

#: What an unreachable (or too slow) broker looks like to a publisher.
_UNREACHABLE = (KafkaError, FaustError, TimeoutError)
#: Spooled records sent per round trip while the spool drains.
_DRAIN_BATCH = 500


class MessageBus(Protocol):
    """What the gateway's code publishes through (the seed's ``IMessageBus``)."""

    async def publish(self, message: MessageBase) -> RecordMetadata | None:
        """Publish one message and wait until the broker has it."""
        ...

    async def publish_many(self, messages: Iterable[MessageBase]) -> list[RecordMetadata | None]:
        """Publish several messages, pipelined, and wait for all of them."""
        ...


class _Outgoing(NamedTuple):
    """One record as the producer takes it, but for its value.

    The value is encoded when the record is handed to the producer, which
    copies it into a batch, and again only if the record must be spooled:
    keeping every encoded value of a pipelined batch alive until its ack
    costs more than encoding it (fresh memory for each).
    """

    topic: str
    key: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None
    message: MessageBase

    @property
    def value(self) -> bytes:
        return encode(self.message)

    @property
    def what(self) -> str:
        """The message, as errors and logs name it."""
        return f"{self.message.message_type} {self.message.message_id}"


class KafkaMessageBus(Service):
    """Publishes through the app's idempotent producer (acks=all by default).

    Inside a worker it is started with the app. In any other asyncio program
    (a web API that only publishes) use it as ``async with app.bus:``, which
    starts and stops the producer.

    ``publish`` does not raise when the broker is unreachable, at start-up or
    later: a message the broker has not acknowledged within
    ``Kafka:Spool:SendTimeoutMs`` goes to the durable spool
    (:mod:`dawning_streams.spool`), and so does every message after it until
    the spool has been delivered, in order. It raises only for a message the
    broker refuses for good (:class:`PublishError`) and when the spool is full
    (:class:`SpoolFullError`).
    """

    def __init__(self, app: App, **kwargs: object) -> None:
        self.app = app
        settings = app.dawning_settings
        self._instance_name = settings.instance_name
        self._send_timeout_s = settings.kafka.spool.send_timeout_ms / 1000
        self.spool = Spool(
            settings.kafka.spool.file(settings.instance_name), settings.kafka.spool.max_bytes
        )
        self._owns_producer = False
        self._connected = False
        #: Set while the spool holds records: new messages queue up behind them.
        self._spooling = False
        self._spool_waiting = asyncio.Event()
        app.telemetry.metrics.spool_size_source = lambda: self.spool.count
        self._topic_names: dict[type[MessageBase], str] = {}
        super().__init__(**kwargs)  # type: ignore[arg-type]

    async def on_start(self) -> None:
        # Outside a worker nobody else starts the producer, so the bus owns it.
        self._owns_producer = not self.app.producer.started
        await self.spool.open()
        if self.spool.count:
            logger.warning(
                "%d messages wait in the spool %s from an earlier run; delivering them first",
                self.spool.count,
                self.spool.path,
            )
            self._start_spooling()
        try:
            await self._connect()
        except (*_UNREACHABLE, PublishError) as exc:
            logger.warning(
                "Kafka is unreachable (%s); messages go to the spool %s until it is back",
                _reason(exc),
                self.spool.path,
            )
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
        if self._owns_producer:
            with suppress(KafkaError, FaustError):
                await self.app.producer.stop()
        elif self.app.producer.started:
            await self.app.producer.flush()

    async def declare_topics(self) -> None:
        """Create every topic the app declares (message, retry, dead-letter) that is missing."""
        await self.app.maybe_start_producer()
        try:
            for topic in self.app.declared_topics:
                await topic.maybe_declare()
        except (KafkaError, FaustError) as exc:
            raise PublishError(f"could not declare topics: {exc}") from exc

    async def _connect(self) -> None:
        """Start the producer and declare the topics, within the send timeout."""
        try:
            async with asyncio.timeout(self._send_timeout_s):
                await self.declare_topics()
        except BaseException:
            if self._owns_producer:
                # A producer whose start failed cannot be started again.
                failed, self.app.producer = self.app.producer, self.app._new_producer()
                with suppress(KafkaError, FaustError):
                    await failed.stop()
            raise
        self._connected = True

    def _outgoing(
        self,
        message: MessageBase,
        topic: str | None,
        key: str | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> _Outgoing:
        if topic is None:
            topic = self._topic_names.get(type(message))
            if topic is None:
                topic = self._topic_names[type(message)] = self.app.topic_for(
                    type(message)
                ).get_topic_name()
        if message.source_instance is None:
            message.source_instance = self._instance_name
        if key is None:
            key = message.partition_key()
        assert message.timestamp is not None  # set by MessageBase.__post_init__
        return _Outgoing(
            topic,
            key.encode() if key is not None else None,
            self.app.telemetry.tracing.stamp(topic, headers),
            int(message.timestamp.timestamp() * 1000),
            message,
        )

    async def _send_record(self, record: _Outgoing | SpooledRecord) -> Awaitable[RecordMetadata]:
        # Straight to aiokafka (transport.Producer.send_record): Faust's send
        # adds a signal and header conversions per message that the bus does not use.
        producer = self.app.producer
        ack = await producer.send_record(  # type: ignore[attr-defined]
            record.topic,
            record.key,
            record.value,
            timestamp_ms=record.timestamp_ms,
            headers=record.headers,
        )
        return producer.counted(record.topic, ack)  # type: ignore[attr-defined,no-any-return]

    async def _send(self, record: _Outgoing) -> Awaitable[RecordMetadata]:
        try:
            return await self._send_record(record)
        except (KafkaError, ProducerSendError) as exc:
            if _refused_for_good(exc):
                raise PublishError(f"{record.what}: {exc!r}") from exc
            raise

    async def send(
        self,
        message: MessageBase,
        *,
        topic: str | None = None,
        key: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[RecordMetadata]:
        """Hand ``message`` to the producer; the result resolves on the broker's ack.

        The raw path: no spool, no timeout. ``topic`` and ``key`` default to
        the message type's topic and natural key.
        """
        record = self._outgoing(message, topic, key, headers)
        try:
            return await self._send(record)
        except (KafkaError, FaustError) as exc:
            raise PublishError(f"could not publish {record.what}: {exc}") from exc

    async def publish(
        self,
        message: MessageBase,
        *,
        topic: str | None = None,
        key: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> RecordMetadata | None:
        """Publish ``message`` and wait until the broker has acknowledged it.

        Returns the broker's receipt, or ``None`` when the message went to the
        spool because the broker could not be reached in time.
        """
        [receipt] = await self._publish([self._outgoing(message, topic, key, headers)])
        return receipt

    async def publish_many(self, messages: Iterable[MessageBase]) -> list[RecordMetadata | None]:
        """Publish ``messages`` in order, pipelined, and wait for every ack.

        Each entry is the broker's receipt, or ``None`` for a spooled message.
        """
        return await self._publish([self._outgoing(m, None, None, None) for m in messages])

    async def _publish(self, records: list[_Outgoing]) -> list[RecordMetadata | None]:
        """Send ``records`` pipelined; spool from the first one not acknowledged in time.

        A record the broker refuses for good is neither sent nor spooled: once
        the others are published (or spooled), :class:`PublishError` names it.
        """
        receipts: list[RecordMetadata | None] = [None] * len(records)
        refused: dict[int, str] = {}
        unencodable: dict[int, str] = {}
        confirmed = 0  # records[:confirmed] are acknowledged or refused
        if not self._spooling:
            producer = self.app.producer
            # Straight to aiokafka (transport.Producer.send_record), in this
            # loop rather than a coroutine per step: this is every message's path.
            send = producer.send_record  # type: ignore[attr-defined]
            sends = self.app.telemetry.metrics.sends
            pending: list[asyncio.Future[RecordMetadata] | None] = []
            loop = asyncio.get_running_loop()
            timeout_s = self._send_timeout_s
            try:
                # The deadline is for progress: each wait for an ack gets all of
                # it (less a hundredth, so that a timer is not replaced by an
                # equal one for every message).
                set_at = loop.time()
                async with asyncio.timeout(timeout_s) as deadline:
                    for n, record in enumerate(records):
                        ack = None
                        value = self._encoded(records, n, unencodable)
                        if value is not None:
                            try:
                                ack = await send(
                                    record.topic,
                                    record.key,
                                    value,
                                    timestamp_ms=record.timestamp_ms,
                                    headers=record.headers,
                                )
                            except (KafkaError, ProducerSendError) as exc:
                                if not _refused_for_good(exc):
                                    raise
                                refused[n] = f"{record.what}: {exc!r}"
                        pending.append(ack)
                    for ack in pending:
                        if ack is not None:
                            if not ack.done() and loop.time() - set_at > timeout_s / 100:
                                set_at = loop.time()
                                deadline.reschedule(set_at + timeout_s)
                            topic = records[confirmed].topic
                            try:
                                receipts[confirmed] = await ack
                            except KafkaError as exc:
                                if not _refused_for_good(exc):
                                    raise
                                sends[(topic, "error")] += 1
                                refused[confirmed] = f"{records[confirmed].what}: {exc!r}"
                            else:
                                sends[(topic, "ok")] += 1
                        confirmed += 1
            except BaseException as exc:
                # What was sent but not awaited is counted when the broker answers.
                for n in range(confirmed, len(pending)):
                    ack = pending[n]
                    if ack is not None:
                        producer.counted(records[n].topic, ack)  # type: ignore[attr-defined]
                if not isinstance(exc, _UNREACHABLE):
                    raise
                logger.warning(
                    "Kafka did not take %s (%s); spooling it and what follows to %s",
                    records[confirmed].what,
                    _reason(exc),
                    self.spool.path,
                )
                self._start_spooling()
        for n in range(confirmed, len(records)):
            if n in refused or n in unencodable:
                continue
            value = self._encoded(records, n, unencodable)
            if value is not None:
                record = records[n]
                await self.spool.append(
                    record.topic, record.key, value, record.headers, record.timestamp_ms
                )
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
    def _encoded(records: list[_Outgoing], n: int, unencodable: dict[int, str]) -> bytes | None:
        """The value of ``records[n]``, or None (noted in ``unencodable``) if it has none."""
        try:
            return encode(records[n].message)
        except TypeError as exc:  # a field's value orjson cannot write
            unencodable[n] = f"{records[n].what} ({exc})"
            return None

    def _start_spooling(self) -> None:
        self._spooling = True
        self._spool_waiting.set()

    @Service.task
    async def _deliver_spool(self) -> None:
        """Deliver spooled records, oldest first, whenever there are any."""
        pause_s = 0.5
        while not self.should_stop:
            await self._spool_waiting.wait()
            try:
                if not self._connected:
                    await self._connect()
                await self._drain()
                pause_s = 0.5
            except (*_UNREACHABLE, PublishError) as exc:
                # Said once; the app's Kafka watch sums an outage up once a minute.
                logger.log(
                    logging.INFO if pause_s == 0.5 else logging.DEBUG,
                    "spool: Kafka still unreachable (%s); trying again with backoff",
                    _reason(exc),
                )
                await self.sleep(pause_s)
                pause_s = min(pause_s * 2, 10.0)

    async def _drain(self) -> None:
        while self.spool.count:
            batch = await self.spool.oldest(_DRAIN_BATCH)
            delivered: list[SpooledRecord] = []
            try:
                await self._deliver(batch, delivered)
            finally:
                if delivered:
                    await self.spool.remove(delivered)
        # Nothing awaits between the check above and here: a publish that
        # starts now sees the flag down and goes straight to the broker.
        self._spooling = False
        self._spool_waiting.clear()
        logger.info("spool: everything delivered; publishing directly again")

    async def _deliver(self, batch: list[SpooledRecord], delivered: list[SpooledRecord]) -> None:
        """Send ``batch`` pipelined; collect what the broker acknowledged in ``delivered``."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._send_timeout_s) as deadline:
            pending = []
            for record in batch:
                try:
                    ack = await self._send_record(record)
                except (KafkaError, ProducerSendError) as exc:
                    if not _refused_for_good(exc):
                        raise
                    await self._reject(record, exc)
                else:
                    pending.append((record, ack))
            for record, ack in pending:
                try:
                    await ack
                except KafkaError as exc:
                    if not _refused_for_good(exc):
                        raise
                    await self._reject(record, exc)
                else:
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
        headers = self.app.telemetry.tracing.stamp(topic, headers)
        pause_s = 0.5
        while True:
            try:
                pending = await self.app.producer.send(
                    topic, key, value, partition=partition, timestamp=None, headers=headers
                )
                return await pending
            except (KafkaError, ProducerSendError) as exc:
                if _refused_for_good(exc):
                    raise PublishError(f"could not publish to {topic}: {exc!r}") from exc
                logger.warning(
                    "publish to %s failed (%r); trying again in %.1f s", topic, exc, pause_s
                )
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 10.0)


def _refused_for_good(exc: BaseException) -> bool:
    """Whether ``exc`` is a Kafka error no retry cures (Faust wraps those it meets in sending)."""
    cause = exc.__cause__ if isinstance(exc, ProducerSendError) else exc
    return isinstance(cause, KafkaError) and not cause.retriable


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class NullMessageBus:
    """The bus when ``Kafka:Enabled`` is false: it logs and counts what it drops."""

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()

    async def publish(self, message: MessageBase) -> None:
        """Drop ``message``, counting it by type."""
        self.dropped[type(message).__name__] += 1
        logger.info("Kafka is disabled; dropped %s %s", type(message).__name__, message.message_id)

    async def publish_many(self, messages: Iterable[MessageBase]) -> list[None]:
        """Drop each of ``messages``."""
        dropped: list[None] = []
        for message in messages:
            await self.publish(message)
            dropped.append(None)
        return dropped

    async def __aenter__(self) -> NullMessageBus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def create_bus(settings: Settings) -> KafkaMessageBus | NullMessageBus:
    """The bus ``settings`` call for: Kafka, or the null bus when Kafka is disabled."""
    if not settings.kafka.enabled:
        return NullMessageBus()
    from .application import create_app  # the app module imports this one

    return create_app(settings).bus
