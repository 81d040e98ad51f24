"""Celery-style handlers: ``@app.handler`` on top of Faust agents.

A handler is a plain function of one typed message. Declaring it registers a
Faust agent (and a lane) for its source topic and its durable timers
(:mod:`dawning_streams.handlers.timers`)::

    source ─▶ handler ─ok─▶ commit
                  └─fail─▶ timer table (due in 2 s) ─▶ handler ─fail─▶ timer table (4 s) …
                                              after the last retry ─▶ <topic>.dlq
    apply_async(countdown_s=…) ─▶ <topic>.<handler>.timers ─▶ timer table ─▶ handler

A failed message keeps its bytes (so its ``MessageId``) and its partition; the
source partition never waits for a retry, and a timer due later never holds
back one due sooner.

Ordered handlers (``ordered=True``) keep each key's messages in order even
across retries: while a key has a message waiting on a retry, later messages
with that key are parked in the timer table instead of being handled. When the
retried message succeeds or is dead-lettered, the parked messages are handled
in arrival order, and only then is the key released. Other keys on the
partition keep flowing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
import traceback
import typing
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from aiokafka.structs import RecordMetadata
from faust.types import StreamT

from dawning_streams.core.codec import decode, encode
from dawning_streams.core.errors import DawningError, MessageDecodeError
from dawning_streams.core.names import (
    Header,
    dead_letter_topic,
    revoke_reply_key,
    timers_topic,
    valid_name,
)
from dawning_streams.core.records import MessageBase
from dawning_streams.core.retry import Expired, Reject, Retry, RetryLater
from dawning_streams.handlers.delivery import Delivery, delivered, delivering
from dawning_streams.handlers.timers import Timer, Timers, due_ms_in, now_ms
from dawning_streams.kafka.lanes import Lane
from dawning_streams.observability.tracing import carried, carry, uncarry

if TYPE_CHECKING:
    from dawning_streams.application import App

__all__ = ["Delivery", "Handler", "HandlerError", "HandlerOptions"]

logger = logging.getLogger(__name__)

M = TypeVar("M")
HandlerFn = Callable[[M], Awaitable[None] | None]

_perf_counter = time.perf_counter

_EXCEPTION_MESSAGE_LIMIT = 2_000
_TRACEBACK_LIMIT = 8_000
#: ``dawning-*`` headers a retry keeps: the message's expiry and its timer id.
_CARRIED_HEADERS = frozenset({Header.EXPIRES_MS, Header.TIMER_ID})


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

        Works in any running event loop. Returns the broker's receipt, or
        ``None`` if Kafka was unreachable and the message went to the spool.
        """
        return await self.apply_async(message)

    async def apply_async(
        self,
        message: M,
        *,
        countdown_s: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        key: str | None = None,
    ) -> RecordMetadata | None:
        """Publish ``message``, as Celery's ``apply_async``.

        ``countdown_s`` (seconds from now) or ``eta`` (an aware ``datetime``):
        handled no earlier than that. ``expires`` (seconds from now, or an aware
        ``datetime``): not run after that time, but dead-lettered as expired.
        Any of them sends the message through the handler's durable timers.
        A bad value raises ``ValueError`` naming it, and nothing is published.
        """
        target, headers = self._addressed(message, countdown_s, eta, expires)
        bus = self.app.bus
        if isinstance(message, MessageBase):
            return await bus.publish(message, topic=target, key=key, headers=headers)
        raw = bytes(message)  # type: ignore[call-overload]
        return await bus.forward(target, key.encode() if key else None, raw, headers=headers)

    def delay_blocking(self, message: M) -> RecordMetadata | None:
        """:meth:`delay` for code without an event loop (a Flask view, a script)."""
        return self.apply_async_blocking(message)

    def apply_async_blocking(
        self,
        message: M,
        *,
        countdown_s: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        key: str | None = None,
    ) -> RecordMetadata | None:
        """:meth:`apply_async` for code without an event loop; safe from any thread."""
        target, headers = self._addressed(message, countdown_s, eta, expires)
        bus = self.app.bus
        if isinstance(message, MessageBase):
            return bus.publish_blocking(message, topic=target, key=key, headers=headers)
        raw = bytes(message)  # type: ignore[call-overload]
        return bus.forward_blocking(target, key.encode() if key else None, raw, headers=headers)

    def _addressed(
        self,
        message: M,
        countdown_s: float | None,
        eta: datetime | None,
        expires: float | datetime | None,
    ) -> tuple[str, list[tuple[str, bytes]] | None]:
        """The topic and headers ``message`` is published with: the source topic,
        or the timers topic when it has a countdown, an eta or an expiry."""
        if not isinstance(message, self.message_type):
            raise TypeError(
                f"{self.name} takes {self.message_type.__name__}, got {type(message).__name__}"
            )
        timing = self._timing(countdown_s, eta, expires)
        if timing is None:
            return self.topic, None
        due_ms, expires_ms = timing
        if isinstance(message, MessageBase):
            if message.message_id is None:
                message.message_id = uuid.uuid4()
            timer_id = str(message.message_id)
        else:
            timer_id = str(uuid.uuid4())
        headers = [
            (Header.TIMER_ID, timer_id.encode()),
            (Header.ATTEMPT, b"0"),
            (Header.DUE_MS, str(due_ms).encode()),
        ]
        if expires_ms is not None:
            headers.append((Header.EXPIRES_MS, str(expires_ms).encode()))
        return self.timers_topic, headers

    def _timing(
        self, countdown_s: float | None, eta: datetime | None, expires: float | datetime | None
    ) -> tuple[int, int | None] | None:
        """(due, expiry) in epoch ms for ``apply_async``, or None to publish at once."""
        if countdown_s is None and eta is None and expires is None:
            return None
        max_days = self.app.dawning_settings.timers.max_delay_days
        limit = timedelta(days=max_days)
        now = datetime.now(UTC)
        if countdown_s is not None and eta is not None:
            raise ValueError(f"give countdown_s or eta, not both (got {countdown_s!r} and {eta!r})")
        if countdown_s is not None:
            seconds = _seconds("countdown_s", countdown_s)
            if seconds < 0:
                raise ValueError(f"countdown_s must not be negative, got {countdown_s!r}")
            if seconds > limit.total_seconds():
                raise ValueError(
                    f"countdown_s={countdown_s!r} is more than Timers:MaxDelayDays "
                    f"({max_days}) ahead"
                )
            due_ms = due_ms_in(seconds)
        elif eta is not None:
            eta = _aware("eta", eta)
            if eta - now > limit:
                raise ValueError(
                    f"eta={eta.isoformat()} is more than Timers:MaxDelayDays ({max_days}) ahead"
                )
            due_ms = max(now_ms(), _epoch_ms(eta))
        else:
            due_ms = now_ms()
        expires_ms = None
        if expires is not None:
            if isinstance(expires, datetime):
                expires_ms = _epoch_ms(_aware("expires", expires))
            else:
                seconds = _seconds("expires", expires)
                if seconds <= 0:
                    raise ValueError(f"expires must be positive seconds, got {expires!r}")
                expires_ms = due_ms_in(seconds)
        return due_ms, expires_ms

    async def revoke(self, message_id: object, *, timeout_s: float = 10.0) -> bool:
        """Cancel the pending delayed run of ``message_id``: a countdown, an eta or
        a retry. Durable: the revocation goes through Kafka to the owner of each
        timer partition, so a worker that restarts does not run it.

        Returns True when a worker cancelled it, False when none held it pending
        (an unknown id, or one that has run or is running). Raises
        ``TimeoutError`` when not every partition's owner answered within
        ``timeout_s`` (through Redis); the revocation still applies when they
        read it.
        """
        timer_id = str(message_id).lower()
        nonce = uuid.uuid4().hex
        partitions = self.app.dawning_settings.kafka.partitions
        headers = [(Header.REVOKE, timer_id.encode()), (Header.REPLY_TO, nonce.encode())]
        for partition in range(partitions):
            await self.app.bus.forward(
                self.timers_topic, timer_id.encode(), None, partition=partition, headers=headers
            )
        client = self.app.redis.client
        reply_key = revoke_reply_key(nonce)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        answered = 0
        while answered < partitions:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"revoke of {timer_id} in {self.name}: {answered} of {partitions} timer "
                    f"partitions answered within {timeout_s} s; the revocation is on "
                    f"{self.timers_topic} and applies when their owners read it"
                )
            reply = await client.blpop([reply_key], timeout=max(0.1, remaining))
            if reply is None:
                continue
            if reply[1] == b"1":
                return True
            answered += 1
        return False

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
                handler=self.name,
                # An ordered handler must know which keys are held before it
                # takes a partition's records: after its timers are recovered.
                ready=self._timers_own if options.ordered else None,
            )
        )
        self.timers_topic = timers_topic(self.topic, self.name)
        self.timers = Timers(
            app,
            handler=self.name,
            source=self.topic,
            topic=raw_topic(self.timers_topic),
            concurrency=options.concurrency,
            fire=self._fire,
            release=self._release,
            dead_letter=self._dead_letter_timer,
        )
        if self.options.dead_letter:
            # Kept forever: dead letters leave only by an operator's replay.
            raw_topic(
                self.dead_letter_topic,
                config={"retention.ms": "-1", "retention.bytes": "-1"},
            )

    async def _step_record(self, record: Any) -> None:
        """The lane's first attempt on a fetched record.

        The common case (not ordered, decodes, succeeds) needs no Delivery;
        everything else takes the path of :meth:`_step`.
        """
        if self.options.ordered:
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
            await self._step(Delivery.of_record(event.message), attempt=0)

    async def _consume_batches(self, stream: StreamT) -> None:
        options = self.options
        batches = stream.take_events(  # type: ignore[attr-defined]
            options.batch_size, within=options.batch_within_s
        )
        async for events in batches:
            await self._step_batch([Delivery.of_record(event.message) for event in events])

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
        key = self._ordered_key(delivery)
        if key is None:
            await self._run(delivery, attempt)
            return
        if self.timers.holder(key) is not None:
            logger.info(
                "%s: key %s waits on a retry; parking %s", self.name, key, delivery.origin_id
            )
            await self.timers.park(key, delivery)
            return
        await self._run(delivery, attempt, hold=key)

    def _timers_own(self, partition: int) -> bool:
        return self.timers.owns(partition)

    def _ordered_key(self, delivery: Delivery) -> str | None:
        if not self.options.ordered or delivery.key is None:
            return None
        return delivery.key.decode("utf-8", "replace")

    async def _run(
        self,
        delivery: Delivery,
        attempt: int,
        *,
        hold: str | None = None,
        timer: Timer | None = None,
    ) -> bool:
        """Handle ``delivery`` once; route a failure. True when it went to a retry.

        With ``hold`` (an ordered handler's key), a retry holds the key.
        """
        expires_ms = delivery.header_int(Header.EXPIRES_MS)
        if expires_ms is not None and now_ms() >= expires_ms:
            await self._expire(delivery, attempt)
            return False
        token = delivering(self.name, delivery, attempt)
        try:
            with self.app.telemetry.attempt(
                self.name, delivery.origin[0], [delivery.headers], attempt=attempt
            ) as run:
                try:
                    message = self._decode(delivery)
                    await self._call(message)
                except Exception as exc:
                    run.failed(exc)
                    return await self._fail(delivery, attempt, exc, hold=hold, timer=timer)
                return False
        finally:
            delivered(token)

    # -- timers --------------------------------------------------------------

    async def _fire(self, timer: Timer) -> None:
        """A due timer: run its message (ordered: in its key's turn)."""
        delivery = timer.delivery
        key = self._ordered_key(delivery)
        if key is None:
            await self._run(delivery, timer.attempt, timer=timer)
            return
        holder = self.timers.holder(key)
        if holder is not None and holder != timer.id:
            if timer.attempt > 0:
                # Retries of an ordered key always hold it; this one's key has
                # moved on (its holder ran before a crash), so it has run.
                logger.info("%s: dropping timer %s of released key %s", self.name, timer.id, key)
                return
            # A countdown whose key waits on a retry: behind it, in order.
            await self.timers.park(key, delivery, timer_id=timer.id)
            return
        retried = await self._run(delivery, timer.attempt, hold=key, timer=timer)
        if not retried and self.timers.holder(key) == timer.id:
            await self._release(key, timer.partition, timer)

    async def _release(self, key: str, partition: int, fired: Timer | None = None) -> None:
        """Handle what is parked behind ``key``, in arrival order, then release it.

        Each parked message is removed only after it has been handled (or sent
        to a retry, which then holds the key), so a crash in between repeats it
        rather than losing it. The fired holder's timer is deleted before the
        hold, so a crash leaves a hold the watchdog releases, not a repeat.
        """
        timers = self.timers
        while timers.owns(partition) and (first := timers.first_parked(key)) is not None:
            sequence, parked = first
            if fired is not None and parked.origin_id == fired.delivery.origin_id:
                timers.drop_parked(key, sequence)  # the holder itself, parked before a crash
                continue
            retried = await self._run(parked, 0, hold=key)
            timers.drop_parked(key, sequence)
            if retried:
                return
        if timers.owns(partition):
            if fired is not None:
                timers.finish(fired)
            timers.unhold(key)

    async def _expire(self, delivery: Delivery, attempt: int) -> None:
        self.app.telemetry.metrics.expired(self.name)
        expired_at = delivery.header_int(Header.EXPIRES_MS)
        await self._dead_letter(delivery, attempt, Expired(f"expired at {_iso_ms(expired_at)}"))

    async def _dead_letter_timer(self, timer: Timer, reason: str) -> None:
        await self._dead_letter(timer.delivery, timer.attempt, Reject(reason))

    def _decode(self, delivery: Delivery) -> Any:
        if self.message_type is bytes:
            return delivery.value
        return decode(delivery.value, self.message_type, topic=delivery.origin[0])  # type: ignore[type-var]

    async def _fail(
        self,
        delivery: Delivery,
        attempt: int,
        exc: Exception,
        *,
        hold: str | None = None,
        timer: Timer | None = None,
    ) -> bool:
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
            retry = self._retry_timer(delivery, retry_number, delay_s, exc, timer)
            await self.timers.schedule(retry, hold=hold)
            self.app.telemetry.routed(self.name, dead_letter=False)
            return True
        await self._dead_letter(delivery, attempt, exc)
        return False

    def _retry_timer(
        self,
        delivery: Delivery,
        retry_number: int,
        delay_s: float,
        exc: Exception,
        fired: Timer | None,
    ) -> Timer:
        """The timer of a failed message's next attempt: same bytes, same partition."""
        kept = [
            (k, v)
            for k, v in delivery.headers
            if not k.startswith(Header.PREFIX) or k in _CARRIED_HEADERS
        ]
        first = delivery.header(Header.FIRST_FAILED_AT) or _now_iso()
        kept.append((Header.FIRST_FAILED_AT, first.encode()))
        # Stamped inside the failed attempt's span: the retry continues its trace.
        headers = self.app.telemetry.tracing.stamp(self.timers_topic, kept)
        retried = Delivery(
            delivery.topic,
            delivery.partition,
            delivery.offset,
            delivery.key,
            self._retry_value(delivery, retry_number),
            tuple(headers),
        )
        if fired is not None:
            timer_id = fired.id
        else:
            timer_id = delivery.header(Header.TIMER_ID) or delivery.message_id or delivery.origin_id
        return Timer(
            timer_id,
            delivery.partition,
            due_ms_in(delay_s),
            retry_number,
            retried,
            delivery.header_int(Header.EXPIRES_MS),
            f"{type(exc).__name__}: {exc}"[:_EXCEPTION_MESSAGE_LIMIT],
        )

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


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    return float(value)


def _aware(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"{name} must be an aware datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} must be an aware datetime (with a time zone), "
            f"got the naive {value.isoformat()}"
        )
    return value


def _epoch_ms(moment: datetime) -> int:
    return math.ceil(moment.timestamp() * 1000)


def _iso_ms(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "?"
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
