"""Retry policies, and the exceptions a handler raises to steer its message.

A failed message is never retried in place: it becomes a durable timer
(:mod:`dawning_streams.handlers.timers`) and is handled again when due, so the rest of
its partition keeps flowing. Which path a failure takes:

* :class:`RetryLater` (arq's ``Retry(defer)``): retry after the delay it names;
* :class:`Reject`, :class:`~dawning_streams.core.errors.MessageDecodeError`,
  :class:`~dawning_streams.core.errors.UsageError` (a blocking publish in an
  async handler, say) and any type listed in ``Retry.non_retryable``: straight
  to the dead-letter topic;
* any other exception: retry with the policy's backoff, then dead-letter.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from dawning_streams.core.errors import DawningError, MessageDecodeError, UsageError

__all__ = ["Expired", "HandlerTimeout", "Reject", "Retry", "RetryLater"]


class RetryLater(DawningError):
    """Raised by a handler to be called again after ``delay_s`` seconds."""

    def __init__(self, delay_s: float, reason: str = "") -> None:
        if isinstance(delay_s, bool) or not isinstance(delay_s, int | float):
            raise TypeError(
                f"RetryLater delay_s must be a number of seconds, got {type(delay_s).__name__}"
                f" {delay_s!r}"
            )
        if not 0 <= delay_s < math.inf:  # NaN fails both
            raise ValueError(
                "RetryLater delay_s must be a finite number of seconds, not negative;"
                f" got {delay_s}"
            )
        self.delay_s = delay_s
        super().__init__(reason or f"retry requested in {delay_s} s")


class Expired(DawningError):
    """Why a message sent with ``expires`` was dead-lettered instead of run."""


class HandlerTimeout(DawningError, TimeoutError):
    """An attempt ran past its handler's ``timeout_s`` and was cancelled; retried as
    any failure (list it in ``Retry.non_retryable`` to dead-letter it at once)."""


class Reject(DawningError):
    """Raised by a handler for a message that can never succeed: dead-letter it now."""


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and how late a failed message is tried again.

    The n-th retry waits ``backoff_s * 2 ** (n - 1)`` seconds, at most
    ``max_backoff_s``, spread by ``jitter`` (0.1 is ±10 %). The defaults give
    the seed's email rule: 2, 4 and 8 seconds, then the dead-letter topic.
    """

    max_retries: int = 3
    backoff_s: float = 2.0
    max_backoff_s: float = 600.0
    jitter: float = 0.0
    non_retryable: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 50:
            raise ValueError(f"Retry max_retries must be 0 to 50, got {self.max_retries!r}")
        if not self.backoff_s > 0:
            raise ValueError(f"Retry backoff_s must be positive, got {self.backoff_s!r}")
        if self.max_backoff_s < self.backoff_s:
            raise ValueError(
                f"Retry max_backoff_s ({self.max_backoff_s}) must be at least "
                f"backoff_s ({self.backoff_s})"
            )
        if not 0 <= self.jitter < 1:
            raise ValueError(f"Retry jitter must be in [0, 1), got {self.jitter!r}")
        for kind in self.non_retryable:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ValueError(f"Retry non_retryable must list exception types, got {kind!r}")

    def delay_s(self, retry_number: int) -> float:
        """Seconds to wait before the ``retry_number``-th retry (1-based)."""
        base = min(self.backoff_s * 2 ** (retry_number - 1), self.max_backoff_s)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return base

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` deserves another attempt at all."""
        return not isinstance(
            exc, (Reject, Expired, MessageDecodeError, UsageError, *self.non_retryable)
        )
