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

The parts: :mod:`~dawning_streams.handlers.calling` (``delay``, ``apply_async``,
``revoke``), :mod:`~dawning_streams.handlers.routing` (retry or dead letter),
:mod:`~dawning_streams.handlers.timers` (durable timers, holds and parking) and
:mod:`~dawning_streams.handlers.delivery` (a record on its way). This module
keeps the declaration and the one path from a record to the function: first
attempts, batches, due timers and an ordered key's release. They share the
handler's state and read best as one sequence, so it runs past 400 lines.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from faust.types import StreamT

from dawning_streams.core.codec import decode, encode
from dawning_streams.core.dedupe import Dedupe
from dawning_streams.core.errors import DawningError, MessageDecodeError
from dawning_streams.core.names import (
    Header,
    dead_letter_topic,
    replay_target,
    replayed_for_another,
    timers_topic,
    valid_name,
)
from dawning_streams.core.records import MessageBase
from dawning_streams.core.retry import HandlerTimeout, Reject, Retry
from dawning_streams.handlers.calling import Calling
from dawning_streams.handlers.dedupe import Deduplicated
from dawning_streams.handlers.delivery import Delivery, delivered, delivering
from dawning_streams.handlers.routing import Routing
from dawning_streams.handlers.timers import Timer, Timers, now_ms
from dawning_streams.kafka.lanes import Lane
from dawning_streams.observability.tracing import carried, carry, uncarry

if TYPE_CHECKING:
    from dawning_streams.handlers.host import HandlerHost

__all__ = ["Delivery", "Handler", "HandlerError", "HandlerOptions"]

logger = logging.getLogger(__name__)

M = TypeVar("M")
HandlerFn = Callable[[M], Awaitable[None] | None]

_perf_counter = time.perf_counter


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
    #: ``True`` for ``Dedupe()``; see :mod:`dawning_streams.core.dedupe`.
    dedupe: Dedupe | bool | None = None
    #: Seconds an attempt may take (an async handler's): then it is cancelled
    #: and fails with :class:`HandlerTimeout`, retried as any failure. None: no limit.
    timeout_s: float | None = None

    @property
    def dedupe_policy(self) -> Dedupe | None:
        """The de-duplication policy, if any (``dedupe=True`` is the default one)."""
        if self.dedupe is True:
            return Dedupe()
        return self.dedupe if isinstance(self.dedupe, Dedupe) else None

    def problem(self) -> str | None:
        """What is wrong with these options, or None."""
        if not isinstance(self.retry, Retry):
            return f"retry must be a Retry(...), got {self.retry!r}"
        if self.dedupe is not None and not isinstance(self.dedupe, bool | Dedupe):
            return f"dedupe must be True or a Dedupe(...), got {self.dedupe!r}"
        if self.dedupe_policy is not None and self.batch_size != 1:
            return (
                "dedupe is for handlers of one message; a batch handler de-duplicates "
                "where it stores the batch (by MessageId)"
            )
        for field_name in ("concurrency", "batch_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                return f"{field_name} must be a positive integer, got {value!r}"
        if not self.batch_within_s > 0:
            return f"batch_within_s must be positive, got {self.batch_within_s!r}"
        if self.ordered and (self.concurrency != 1 or self.batch_size != 1):
            return "an ordered handler runs with concurrency=1 and batch_size=1"
        if self.timeout_s is not None and (
            isinstance(self.timeout_s, bool)
            or not isinstance(self.timeout_s, int | float)
            or not 0 < self.timeout_s < math.inf
        ):
            return f"timeout_s must be a positive number of seconds or None, got {self.timeout_s!r}"
        return None


class Handler(Calling[M]):
    """A declared handler: call it directly, or send it work with ``delay``/``apply_async``."""

    def __init__(
        self,
        app: HandlerHost,
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
        #: ``Header.REPLAY_FOR`` of the dead letters of this handler, replayed.
        self.replay_id = replay_target(app.conf.id, name)
        self.options = options
        self.retry = options.retry
        self.dead_letter_topic = dead_letter_topic(topic)
        self.__doc__ = fn.__doc__
        self.__name__ = name
        self._plain: Callable[[Any], Awaitable[Any]] = (
            fn if inspect.iscoroutinefunction(fn) else self._in_thread  # type: ignore[assignment]
        )
        if options.timeout_s is not None:
            self._plain = self._limited
        self._function: Callable[[Any], Awaitable[Any]] = self._plain
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
        await self._plain(message)

    async def _in_thread(self, message: Any) -> None:
        await asyncio.to_thread(self.fn, message)

    async def _limited(self, message: Any) -> None:
        """The function, cancelled after ``timeout_s`` (an async one: a thread
        cannot be stopped, and a retry while it runs would run the message twice)."""
        limit = self.options.timeout_s
        scope = asyncio.timeout(limit)
        try:
            async with scope:
                await self.fn(message)  # type: ignore[misc]
        except TimeoutError as exc:
            if not scope.expired():
                raise  # the handler's own (a client's timeout), not the limit's
            raise HandlerTimeout(f"{self.name} did not finish within timeout_s={limit:g}") from exc

    async def _call(self, message: Any) -> None:
        await self._function([message] if self.options.batch_size > 1 else message)

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

        dedupe = self.options.dedupe_policy
        #: The ids this handler finished, when it de-duplicates.
        self.dedupe = (
            None
            if dedupe is None
            else Deduplicated(
                app,
                self._plain,
                handler=self.name,
                policy=dedupe,
                on_skip=app.telemetry.metrics.skipped,
            )
        )
        if self.dedupe is not None:
            self._function = self.dedupe
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
        self.routing = Routing(
            handler=self.name,
            group=app.conf.id,
            retry=self.retry,
            dead_letter_topic=self.dead_letter_topic if options.dead_letter else None,
            timers_topic=self.timers_topic,
            timers=self.timers,
            telemetry=app.telemetry,
            forward=self._forward,
            retry_value=self._retry_value,
            max_delay_days=app.dawning_settings.timers.max_delay_days,
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
        if record.headers and replayed_for_another(record.headers, self.replay_id):
            return  # a dead letter of another handler, replayed for it alone
        if self.options.ordered:
            await self._step(Delivery.of_record(record), attempt=0)
            return
        try:
            message = (
                record.value
                if self.message_type is bytes
                else decode(record.value, self.message_type, topic=record.topic)  # type: ignore[type-var]
            )
        except Exception:  # MessageDecodeError, or what a type's own __post_init__ raised
            # Decoded again there, to dead-letter it with its origin (or to
            # retry it, for an error of the type's own): never out of the lane.
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
            await self.routing.fail(delivery, 0, exc)
        except Exception as exc:
            await self._unroutable(delivery, 0, exc)

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
        deliveries = [Delivery.of_record(record) for record in records]
        mine = [d for d in deliveries if not replayed_for_another(d.headers, self.replay_id)]
        if mine:
            await self._step_batch(mine)

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
            await self.routing.fail(delivery, 0, exc)
        except Exception as exc:
            await self._unroutable(delivery, 0, exc)

    # -- one attempt ---------------------------------------------------------

    async def _step(self, delivery: Delivery, *, attempt: int) -> None:
        """One attempt; a message that cannot even be routed must not stop the agent."""
        try:
            await self._attempt(delivery, attempt=attempt)
        except Exception as exc:
            await self._unroutable(delivery, attempt, exc)

    async def _unroutable(self, delivery: Delivery, attempt: int, error: Exception) -> None:
        """A failed message whose retry or dead letter could not be written.

        The handler's own errors are routed (a retry the framework could not
        make is dead-lettered by the routing); what lands here is a retry or
        dead letter the broker refused (too large, not authorised). It stays
        in its topic at this offset: say exactly where, and keep the partition
        moving.
        """
        logger.critical(
            "%s: could not retry or dead-letter %s/%d/%d (attempt %d); it remains there",
            self.name,
            delivery.topic,
            delivery.partition,
            delivery.offset,
            attempt + 1,
            exc_info=error,
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
            await self.routing.expire(delivery, attempt)
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
                    return await self.routing.fail(delivery, attempt, exc, hold=hold, timer=timer)
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

    async def _dead_letter_timer(self, timer: Timer, reason: str) -> None:
        # The timer holds the attempt that was due next: it did not run.
        await self.routing.dead_letter(timer.delivery, timer.attempt, Reject(reason), ran=False)

    def _forward(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.app.bus.forward(*args, **kwargs)

    def _decode(self, delivery: Delivery) -> Any:
        if self.message_type is bytes:
            return delivery.value
        return decode(delivery.value, self.message_type, topic=delivery.origin[0])  # type: ignore[type-var]

    def _retry_value(self, delivery: Delivery, retry_number: int) -> bytes | None:
        if not self._counts_retries:
            return delivery.value
        message = self._decode(delivery)
        message.retry_count = retry_number
        return encode(message)


def handler_for(
    app: HandlerHost,
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
        if options.dedupe_policy is not None:
            raise HandlerError(f"handler {name!r} takes bytes, which carry no MessageId to dedupe")
    elif isinstance(message_type, type) and issubclass(message_type, MessageBase):
        if topic is None:
            topic = app.topic_for(message_type).get_topic_name()
    else:
        raise HandlerError(
            f"handler {name!r}: {message_type!r} is not a dawning message type "
            "(a MessageBase subclass) or bytes"
        )
    problem = options.problem()
    if problem is None and options.timeout_s is not None and not inspect.iscoroutinefunction(fn):
        problem = (
            "timeout_s needs an async handler: a function run in a thread cannot be"
            " stopped, and retrying it while it runs would handle the message twice"
        )
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
