"""Every derived topic name, message header and Redis key, in one place."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "Header",
    "dead_letter_topic",
    "evictions_topic",
    "header_text",
    "lock_key",
    "replay_target",
    "replayed_for_another",
    "revoke_reply_key",
    "scheduled_key",
    "timers_table",
    "timers_topic",
    "valid_name",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


def valid_name(name: str) -> bool:
    """Whether ``name`` may be part of a topic name (Kafka's characters, short)."""
    return bool(_NAME.match(name))


def timers_topic(source: str, handler: str) -> str:
    """Where ``apply_async`` sends ``handler``'s delayed messages, and revocations, on
    their way into its timer table."""
    return f"{source}.{handler}.timers"


def timers_table(handler: str) -> str:
    """The changelog-backed table holding ``handler``'s pending timers and held keys."""
    return f"{handler}-timers"


def revoke_reply_key(nonce: str) -> str:
    """Redis list where the owners of a timer partition answer one ``revoke`` call."""
    return f"dawning:timers:revoke:{nonce}"


def dead_letter_topic(source: str) -> str:
    """The dead-letter topic of ``source``, shared by the handlers of that topic."""
    return f"{source}.dlq"


def evictions_topic(source: str) -> str:
    """Where the cache-invalidation handler announces a finished Redis delete,
    for every instance to evict its local level (see agents/cache_invalidation.py)."""
    return f"{source}.evictions"


def header_text(headers: Iterable[tuple[str, bytes]], name: str) -> str | None:
    """The first header called ``name``, as text, or None."""
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", "replace")
    return None


def replay_target(group: str, handler: str) -> bytes:
    """``Header.REPLAY_FOR`` of the dead letters of ``handler`` in ``group``, replayed."""
    return f"{group}/{handler}".encode()


def replayed_for_another(headers: Iterable[tuple[str, bytes]], target: bytes) -> bool:
    """Whether ``headers`` are a dead letter's, replayed for another handler than ``target``.

    Every record of a handler's topic passes here: one pass, no decoding.
    """
    for key, value in headers:
        if key == Header.REPLAY_FOR:
            return value != target
    return False


def lock_key(name: str, *, fence: bool = False) -> str:
    """Redis key of the lock ``name``, or of its fencing-token counter."""
    return f"dawning:lock:{name}:fence" if fence else f"dawning:lock:{name}"


def scheduled_key(group: str, name: str) -> str:
    """Redis key holding when consumer group ``group``'s task ``name`` last ran (epoch s)."""
    return f"dawning:scheduled:{group}:{name}:last-run"


class Header:
    """Names of the Kafka headers dawning-streams writes; all start with ``dawning-``."""

    PREFIX = "dawning-"
    ATTEMPT = "dawning-attempt"
    DUE_MS = "dawning-due-ms"
    EXPIRES_MS = "dawning-expires-ms"
    TIMER_ID = "dawning-timer-id"
    REVOKE = "dawning-revoke"
    REPLY_TO = "dawning-reply-to"
    RELEASE = "dawning-release"
    HANDLER = "dawning-handler"
    ORIGINAL_TOPIC = "dawning-original-topic"
    ORIGINAL_PARTITION = "dawning-original-partition"
    ORIGINAL_OFFSET = "dawning-original-offset"
    ORIGINAL_KEY = "dawning-original-key"
    EXCEPTION_TYPE = "dawning-exception-type"
    EXCEPTION_MESSAGE = "dawning-exception-message"
    TRACEBACK = "dawning-traceback"
    FIRST_FAILED_AT = "dawning-first-failed-at"
    LAST_FAILED_AT = "dawning-last-failed-at"
    REPLAYED_FROM = "dawning-replayed-from"
    #: On a dead letter: the consumer group (the Faust app id) whose handler failed.
    GROUP = "dawning-group"
    #: On a replayed dead letter: ``<group>/<handler>``, the only handler that runs
    #: it again (the others on its topic, in any group, have handled it already).
    REPLAY_FOR = "dawning-replay-for"
