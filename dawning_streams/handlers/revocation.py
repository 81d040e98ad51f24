"""A revocation's parts: the id it names, its headers, and the answers of the
timer partitions' owners as they come (through Redis), for
:meth:`~dawning_streams.handlers.calling.Calling.revoke`."""

from __future__ import annotations

import time
import uuid

from dawning_streams.core.errors import described
from dawning_streams.core.names import Header

__all__ = ["Answers", "redis_unreachable", "revocation", "timer_id_of"]


class Answers:
    """The timer partitions' owners' answers to one revocation, as they come."""

    def __init__(self, what: str, partitions: int, deadline: float, still: str) -> None:
        self.what = what
        self.partitions = partitions
        self.deadline = deadline
        self.still = still
        self.answered = 0
        self.cancelled = False

    def wanted(self) -> bool:
        """Whether to wait for another answer; ``TimeoutError`` once it is too late."""
        if self.cancelled or self.answered >= self.partitions:
            return False
        if time.monotonic() >= self.deadline:
            raise TimeoutError(
                f"{self.what}: {self.answered} of {self.partitions} timer partitions "
                f"answered in time; {self.still}"
            )
        return True

    def wait_s(self) -> float:
        """How long the next BLPOP may block: at most a second, well within the
        client's socket timeout (redis-py's default is 5 s), which would
        otherwise end a longer one as if Redis had not answered."""
        return min(1.0, max(0.1, self.deadline - time.monotonic()))

    def take(self, reply: tuple[bytes, bytes] | None) -> None:
        if reply is None:
            return
        if reply[1] == b"1":
            self.cancelled = True
        self.answered += 1

    def left_s(self) -> float:
        """The time left before the deadline (0 once it has passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def unsent(self, timeout_s: float) -> TimeoutError:
        """Kafka did not acknowledge the revocation records in time."""
        return TimeoutError(
            f"{self.what}: Kafka did not acknowledge the revocation within {timeout_s:g} s;"
            " this process's producer keeps it and sends it when Kafka answers (what is"
            " still unsent when the process ends is named then)"
        )

    def unanswered(self, exc: BaseException) -> TimeoutError:
        return TimeoutError(
            f"{self.what}: Redis did not answer ({described(exc)}), so whether a "
            f"worker cancelled it is not known; {self.still}"
        )


def redis_unreachable() -> tuple[type[Exception], ...]:
    """What a Redis call raises when Redis does not answer (redis-py is imported
    only by a process that has made a client, so only once one raised)."""
    from redis.exceptions import RedisError

    return (RedisError, OSError)


def timer_id_of(message_id: object) -> str:
    try:
        return str(uuid.UUID(str(message_id)))
    except ValueError:
        raise ValueError(
            f"revoke takes a message's MessageId (a GUID), got {message_id!r}"
        ) from None


def revocation(timer_id: str, nonce: str) -> list[tuple[str, bytes]]:
    return [(Header.REVOKE, timer_id.encode()), (Header.REPLY_TO, nonce.encode())]
