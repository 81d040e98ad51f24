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
from typing import TYPE_CHECKING, Protocol

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from faust.exceptions import FaustError
from mode import Service

from .codec import encode
from .errors import PublishError
from .records import MessageBase

if TYPE_CHECKING:
    from .application import App
    from .settings import Settings

__all__ = ["KafkaMessageBus", "MessageBus", "NullMessageBus", "create_bus"]

logger = logging.getLogger(__name__)


class MessageBus(Protocol):
    """What the gateway's code publishes through (the seed's ``IMessageBus``)."""

    async def publish(self, message: MessageBase) -> RecordMetadata | None:
        """Publish one message and wait until the broker has it."""
        ...

    async def publish_many(self, messages: Iterable[MessageBase]) -> list[RecordMetadata | None]:
        """Publish several messages, pipelined, and wait for all of them."""
        ...


class KafkaMessageBus(Service):
    """Publishes through the app's idempotent producer (acks=all by default).

    Inside a worker it is ready as soon as the worker has started. In any other
    asyncio program (a web API that only publishes) use it as
    ``async with app.bus:``, which starts and stops the producer.
    """

    def __init__(self, app: App, **kwargs: object) -> None:
        self.app = app
        self._instance_name = app.dawning_settings.instance_name
        self._owns_producer = False
        self._topic_names: dict[type[MessageBase], str] = {}
        super().__init__(**kwargs)  # type: ignore[arg-type]

    async def on_start(self) -> None:
        # Outside a worker nobody else starts the producer, so the bus owns it.
        self._owns_producer = not self.app.producer.started
        await self.declare_topics()

    async def on_stop(self) -> None:
        if self._owns_producer:
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

    async def send(
        self,
        message: MessageBase,
        *,
        topic: str | None = None,
        key: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Awaitable[RecordMetadata]:
        """Hand ``message`` to the producer; the result resolves on the broker's ack.

        ``topic`` and ``key`` default to the message type's topic and natural key.
        """
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
        try:
            return await self.app.producer.send_record(  # type: ignore[attr-defined,no-any-return]
                topic,
                key.encode() if key is not None else None,
                encode(message),
                timestamp_ms=int(message.timestamp.timestamp() * 1000),
                headers=headers,
            )
        except (KafkaError, FaustError) as exc:
            raise PublishError(
                f"could not publish {message.message_type} {message.message_id}: {exc}"
            ) from exc

    async def publish(
        self,
        message: MessageBase,
        *,
        topic: str | None = None,
        key: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> RecordMetadata:
        """Publish ``message`` and wait until the broker has acknowledged it."""
        pending = await self.send(message, topic=topic, key=key, headers=headers)
        return await _acknowledged(message, pending)

    async def publish_many(self, messages: Iterable[MessageBase]) -> list[RecordMetadata]:
        """Publish ``messages`` in order, pipelined, and wait for every ack."""
        pending = [(message, await self.send(message)) for message in messages]
        acks: list[RecordMetadata] = []
        for message, ack in pending:
            try:
                acks.append(await ack)
            except KafkaError as exc:
                raise PublishError(
                    f"broker did not acknowledge {message.message_type} {message.message_id}: {exc}"
                ) from exc
        return acks

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
                pending = await self.app.producer.send(
                    topic, key, value, partition=partition, timestamp=None, headers=headers
                )
                return await pending
            except KafkaError as exc:
                if not exc.retriable:
                    raise PublishError(f"could not publish to {topic}: {exc!r}") from exc
                logger.warning(
                    "publish to %s failed (%r); trying again in %.1f s", topic, exc, pause_s
                )
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, 10.0)


async def _acknowledged(message: MessageBase, pending: Awaitable[RecordMetadata]) -> RecordMetadata:
    try:
        return await pending
    except KafkaError as exc:
        raise PublishError(
            f"broker did not acknowledge {message.message_type} {message.message_id}: {exc}"
        ) from exc


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
