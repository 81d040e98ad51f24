"""A handler's calling API, as Celery's: ``delay``, ``apply_async``, their blocking
forms for code without an event loop, and ``revoke``.

Any process can call it: a web app, a script, another handler. ``delay`` sends
at once whether or not it is awaited, as Celery's does: in a running loop it
returns the send's task, and with no loop it sends before it returns. A message with
a countdown, an eta or an expiry goes through the handler's timers topic, into
its durable timer table; any other goes straight to the handler's topic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from aiokafka.structs import RecordMetadata

from dawning_streams.core.names import Header, revoke_reply_key
from dawning_streams.core.records import MessageBase
from dawning_streams.handlers.revocation import (
    Answers,
    redis_unreachable,
    revocation,
    timer_id_of,
)
from dawning_streams.handlers.timers import due_ms_in, now_ms

if TYPE_CHECKING:
    from dawning_streams.handlers.host import HandlerHost

__all__ = ["Calling", "Done", "Revoking", "Sending"]

logger = logging.getLogger(__name__)

M = TypeVar("M")
T = TypeVar("T")


class Done(Generic[T]):
    """A call that is done: what ``delay`` and ``revoke`` return with no event
    loop. Awaiting it, or :meth:`result`, gives its value (for a send, the
    receipt; ``None``: spooled)."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def done(self) -> bool:
        return True

    def result(self) -> T:
        return self._value

    def __await__(self) -> Generator[Any, None, T]:
        return self._value
        yield  # a generator, so that ``await`` works

    def __repr__(self) -> str:
        return f"<Done {self._value!r}>"


#: The revocations under way in running loops (nobody may await them).
_revoking: set[asyncio.Task[bool]] = set()

#: What ``delay`` and ``apply_async`` return: a send under way in the running
#: loop, or one already done. Both have ``done()`` and ``result()``, and can be awaited.
Sending = asyncio.Task[RecordMetadata | None] | Done[RecordMetadata | None]
#: What ``revoke`` returns, likewise.
Revoking = asyncio.Task[bool] | Done[bool]


class Calling(Generic[M]):
    """Sending work to a handler; :class:`~dawning_streams.handlers.handler.Handler` has it."""

    app: HandlerHost
    name: str
    topic: str
    timers_topic: str
    message_type: type[M]

    def delay(self, message: M) -> Sending:
        """Publish ``message`` to this handler's topic (Celery's ``delay``).

        The send starts at once, awaited or not. In a running event loop the
        result is a task: ``await`` it for the broker's receipt, or ``None``
        if Kafka was unreachable and the message went to the spool. With no
        event loop (a script, a Flask view) the call sends as
        :meth:`delay_blocking` does, and returns once it is done.
        """
        return self.apply_async(message)

    def apply_async(
        self,
        message: M,
        *,
        countdown_s: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        key: str | None = None,
    ) -> Sending:
        """Publish ``message``, as Celery's ``apply_async``; returns as :meth:`delay`.

        ``countdown_s`` (seconds from now) or ``eta`` (an aware ``datetime``):
        handled no earlier than that. ``expires`` (seconds from now, or an aware
        ``datetime``): not run after that time, but dead-lettered as expired.
        Any of them sends the message through the handler's durable timers.
        A bad value raises ``ValueError`` naming it, and nothing is published.
        """
        target, headers = self._addressed(message, countdown_s, eta, expires)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return Done(self._send_blocking(message, target, key, headers))
        task = loop.create_task(self._send(message, target, key, headers))
        # Held until done, so that nothing collects it mid-send, and so that a
        # worker's commit waits for it (a handler may not await it).
        self.app.bus.hold(task)
        task.add_done_callback(partial(_cancelled, self.name, target))
        return task

    async def _send(
        self, message: M, target: str, key: str | None, headers: list[tuple[str, bytes]] | None
    ) -> RecordMetadata | None:
        bus = self.app.bus
        if isinstance(message, MessageBase):
            return await bus.publish(message, topic=target, key=key, headers=headers)
        raw = bytes(message)  # type: ignore[call-overload]
        return await bus.forward(target, key.encode() if key else None, raw, headers=headers)

    def _send_blocking(
        self, message: M, target: str, key: str | None, headers: list[tuple[str, bytes]] | None
    ) -> RecordMetadata | None:
        bus = self.app.bus
        if isinstance(message, MessageBase):
            return bus.publish_blocking(message, topic=target, key=key, headers=headers)
        raw = bytes(message)  # type: ignore[call-overload]
        return bus.forward_blocking(target, key.encode() if key else None, raw, headers=headers)

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
        """:meth:`apply_async` for code without an event loop; safe from any thread.

        Raises :class:`~dawning_streams.DawningError` on a running event loop,
        which it would block.
        """
        target, headers = self._addressed(message, countdown_s, eta, expires)
        return self._send_blocking(message, target, key, headers)

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
                if expires_ms <= now_ms():  # as expires=0 is: it could never run
                    raise ValueError(f"expires={expires.isoformat()} has already passed")
            else:
                seconds = _seconds("expires", expires)
                if seconds <= 0:
                    raise ValueError(f"expires must be positive seconds, got {expires!r}")
                expires_ms = due_ms_in(seconds)
        return due_ms, expires_ms

    def revoke(self, message_id: object, *, timeout_s: float = 10.0) -> Revoking:
        """Cancel the pending delayed run of ``message_id``: a countdown, an eta or
        a retry. Durable: the revocation goes through Kafka to the owner of each
        timer partition, so a worker that restarts does not run it.

        Its result (awaited in a running loop; with no loop, the call waits and
        ``result()`` gives it) is True when a worker cancelled it, False when
        none held it pending (an unknown id, or one that has run or is
        running). ``TimeoutError`` when not every partition's owner answered
        within ``timeout_s`` (through Redis), or Redis did not answer; the
        revocation still applies when they read it.
        """
        timer_id = timer_id_of(message_id)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return Done(self.revoke_blocking(timer_id, timeout_s=timeout_s))
        task = loop.create_task(self._revoke(timer_id, timeout_s))
        # The loop keeps only a weak reference: held until done.
        _revoking.add(task)
        task.add_done_callback(_revoking.discard)
        return task

    def revoke_blocking(self, message_id: object, *, timeout_s: float = 10.0) -> bool:
        """:meth:`revoke` for code without an event loop; safe from any thread."""
        timer_id = timer_id_of(message_id)
        nonce = uuid.uuid4().hex
        answers = self._answers(timer_id, timeout_s)
        for partition in range(self.app.dawning_settings.kafka.partitions):
            try:
                self.app.bus.forward_blocking(
                    self.timers_topic,
                    timer_id.encode(),
                    None,
                    partition=partition,
                    headers=revocation(timer_id, nonce),
                    timeout_s=answers.left_s(),
                )
            except TimeoutError:
                raise answers.unsent(timeout_s) from None
        import redis

        client = redis.Redis.from_url(self.app.dawning_settings.redis.url)
        try:
            while answers.wanted():
                try:
                    reply = client.blpop([revoke_reply_key(nonce)], timeout=answers.wait_s())
                except redis_unreachable() as exc:
                    raise answers.unanswered(exc) from exc
                answers.take(reply)  # type: ignore[arg-type]
        finally:
            client.close()
        return answers.cancelled

    async def _revoke(self, timer_id: str, timeout_s: float) -> bool:
        nonce = uuid.uuid4().hex
        answers = self._answers(timer_id, timeout_s)
        try:
            # To every partition at once: each owner answers for its own.
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(
                    *(
                        self.app.bus.forward(
                            self.timers_topic,
                            timer_id.encode(),
                            None,
                            partition=partition,
                            headers=revocation(timer_id, nonce),
                        )
                        for partition in range(self.app.dawning_settings.kafka.partitions)
                    )
                )
        except TimeoutError:
            raise answers.unsent(timeout_s) from None
        client = self.app.redis.client
        while answers.wanted():
            try:
                reply = await client.blpop([revoke_reply_key(nonce)], timeout=answers.wait_s())
            except redis_unreachable() as exc:
                raise answers.unanswered(exc) from exc
            answers.take(reply)  # type: ignore[arg-type]
        return answers.cancelled

    def _answers(self, timer_id: str, timeout_s: float) -> Answers:
        return Answers(
            f"revoke of {timer_id} in {self.name}",
            self.app.dawning_settings.kafka.partitions,
            time.monotonic() + timeout_s,
            f"the revocation is on {self.timers_topic} and applies when their owners read it",
        )


def _cancelled(handler: str, topic: str, task: asyncio.Task[RecordMetadata | None]) -> None:
    if task.cancelled():
        # asyncio.run cancels what is left when its coroutine returns: a
        # ``delay()`` nobody awaited may not have reached the producer yet.
        logger.warning(
            "%s.delay(): a send to %s was cancelled before its receipt (its event loop "
            "ended, or its task was cancelled): a record the producer already had is "
            "still delivered as the loop's sender closes, one it did not have is not "
            "sent; await delay() before the loop ends",
            handler,
            topic,
        )


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
