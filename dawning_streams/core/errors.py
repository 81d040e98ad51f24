"""The one error hierarchy of dawning-streams.

Everything the library raises on purpose derives from :class:`DawningError`.
Errors of the clients underneath (aiokafka, redis, aiosmtplib) are translated
into these at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "DawningError",
    "MessageDecodeError",
    "PublishError",
    "SettingsError",
    "UsageError",
    "described",
]


class DawningError(Exception):
    """Base class of every error dawning-streams raises."""


def described(exc: BaseException) -> str:
    """``Type: message`` of ``exc``, as logs and errors name it; the type once,
    although aiokafka's errors already start their message with it."""
    name, text = type(exc).__name__, str(exc)
    if not text:
        return name
    return text if text.startswith(f"{name}:") else f"{name}: {text}"


class SettingsError(DawningError, ValueError):
    """A setting has a value that cannot be used; names the key, value and source."""

    def __init__(self, key: str, value: object, reason: str, *, source: str = "") -> None:
        self.key = key
        self.value = value
        self.reason = reason
        self.source = source
        origin = f" (from {source})" if source else ""
        super().__init__(f"{key}={value!r}{origin}: {reason}")


class MessageDecodeError(DawningError, ValueError):
    """Bytes from the wire that are not a valid message; keeps the raw bytes.

    ``raw`` is exactly what was received, so the message can be dead-lettered
    or inspected without loss; ``reason`` says what was wrong with it.
    """

    def __init__(self, raw: bytes | None, reason: str, *, topic: str | None = None) -> None:
        self.raw = raw
        self.reason = reason
        self.topic = topic
        where = f" on {topic}" if topic else ""
        super().__init__(f"undecodable message{where}: {reason}")


class MessageEncodeError(DawningError, ValueError):
    """A message whose fields the wire format cannot carry, or that its receiver
    would refuse (a GUID field holding ``"not-a-guid"``): refused when sent,
    not dead-lettered later."""


class UsageError(DawningError, RuntimeError):
    """The API used where it cannot work (a blocking publish on a running event
    loop): a mistake in the calling code, which no retry cures. A handler that
    raises it is dead-lettered at once."""


class PublishError(DawningError):
    """A message could not be handed to Kafka or was not acknowledged."""


class KafkaUnavailable(DawningError):
    """Kafka did not answer a read of its topics (a web view's, a command's)."""
