"""Where a failed attempt goes: a retry timer, or the dead-letter topic.

:class:`Routing` decides it for one handler, from the exception and the retry
policy, and writes it: a retry is a durable timer (same bytes, same partition,
due after the backoff), a dead letter keeps the message's bytes and key and
adds headers that say where it came from, what failed and when. It is given
its collaborators (the timers, the telemetry, a send function), not the app.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from dawning_streams.core.errors import MessageDecodeError, PublishError
from dawning_streams.core.names import Header
from dawning_streams.core.retry import Expired, Reject, Retry, RetryLater
from dawning_streams.handlers.delivery import Delivery
from dawning_streams.handlers.timers import Timer, Timers, due_ms_in
from dawning_streams.observability.telemetry import Telemetry

__all__ = ["Routing"]

logger = logging.getLogger(__name__)

_EXCEPTION_MESSAGE_LIMIT = 2_000
_TRACEBACK_LIMIT = 8_000
#: ``dawning-*`` headers a retry keeps: the message's expiry and its timer id.
_CARRIED_HEADERS = frozenset({Header.EXPIRES_MS, Header.TIMER_ID})

#: Sends raw bytes to a topic: (topic, key, value, partition=, headers=).
Forward = Callable[..., Awaitable[Any]]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _iso_ms(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "?"
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat().replace("+00:00", "Z")


class Routing:
    """The retry-or-dead-letter decision of one handler, and its writes."""

    def __init__(
        self,
        *,
        handler: str,
        group: str,
        retry: Retry,
        dead_letter_topic: str | None,
        timers_topic: str,
        timers: Timers,
        telemetry: Telemetry,
        forward: Forward,
        retry_value: Callable[[Delivery, int], bytes | None],
        max_delay_days: int,
    ) -> None:
        self.name = handler
        self.group = group
        self.retry = retry
        #: None when the handler drops what fails for good (``dead_letter=False``).
        self.dead_letter_topic = dead_letter_topic
        self.timers_topic = timers_topic
        self.timers = timers
        self.telemetry = telemetry
        self._forward = forward
        self._retry_value = retry_value
        #: ``Timers:MaxDelayDays``: a ``RetryLater`` asking for more is dead-lettered.
        self.max_delay_days = max_delay_days

    async def expire(self, delivery: Delivery, attempt: int) -> None:
        self.telemetry.metrics.expired(self.name)
        expired_at = delivery.header_int(Header.EXPIRES_MS)
        # ``attempt`` is the one that was due: it did not run.
        expired = Expired(f"expired at {_iso_ms(expired_at)}")
        await self.dead_letter(delivery, attempt, expired, ran=False)

    async def fail(
        self,
        delivery: Delivery,
        attempt: int,
        exc: Exception,
        *,
        hold: str | None = None,
        timer: Timer | None = None,
    ) -> bool:
        retry_number = attempt + 1
        delay_s: float | None
        if isinstance(exc, RetryLater) and exc.delay_s > self.max_delay_days * 86400:
            # As apply_async refuses such a countdown: no timer that far ahead.
            exc = Reject(
                f"RetryLater asked for {exc.delay_s:.0f} s ({exc.delay_s / 86400:.1f} days),"
                " more than Timers:MaxDelayDays"
                f" ({self.max_delay_days}) ahead ({exc})"
            )
            delay_s = None
        elif isinstance(exc, RetryLater):
            delay_s = exc.delay_s
        elif self.retry.is_retryable(exc):
            delay_s = self.retry.delay_s(retry_number)
        else:
            delay_s = None
        if delay_s is not None and retry_number <= self.retry.max_retries:
            try:
                retry = self.retry_timer(delivery, retry_number, delay_s, exc, timer)
                await self.timers.schedule(retry, hold=hold)
            except PublishError:
                raise  # the broker's refusal: the handler says where the record stays
            except Exception as fault:
                # A fault of the framework's own making the retry: the dead
                # letter carries the handler's failure, and this as a note.
                logger.error(
                    "%s: could not schedule retry %d of %s (%s: %s); dead-lettering it",
                    self.name,
                    retry_number,
                    delivery.origin_id,
                    type(fault).__name__,
                    fault,
                    exc_info=fault,
                )
                exc.add_note(f"Its retry could not be scheduled: {type(fault).__name__}: {fault}")
                await self.dead_letter(delivery, attempt, exc)
                return False
            # Said once it is scheduled: a retry that cannot be made is not announced.
            logger.warning(
                "%s: %s failed (%s: %s); retry %d of %d in %.1f s",
                self.name,
                delivery.origin_id,
                type(exc).__name__,
                exc,
                retry_number,
                self.retry.max_retries,
                delay_s,
            )
            self.telemetry.routed(self.name, dead_letter=False)
            return True
        await self.dead_letter(delivery, attempt, exc)
        return False

    def retry_timer(
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
        headers = self.telemetry.tracing.stamp(self.timers_topic, kept)
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

    async def dead_letter(
        self, delivery: Delivery, attempt: int, exc: BaseException, *, ran: bool = True
    ) -> None:
        """Dead-letter ``delivery`` after ``attempt`` (numbered as
        ``current_delivery().attempt``); ``ran=False``: that attempt was due but
        did not run (it expired, or an operator released its key)."""
        tries = attempt + 1 if ran else attempt
        # An expiry is the sender's deadline passing, not the handler failing.
        level = logging.WARNING if isinstance(exc, Expired) else logging.ERROR
        if self.dead_letter_topic is None:
            logger.log(
                level,
                "%s: dropping %s after %s (%s: %s); dead letters are off",
                self.name,
                delivery.origin_id,
                _tries(tries),
                type(exc).__name__,
                exc,
            )
            return
        logger.log(
            level,
            "%s: dead-lettering %s after %s (%s: %s)",
            self.name,
            delivery.origin_id,
            _tries(tries),
            type(exc).__name__,
            exc,
        )
        await self._forward(
            self.dead_letter_topic,
            delivery.key,
            delivery.value,
            partition=delivery.origin[1],
            headers=self.failure_headers(delivery, exc, tries),
        )
        self.telemetry.routed(self.name, dead_letter=True)

    def failure_headers(
        self, delivery: Delivery, exc: BaseException, tries: int
    ) -> list[tuple[str, bytes]]:
        topic, partition, offset = delivery.origin
        now = _now_iso()
        reason = exc.reason if isinstance(exc, MessageDecodeError) else str(exc)
        trace = "".join(traceback.format_exception(exc))
        fields = {
            Header.ATTEMPT: str(tries),
            Header.HANDLER: self.name,
            Header.GROUP: self.group,
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


def _tries(tries: int) -> str:
    """How many times a message was tried."""
    if tries == 0:
        return "no try"
    if tries == 1:
        return "its first try"
    retries = "1 retry" if tries == 2 else f"{tries - 1} retries"
    return f"{tries} tries (the first and {retries})"
