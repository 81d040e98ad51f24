"""Celery-style handlers: ``@app.handler`` on top of Faust agents.

A handler is a plain function of one typed message. Declaring it registers
Faust agents for its source topic, for each retry tier and for delayed sends:

    source ─▶ handler ─ok─▶ commit
                  └─fail─▶ <topic>.<handler>.retry-1 ─(wait until due)─▶ handler ─fail─▶ retry-2 …
                                                      after the last retry ─▶ <topic>.dlq

Every republished message keeps its bytes (so its ``MessageId``) and its
partition, and carries the attempt, the due time and the failure in headers
(:class:`~dawning_streams.names.Header`). The source partition never waits for
a retry.

Ordered handlers (``ordered=True``) keep each key's messages in order even
across retries: while a key has a message in the retry tiers, later messages
with that key are parked in a changelog-backed table instead of being handled.
When the retried message succeeds or is dead-lettered, the parked messages are
handled in arrival order, and only then is the key released. Other keys on the
partition keep flowing. This works because retry topics and the table have the
source's partition count and each message is republished to its source
partition, so Faust's co-partitioning assignor gives one worker partition *p*
of all of them.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import logging
import math
import time
import traceback
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from aiokafka.structs import RecordMetadata
from faust.types import EventT, StreamT

from .codec import decode, encode
from .errors import DawningError, MessageDecodeError
from .lanes import Lane
from .names import (
    Header,
    dead_letter_topic,
    delay_topic,
    header_text,
    retry_topic,
    valid_name,
)
from .records import MessageBase
from .retry import Retry, RetryLater
from .tracing import carried, carry, uncarry

if TYPE_CHECKING:
    from .application import App

__all__ = ["Delivery", "Handler", "HandlerError", "HandlerOptions"]

logger = logging.getLogger(__name__)

M = TypeVar("M")
HandlerFn = Callable[[M], Awaitable[None] | None]

_perf_counter = time.perf_counter

_EXCEPTION_MESSAGE_LIMIT = 2_000
_TRACEBACK_LIMIT = 8_000


class HandlerError(DawningError, TypeError):
    """A handler declaration that cannot work; raised at import time."""


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    """How a handler runs; see ``App.handler`` for each option."""

    retry: Retry = Retry()
    dead_letter: bool = True
    ordered: bool = False
    concurrency: int = 1
    batch_size: int = 1
    batch_within_s: float = 1.0

    def problem(self) -> str | None:
        """What is wrong with these options, or None."""
        if not isinstance(self.retry, Retry):
            return f"retry must be a Retry(...), got {self.retry!r}"
        for field_name in ("concurrency", "batch_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                return f"{field_name} must be a positive integer, got {value!r}"
        if not self.batch_within_s > 0:
            return f"batch_within_s must be positive, got {self.batch_within_s!r}"
        if self.ordered and (self.concurrency != 1 or self.batch_size != 1):
            return "an ordered handler runs with concurrency=1 and batch_size=1"
        return None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One Kafka record as a handler attempt sees it, from a topic or the parking table."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, event: EventT) -> Delivery:
        return cls.of_record(event.message)

    @classmethod
    def of_record(cls, message: Any) -> Delivery:
        """From a Faust message or an aiokafka record (they share these attributes)."""
        return cls(
            message.topic,
            message.partition,
            message.offset,
            message.key,
            message.value,
            tuple((k, bytes(v)) for k, v in _header_pairs(message.headers)),
        )

    def header(self, name: str) -> str | None:
        return header_text(self.headers, name)

    @property
    def origin(self) -> tuple[str, int, int]:
        """Topic, partition and offset where the message was first published."""
        topic = self.header(Header.ORIGINAL_TOPIC)
        if topic is None:
            return self.topic, self.partition, self.offset
        return (
            topic,
            int(self.header(Header.ORIGINAL_PARTITION) or self.partition),
            int(self.header(Header.ORIGINAL_OFFSET) or -1),
        )

    @property
    def origin_id(self) -> str:
        return "/".join(map(str, self.origin))

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form, for the parking table."""
        b64 = _b64
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": b64(self.key),
            "value": b64(self.value),
            "headers": [[k, b64(v)] for k, v in self.headers],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Delivery:
        unb64 = _unb64
        return cls(
            data["topic"],
            data["partition"],
            data["offset"],
            unb64(data["key"]),
            unb64(data["value"]),
            tuple((k, unb64(v) or b"") for k, v in data["headers"]),
        )


def _header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def _unb64(text: str | None) -> bytes | None:
    return base64.b64decode(text) if text is not None else None


def _due_ms(delay_s: float) -> int:
    """Epoch milliseconds ``delay_s`` from now, rounded up so a message is never early."""
    return math.ceil((time.time() + delay_s) * 1000)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class Handler(Generic[M]):
    """A declared handler: call it directly, or send it work with ``delay``/``apply_async``."""

    def __init__(
        self,
        app: App,
        fn: HandlerFn[M],
        *,
        message_type: type[M],
        topic: str,
        name: str,
        options: HandlerOptions,
    ) -> None:
        self.app = app
        self.fn = fn
        self.message_type = message_type
        self.topic = topic
        self.name = name
        self.options = options
        self.retry = options.retry
        self.dead_letter_topic = dead_letter_topic(topic)
        self.__doc__ = fn.__doc__
        self.__name__ = name
        self._function: Callable[[Any], Awaitable[Any]] = (
            fn if inspect.iscoroutinefunction(fn) else self._in_thread  # type: ignore[assignment]
        )
        # A message with a RetryCount field (EmailMessage) carries its retry
        # number, as the seed's email retry does.
        self._counts_retries = isinstance(message_type, type) and any(
            f.attr == "retry_count" for f in getattr(message_type, "wire_fields", ())
        )
        self._register()

    def __repr__(self) -> str:
        return f"<Handler {self.name} on {self.topic}>"

    async def __call__(self, message: Any) -> None:
        """Run the function now, in this process (no Kafka): on a message, or a
        list of them for a batch handler."""
        await self._function(message)

    async def _in_thread(self, message: Any) -> None:
        await asyncio.to_thread(self.fn, message)

    async def _call(self, message: Any) -> None:
        await self._function([message] if self.options.batch_size > 1 else message)

    # -- sending -------------------------------------------------------------

    async def delay(self, message: M) -> RecordMetadata | None:
        """Publish ``message`` to this handler's topic (Celery's ``delay``).

        Returns the broker's receipt, or ``None`` if Kafka was unreachable and
        the message went to the bus's spool.
        """
        return await self.apply_async(message)

    async def apply_async(
        self, message: M, *, countdown_s: float | None = None, key: str | None = None
    ) -> RecordMetadata | None:
        """Publish ``message``; with ``countdown_s`` it is handled no earlier than that."""
        if not isinstance(message, self.message_type):
            raise TypeError(
                f"{self.name} takes {self.message_type.__name__}, got {type(message).__name__}"
            )
        target, headers = self.topic, None
        if countdown_s is not None:
            if countdown_s < 0:
                raise ValueError(f"countdown_s must not be negative, got {countdown_s}")
            due_ms = _due_ms(countdown_s)
            target = delay_topic(self.topic, self.name)
            headers = [(Header.ATTEMPT, b"0"), (Header.DUE_MS, str(due_ms).encode())]
        if isinstance(message, MessageBase):
            return await self.app.bus.publish(message, topic=target, key=key, headers=headers)
        raw = bytes(message)  # type: ignore[call-overload]
        return await self.app.bus.forward(
            target, key.encode() if key else None, raw, headers=headers
        )

    # -- wiring --------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        kafka = app.dawning_settings.kafka

        def raw_topic(name: str, **kwargs: Any) -> Any:
            # Declared before the consumer subscribes: a topic that does not
            # exist yet is left out of the partition assignment.
            return app.declare_topic(
                app.topic(
                    name,
                    key_type=bytes,
                    value_type=bytes,
                    key_serializer="raw",
                    value_serializer="raw",
                    partitions=kafka.partitions,
                    replicas=kafka.replication_factor,
                    **kwargs,
                )
            )

        app.agent(raw_topic(self.topic), name=self.name, concurrency=self.options.concurrency)(
            self._consume_source if self.options.batch_size == 1 else self._consume_batches
        )
        # The consumer hands this topic's records to the lane; the agent above
        # keeps the subscription and Faust's co-partitioning.
        options = self.options
        app.add_lane(
            Lane(
                app,
                self.topic,
                self._step_record if options.batch_size == 1 else self._step_records,
                concurrency=options.concurrency,
                batch_size=options.batch_size,
                batch_within_s=options.batch_within_s,
            )
        )
        waiting = [(0, "delay", delay_topic(self.topic, self.name))] + [
            (n, f"retry-{n}", retry_topic(self.topic, self.name, n))
            for n in range(1, self.retry.max_retries + 1)
        ]
        for attempt, label, name in waiting:
            app.agent(raw_topic(name), name=f"{self.name}.{label}", concurrency=1)(
                self._waiting_consumer(attempt)
            )
        if self.options.dead_letter:
            # Kept forever: dead letters leave only by an operator's replay.
            raw_topic(
                self.dead_letter_topic,
                config={"retention.ms": "-1", "retention.bytes": "-1"},
            )
        self._holds = _Holds(app, self.name, kafka.partitions) if self.options.ordered else None

    async def _step_record(self, record: Any) -> None:
        """The lane's first attempt on a fetched record.

        The common case (not ordered, decodes, succeeds) needs no Delivery;
        everything else takes the path of :meth:`_step`.
        """
        if self._holds is not None:
            await self._step(Delivery.of_record(record), attempt=0)
            return
        try:
            message = (
                record.value
                if self.message_type is bytes
                else decode(record.value, self.message_type, topic=record.topic)  # type: ignore[type-var]
            )
        except MessageDecodeError:
            # Decoded again there, to dead-letter it with its origin.
            await self._step(Delivery.of_record(record), attempt=0)
            return
        telemetry = self.app.telemetry
        if not telemetry.tracing.provider.recording:
            # What Telemetry.attempt does while nothing records spans, without
            # the context manager: this runs for every message.
            token = carry(carried((record.headers,)))
            started = _perf_counter()
            ok = True
            try:
                await self._function(message)
            except Exception as exc:
                ok = False
                await self._route_first_failure(record, exc)
            finally:
                telemetry.metrics.attempt_ended(self.name, _perf_counter() - started, ok=ok)
                uncarry(token)
            return
        with telemetry.attempt(self.name, record.topic, [record.headers], attempt=0) as run:
            try:
                await self._function(message)
            except Exception as exc:
                run.failed(exc)
                await self._route_first_failure(record, exc)

    async def _route_first_failure(self, record: Any, exc: Exception) -> None:
        delivery = Delivery.of_record(record)
        try:
            await self._fail(delivery, 0, exc)
        except Exception:
            self._log_unroutable(delivery, 0)

    async def _consume_source(self, stream: StreamT) -> None:
        async for event in stream.events():
            await self._step(Delivery.of(event), attempt=0)

    async def _consume_batches(self, stream: StreamT) -> None:
        options = self.options
        batches = stream.take_events(  # type: ignore[attr-defined]
            options.batch_size, within=options.batch_within_s
        )
        async for events in batches:
            await self._step_batch([Delivery.of(event) for event in events])

    async def _step_records(self, records: list[Any]) -> None:
        """The lane's attempt on a batch of fetched records."""
        await self._step_batch([Delivery.of_record(record) for record in records])

    async def _step_batch(self, deliveries: list[Delivery]) -> None:
        try:
            await self._attempt_batch(deliveries)
        except Exception:
            logger.critical("%s: could not route a failed batch", self.name, exc_info=True)

    async def _attempt_batch(self, deliveries: list[Delivery]) -> None:
        """One call for the whole batch; on failure each message retries on its own."""
        decoded: list[tuple[Delivery, Any]] = []
        for delivery in deliveries:
            try:
                decoded.append((delivery, self._decode(delivery)))
            except MessageDecodeError as exc:
                await self._fail_or_log(delivery, exc)
        if not decoded:
            return
        headers = [delivery.headers for delivery, _ in decoded]
        with self.app.telemetry.attempt(self.name, self.topic, headers, attempt=0) as run:
            try:
                await self._function([message for _, message in decoded])
            except Exception as exc:
                run.failed(exc)
                for delivery, _ in decoded:
                    await self._fail_or_log(delivery, exc)

    async def _fail_or_log(self, delivery: Delivery, exc: Exception) -> None:
        """Route one failed message of a batch; one the broker refuses must not
        take the rest of the batch down with it."""
        try:
            await self._fail(delivery, 0, exc)
        except Exception:
            self._log_unroutable(delivery, 0)

    def _waiting_consumer(self, attempt: int) -> Callable[[StreamT], Awaitable[None]]:
        async def consume(stream: StreamT) -> None:
            async for event in stream.events():
                delivery = Delivery.of(event)
                due_ms = int(delivery.header(Header.DUE_MS) or 0)
                wait_s = due_ms / 1000 - time.time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                await self._step(delivery, attempt=attempt)

        consume.__qualname__ = f"{self.name}.consume_attempt_{attempt}"
        return consume

    # -- one attempt ---------------------------------------------------------

    async def _step(self, delivery: Delivery, *, attempt: int) -> None:
        """One attempt; a message that cannot even be routed must not stop the agent."""
        try:
            await self._attempt(delivery, attempt=attempt)
        except Exception:
            self._log_unroutable(delivery, attempt)

    def _log_unroutable(self, delivery: Delivery, attempt: int) -> None:
        # The handler's own errors are routed; what lands here is a retry or
        # dead letter the broker refused (too large, not authorised). The
        # record stays in its topic at this offset, so say exactly where and
        # keep the partition moving.
        logger.critical(
            "%s: could not retry or dead-letter %s/%d/%d (attempt %d); it remains there",
            self.name,
            delivery.topic,
            delivery.partition,
            delivery.offset,
            attempt + 1,
            exc_info=True,
        )

    async def _attempt(self, delivery: Delivery, *, attempt: int) -> None:
        holds = self._holds
        key = delivery.key.decode("utf-8", "replace") if delivery.key is not None else None
        if holds is None or key is None:
            await self._run(delivery, attempt)
            return
        if attempt == 0 and holds.holder(key) is not None:
            logger.info(
                "%s: key %s waits on a retry; parking %s", self.name, key, delivery.origin_id
            )
            holds.park(key, delivery)
            return
        retried = await self._run(delivery, attempt)
        if retried and attempt == 0:
            holds.hold(key, delivery.origin_id)
        elif not retried and holds.holder(key) == delivery.origin_id:
            await self._release(key, holds)

    async def _run(self, delivery: Delivery, attempt: int) -> bool:
        """Handle ``delivery`` once; route a failure. True when it went to a retry tier."""
        with self.app.telemetry.attempt(
            self.name, delivery.origin[0], [delivery.headers], attempt=attempt
        ) as run:
            try:
                message = self._decode(delivery)
                await self._call(message)
            except Exception as exc:
                run.failed(exc)
                return await self._fail(delivery, attempt, exc)
            return False

    def _decode(self, delivery: Delivery) -> Any:
        if self.message_type is bytes:
            return delivery.value
        return decode(delivery.value, self.message_type, topic=delivery.origin[0])  # type: ignore[type-var]

    async def _fail(self, delivery: Delivery, attempt: int, exc: Exception) -> bool:
        retry_number = attempt + 1
        if isinstance(exc, RetryLater):
            delay_s = exc.delay_s
        elif self.retry.is_retryable(exc):
            delay_s = self.retry.delay_s(retry_number)
        else:
            delay_s = None
        if delay_s is not None and retry_number <= self.retry.max_retries:
            logger.warning(
                "%s: attempt %d of %s failed (%s: %s); retry %d in %.1f s",
                self.name,
                attempt + 1,
                delivery.origin_id,
                type(exc).__name__,
                exc,
                retry_number,
                delay_s,
            )
            due_ms = _due_ms(delay_s)
            headers = self._failure_headers(delivery, exc, retry_number)
            headers.append((Header.DUE_MS, str(due_ms).encode()))
            await self.app.bus.forward(
                retry_topic(self.topic, self.name, retry_number),
                delivery.key,
                self._retry_value(delivery, retry_number),
                partition=delivery.origin[1],
                headers=headers,
            )
            self.app.telemetry.routed(self.name, dead_letter=False)
            return True
        await self._dead_letter(delivery, attempt, exc)
        return False

    def _retry_value(self, delivery: Delivery, retry_number: int) -> bytes | None:
        if not self._counts_retries:
            return delivery.value
        message = self._decode(delivery)
        message.retry_count = retry_number
        return encode(message)

    async def _dead_letter(self, delivery: Delivery, attempt: int, exc: Exception) -> None:
        if not self.options.dead_letter:
            logger.error(
                "%s: dropping %s after %d attempts (%s: %s); dead letters are off",
                self.name,
                delivery.origin_id,
                attempt + 1,
                type(exc).__name__,
                exc,
            )
            return
        logger.error(
            "%s: dead-lettering %s after %d attempts (%s: %s)",
            self.name,
            delivery.origin_id,
            attempt + 1,
            type(exc).__name__,
            exc,
        )
        await self.app.bus.forward(
            self.dead_letter_topic,
            delivery.key,
            delivery.value,
            partition=delivery.origin[1],
            headers=self._failure_headers(delivery, exc, attempt + 1),
        )
        self.app.telemetry.routed(self.name, dead_letter=True)

    def _failure_headers(
        self, delivery: Delivery, exc: BaseException, attempt: int
    ) -> list[tuple[str, bytes]]:
        topic, partition, offset = delivery.origin
        now = _now_iso()
        reason = exc.reason if isinstance(exc, MessageDecodeError) else str(exc)
        trace = "".join(traceback.format_exception(exc))
        fields = {
            Header.ATTEMPT: str(attempt),
            Header.HANDLER: self.name,
            Header.ORIGINAL_TOPIC: topic,
            Header.ORIGINAL_PARTITION: str(partition),
            Header.ORIGINAL_OFFSET: str(offset),
            Header.EXCEPTION_TYPE: f"{type(exc).__module__}.{type(exc).__qualname__}",
            Header.EXCEPTION_MESSAGE: reason[:_EXCEPTION_MESSAGE_LIMIT],
            Header.TRACEBACK: trace[-_TRACEBACK_LIMIT:],
            Header.FIRST_FAILED_AT: delivery.header(Header.FIRST_FAILED_AT) or now,
            Header.LAST_FAILED_AT: now,
        }
        kept = [(k, v) for k, v in delivery.headers if not k.startswith(Header.PREFIX)]
        headers = kept + [(k, v.encode()) for k, v in fields.items()]
        if delivery.key is not None:
            headers.append((Header.ORIGINAL_KEY, delivery.key))
        return headers

    # -- ordered mode --------------------------------------------------------

    async def _release(self, key: str, holds: _Holds) -> None:
        """Handle the messages parked behind ``key``'s retried one, in arrival order.

        Each parked message is removed only after it has been handled (or sent
        to a retry tier), so a crash in between repeats it rather than losing it.
        """
        while (parked := holds.first_parked(key)) is not None:
            if await self._run(parked, attempt=0):
                holds.drop_first(key, new_holder=parked.origin_id)
                return
            holds.drop_first(key)
        holds.release(key)


class _Holds:
    """Ordered mode's state: which keys wait on a retry, and what is parked behind them.

    A changelog-backed table keyed by message key; each entry is
    ``{"holder": <origin of the message in retry>, "parked": [<Delivery JSON>, ...]}``.
    Entries are replaced, never mutated, so every change reaches the changelog.
    """

    def __init__(self, app: App, handler_name: str, partitions: int) -> None:
        self.table = app.Table(
            f"{handler_name}-held", default=None, partitions=partitions, key_type=str
        )

    def _entry(self, key: str) -> dict[str, Any] | None:
        return self.table.get(key)  # type: ignore[no-any-return]

    def holder(self, key: str) -> str | None:
        entry = self._entry(key)
        return entry["holder"] if entry is not None else None

    def hold(self, key: str, holder: str) -> None:
        self.table[key] = {"holder": holder, "parked": []}

    def park(self, key: str, delivery: Delivery) -> None:
        entry = self._entry(key) or {"holder": None, "parked": []}
        self.table[key] = {**entry, "parked": [*entry["parked"], delivery.to_json()]}

    def first_parked(self, key: str) -> Delivery | None:
        entry = self._entry(key)
        if entry is None or not entry["parked"]:
            return None
        return Delivery.from_json(entry["parked"][0])

    def drop_first(self, key: str, *, new_holder: str | None = None) -> None:
        # Re-read: more messages may have been parked while the first was handled.
        entry = self._entry(key)
        if entry is not None:
            holder = new_holder if new_holder is not None else entry["holder"]
            self.table[key] = {"holder": holder, "parked": entry["parked"][1:]}

    def release(self, key: str) -> None:
        if self._entry(key) is not None:
            del self.table[key]


def handler_for(
    app: App,
    fn: HandlerFn[Any],
    *,
    message_type: type | None,
    topic: str | None,
    name: str | None,
    options: HandlerOptions,
) -> Handler[Any]:
    """Check a declaration and build its :class:`Handler`; errors name what is wrong."""
    if not callable(fn):
        raise HandlerError(f"@handler decorates a function, got {fn!r}")
    name = name or fn.__name__
    if not valid_name(name):
        raise HandlerError(f"handler name {name!r} may use only letters, digits, _ and -")
    if name in app.handlers:
        raise HandlerError(f"a handler named {name!r} is already declared ({app.handlers[name]!r})")
    message_type = message_type or _annotated_type(fn)
    if message_type is None:
        raise HandlerError(
            f"handler {name!r}: give a message type, @handler(AuditLogMessage), "
            "or annotate its first parameter"
        )
    if message_type is bytes:
        if topic is None:
            raise HandlerError(f"handler {name!r} takes bytes, so it needs topic=")
    elif isinstance(message_type, type) and issubclass(message_type, MessageBase):
        if topic is None:
            topic = app.topic_for(message_type).get_topic_name()
    else:
        raise HandlerError(
            f"handler {name!r}: {message_type!r} is not a dawning message type "
            "(a MessageBase subclass) or bytes"
        )
    problem = options.problem()
    if problem is not None:
        raise HandlerError(f"handler {name!r}: {problem}")
    built = Handler(app, fn, message_type=message_type, topic=topic, name=name, options=options)
    app.handlers[name] = built
    return built


def _annotated_type(fn: Callable[..., Any]) -> type | None:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
        hints = typing.get_type_hints(fn)
    except (TypeError, ValueError, NameError):
        return None
    if not parameters:
        return None
    annotation = hints.get(parameters[0].name)
    if typing.get_origin(annotation) is list:  # a batch handler: list[AuditLogMessage]
        (annotation,) = typing.get_args(annotation) or (None,)
    return annotation if isinstance(annotation, type) else None
