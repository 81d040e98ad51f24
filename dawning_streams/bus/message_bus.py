"""Publishing: ``await bus.publish(message)`` routes a message to its topic.

The topic comes from the message type (``Kafka:Topics``), the key from the
message's natural key (:meth:`MessageBase.partition_key`), and the partition
from the configured partitioner, so the .NET gateway and Python agree on where
each user's messages go.

It runs past 400 lines: the bus offers each way to send (awaited, sent,
forwarded, and the blocking forms for code without a loop) over one publisher,
and the null bus the same calls with Kafka disabled, side by side.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from typing import Any, Protocol

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from faust.exceptions import FaustError
from mode import Service

from dawning_streams.bus.host import BusHost
from dawning_streams.bus.publisher import BrokerUnavailable, OutgoingBatch, Publisher
from dawning_streams.bus.rdkafka import RdkafkaPort
from dawning_streams.bus.sending import Senders
from dawning_streams.bus.spool import Spool
from dawning_streams.core.records import MessageBase
from dawning_streams.kafka import faust_compat

__all__ = ["KafkaMessageBus", "MessageBus", "NullMessageBus"]

logger = logging.getLogger(__name__)

#: How often a worker takes in the spools other processes of this machine left
#: for its cluster (a script that ended while Kafka was down), and delivers them.
ADOPT_STRAYS_EVERY_S = 30.0


class MessageBus(Protocol):
    """What the gateway's code publishes through (the seed's ``IMessageBus``)."""

    async def publish(self, message: MessageBase) -> RecordMetadata | None:
        """Publish one message and wait until the broker has it."""
        ...

    async def publish_many(self, messages: Iterable[MessageBase]) -> list[RecordMetadata | None]:
        """Publish several messages, pipelined, and wait for all of them."""
        ...


class FaustTopics:
    """The worker's topics, declared through Faust (which creates its changelogs too)."""

    def __init__(self, app: BusHost) -> None:
        self.app = app
        self._owns_producer = False

    async def declare(self) -> None:
        # Outside a worker nobody else starts Faust's producer, so this owns it.
        self._owns_producer = not self.app.producer.started
        try:
            await self.declare_topics()
        except BaseException:
            if self._owns_producer:
                # A producer whose start failed cannot be started again.
                failed, self.app.producer = self.app.producer, faust_compat.new_producer(self.app)
                with suppress(KafkaError, FaustError):
                    await failed.stop()
            raise

    async def declare_topics(self) -> None:
        """Create every topic the app declares (message, timers, dead-letter) that is missing."""
        try:
            await self.app.maybe_start_producer()
            for topic in self.app.declared_topics:
                await topic.maybe_declare()
        except (KafkaError, FaustError) as exc:
            raise BrokerUnavailable(f"could not declare topics: {exc}") from exc

    async def ensure(self, topic: str) -> None:
        # Faust declares what the app declares; any other topic is the broker's to create.
        return None

    async def close(self) -> None:
        if self._owns_producer:
            self._owns_producer = False
            with suppress(KafkaError, FaustError):
                await self.app.producer.stop()


class KafkaMessageBus(Service):
    """Publishes through an idempotent producer (acks=all by default), from anywhere.

    * In a worker (the bus started with the app), on the worker's loop: through
      the worker's librdkafka producer (:mod:`dawning_streams.bus.rdkafka`).
    * In any other event loop (``asyncio.run``, an aiohttp or Starlette app, a
      test): through a producer of that loop's own, started on first use and
      closed when the loop ends (:mod:`dawning_streams.bus.sending`). No set-up
      call is needed; ``async with app.bus:`` scopes it explicitly.
    * With no event loop (a Flask or Django view, a script):
      :meth:`publish_blocking`, through a producer on a thread of its own,
      flushed at process exit.

    ``publish`` does not raise when the broker is unreachable: see
    :mod:`dawning_streams.bus.publisher`.
    """

    def __init__(self, app: BusHost, **kwargs: object) -> None:
        self.app = app
        settings = app.dawning_settings
        self._instance_name = settings.instance_name
        self._topic_names: dict[type[MessageBase], str] = {}
        #: The worker's publisher, once the app has started the bus.
        self._worker: Publisher | None = None
        self._worker_loop: asyncio.AbstractEventLoop | None = None
        self.senders = Senders(app)
        #: Sends under way that nobody may await (see :meth:`hold`).
        self._sends: set[asyncio.Task[Any]] = set()
        #: With ``Kafka:Enabled=false`` every publish is dropped and counted here.
        self.disabled = None if settings.kafka.enabled else NullMessageBus()
        app.telemetry.metrics.spool_size_source = self.spool_count
        super().__init__(**kwargs)  # type: ignore[arg-type]

    @property
    def dropped(self) -> Counter[str]:
        """Messages dropped by type, with ``Kafka:Enabled=false`` (else empty)."""
        return self.disabled.dropped if self.disabled is not None else Counter()

    # -- where to publish from ---------------------------------------------------

    async def _publisher(self) -> Publisher:
        """The publisher of the running loop: the worker's, or the loop's own sender's."""
        loop = asyncio.get_running_loop()
        if loop is self._worker_loop and self._worker is not None:
            return self._worker
        sender = self.senders.for_loop(loop)
        # Once started, without a coroutine of its own: this is every publish's path.
        return sender.publisher if sender.ready else await sender.started()

    @property
    def spool(self) -> Spool:
        """The spool of the publisher this context publishes through."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self.senders.blocking().spool
        if loop is self._worker_loop and self._worker is not None:
            return self._worker.spool
        return self.senders.for_loop(loop).spool

    def spool_count(self) -> int | None:
        """Messages waiting in the spools of this process (None before any spool is used)."""
        if self._worker is not None:
            return self._worker.spool.count
        return self.senders.spool_count()

    # -- the worker's publisher, as a service of the app --------------------------

    def bind_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        """The app starts as a worker on ``loop``: publishing there goes through its
        producer from now on (the app calls this before any of its services start)."""
        if self.disabled is not None or self._worker is not None:
            return
        settings = self.app.dawning_settings
        spool = settings.kafka.spool
        port = RdkafkaPort(
            settings,
            FaustTopics(self.app),
            client_id=f"{settings.instance_name}-bus",
            sends=self.app.telemetry.metrics.sends,
            close_timeout_s=min(spool.send_timeout_ms / 1000, settings.worker.stop_timeout_s),
        )
        self._worker = Publisher(
            port,
            Spool.of(settings),
            send_timeout_s=spool.send_timeout_ms / 1000,
            sends=self.app.telemetry.metrics.sends,
            adopt_every_s=ADOPT_STRAYS_EVERY_S,
        )
        self._worker_loop = loop

    def unbind_worker(self) -> None:
        """The worker has stopped: later publishes in its loop get a producer of their own."""
        self._worker_loop = None

    async def on_start(self) -> None:
        if self.disabled is not None:
            return
        self.bind_worker(asyncio.get_running_loop())
        assert self._worker is not None
        await self.add_runtime_dependency(self._worker)

    async def declare_topics(self) -> None:
        """Create every topic the app declares that is missing (the worker does at start)."""
        await FaustTopics(self.app).declare_topics()

    def hold(self, task: asyncio.Task[Any]) -> None:
        """Keep ``task``, a send nobody may await (``delay()``), until it ends;
        :meth:`flush` waits for it."""
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def flush(self) -> None:
        """Wait until everything the worker's bus has sent is acknowledged (or failed).

        The worker's commit calls this: a handler's ``send`` or ``delay()``
        that nobody awaited is on its topic before the offset of the record
        that sent it is committed.
        """
        loop = asyncio.get_running_loop()
        sends = [task for task in self._sends if task.get_loop() is loop]
        if sends:
            await asyncio.wait(sends)
        if self._worker is not None:
            await self._worker.port.flush()

    # -- outside a worker: ``async with app.bus`` ---------------------------------

    async def __aenter__(self) -> KafkaMessageBus:
        """Start this loop's producer now (it would start on first use anyway)."""
        loop = asyncio.get_running_loop()
        if loop is not self._worker_loop and self.disabled is None:
            await self.senders.for_loop(loop).started()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Flush and close this loop's producer; what is spooled stays on disk."""
        loop = asyncio.get_running_loop()
        if loop is not self._worker_loop:
            await self.senders.close_loop(loop)

    # -- sending -----------------------------------------------------------------

    def _add(
        self,
        batch: OutgoingBatch,
        message: MessageBase,
        topic: str | None,
        key: str | None,
        headers: list[tuple[str, bytes]] | None,
        stamp: Callable[[str], list[tuple[str, bytes]]] | None = None,
    ) -> None:
        """Append ``message`` to ``batch`` as the producer takes it (but for its value)."""
        if not isinstance(message, MessageBase):
            raise TypeError(
                f"publish takes a dawning message (a MessageBase), got {type(message).__name__}"
            )
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
            if key is not None and not isinstance(key, str):
                raise TypeError(
                    f"{type(message).__name__}.partition_key() must return a str or None, "
                    f"got {type(key).__name__} {key!r}"
                )
        elif not isinstance(key, str):
            raise TypeError(f"key= must be a str, got {type(key).__name__} {key!r}")
        assert message.timestamp is not None  # set by MessageBase.__post_init__
        batch.add(
            topic,
            key.encode() if key is not None else None,
            # Stamped here, in the caller's context (its trace).
            self.app.telemetry.tracing.stamp(topic, headers) if stamp is None else stamp(topic),
            int(message.timestamp.timestamp() * 1000),
            message,
        )

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
        if self.disabled is not None:
            await self.disabled.publish(message)
            return _done(None)
        batch = OutgoingBatch()
        self._add(batch, message, topic, key, headers)
        publisher = await self._publisher()
        return await publisher.send(batch[0])

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
        if self.disabled is not None:
            await self.disabled.publish(message)
            return None
        batch = OutgoingBatch()
        self._add(batch, message, topic, key, headers)
        [receipt] = await (await self._publisher()).publish(batch)
        return receipt

    async def publish_many(self, messages: Iterable[MessageBase]) -> list[RecordMetadata | None]:
        """Publish ``messages`` in order, pipelined, and wait for every ack.

        Each entry is the broker's receipt, or ``None`` for a spooled message.
        """
        if self.disabled is not None:
            return await self.disabled.publish_many(messages)  # type: ignore[return-value]
        batch = OutgoingBatch()
        add, stamp = self._add, self.app.telemetry.tracing.stamper()
        for message in messages:
            add(batch, message, None, None, None, stamp)
        return await (await self._publisher()).publish(batch)

    async def forward(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> RecordMetadata:
        """Publish raw bytes and wait for the ack, trying again while the error is
        transient (see :meth:`Publisher.forward`)."""
        if self.disabled is not None:
            self.disabled.forwarded(topic)
            return None  # type: ignore[return-value]
        headers = self.app.telemetry.tracing.stamp(topic, headers)
        return await (await self._publisher()).forward(
            topic, key, value, partition=partition, headers=headers
        )

    # -- with no event loop ------------------------------------------------------

    def publish_blocking(
        self,
        message: MessageBase,
        *,
        topic: str | None = None,
        key: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> RecordMetadata | None:
        """:meth:`publish` for code without an event loop; safe from any thread.

        Raises :class:`DawningError` when called on a running event loop, which
        it would block: there, ``await bus.publish(...)``.
        """
        if self.disabled is not None:
            self.disabled.drop(message)
            return None
        batch = OutgoingBatch()
        self._add(batch, message, topic, key, headers)
        [receipt] = self.senders.blocking().call(lambda publisher: publisher.publish(batch))
        return receipt

    def publish_many_blocking(self, messages: Iterable[MessageBase]) -> list[RecordMetadata | None]:
        """:meth:`publish_many` for code without an event loop."""
        if self.disabled is not None:
            dropped = list(messages)
            for message in dropped:
                self.disabled.drop(message)
            return [None] * len(dropped)
        batch = OutgoingBatch()
        add, stamp = self._add, self.app.telemetry.tracing.stamper()
        for message in messages:
            add(batch, message, None, None, None, stamp)
        return self.senders.blocking().call(lambda publisher: publisher.publish(batch))

    def forward_blocking(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timeout_s: float | None = None,
    ) -> RecordMetadata:
        """:meth:`forward` for code without an event loop; ``TimeoutError`` after
        ``timeout_s`` without the ack (the producer keeps the record)."""
        if self.disabled is not None:
            self.disabled.forwarded(topic)
            return None  # type: ignore[return-value]
        headers = self.app.telemetry.tracing.stamp(topic, headers)
        return self.senders.blocking().call(
            lambda publisher: publisher.forward(
                topic, key, value, partition=partition, headers=headers
            ),
            timeout_s=timeout_s,
        )


class NullMessageBus:
    """The bus when ``Kafka:Enabled`` is false: it logs and counts what it drops."""

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()

    async def publish(self, message: MessageBase) -> None:
        """Drop ``message``, counting it by type."""
        self.drop(message)

    def drop(self, message: MessageBase) -> None:
        """Drop ``message``, counting it by type."""
        self._said(f"{type(message).__name__} {message.message_id}")
        self.dropped[type(message).__name__] += 1

    def forwarded(self, topic: str) -> None:
        """Drop raw bytes meant for ``topic``, counting them by topic."""
        self._said(f"a record for {topic}")
        self.dropped[topic] += 1

    def _said(self, what: str) -> None:
        # The first drop at WARNING, where a plain script shows it; the rest at INFO.
        first = not self.dropped
        logger.log(
            logging.WARNING if first else logging.INFO,
            "Kafka is disabled (Kafka:Enabled=false); dropped %s%s",
            what,
            ", and every message sent from now on (counted, at INFO)" if first else "",
        )

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


def _done(value: object) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
