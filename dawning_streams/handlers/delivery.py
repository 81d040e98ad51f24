"""One Kafka record as a handler attempt sees it, and :func:`current_delivery`.

A :class:`Delivery` is the record a handler is given: read from the handler's
topic, or kept in its timer table (a countdown, a retry, a message parked
behind a retry). :func:`current_delivery` tells a running handler which
delivery it is on, as Celery's ``self.request`` does.
"""

from __future__ import annotations

import base64
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from faust.streams import current_event

from dawning_streams.core.names import Header, header_text

__all__ = ["CurrentDelivery", "Delivery", "current_delivery", "message_id_of"]


def message_id_of(value: bytes | None) -> str | None:
    """The ``MessageId`` of a JSON message (any case of the name), lower case, or None."""
    if value is None or not value.startswith(b"{"):
        return None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    for name, field_value in data.items():
        if name.lower() == "messageid" and isinstance(field_value, str):
            return field_value.lower()
    return None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One Kafka record as a handler attempt sees it, from a topic or the timer table."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

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

    def header_int(self, name: str) -> int | None:
        """A header holding a number, or None when it is missing or not one."""
        text = self.header(name)
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None

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

    @property
    def message_id(self) -> str | None:
        """The message's ``MessageId`` (any case), or None for bytes that carry none."""
        return message_id_of(self.value)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form, for the timer table."""
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


@dataclass(frozen=True, slots=True)
class CurrentDelivery:
    """What :func:`current_delivery` tells a running handler."""

    #: The handler's name.
    handler: str
    #: 0 for the first attempt, n for the n-th retry.
    attempt: int
    #: The message's ``MessageId`` (lower case), or None for bytes without one.
    message_id: str | None
    #: Where the message was first read: its topic, partition and offset.
    topic: str
    partition: int
    offset: int
    key: bytes | None
    #: When the first attempt failed (None on a first attempt).
    first_failed_at: datetime | None


_current: ContextVar[tuple[str, Delivery, int] | None] = ContextVar(
    "dawning_delivery", default=None
)


def current_delivery() -> CurrentDelivery:
    """The delivery the running handler is working on.

    Right for a first attempt, a retry, a fired countdown and a message
    released from behind a retry alike. Raises ``RuntimeError`` outside a handler.
    """
    state = _current.get()
    if state is None:
        # The common first attempt of a fetched record sets nothing per message:
        # the lane names the record as Faust's current event.
        event = current_event()
        record = getattr(event, "message", None)
        handler = getattr(event, "handler", None)
        if record is None or handler is None:
            raise RuntimeError("current_delivery() is only known inside a handler")
        state = (handler, Delivery.of_record(record), 0)
    handler, delivery, attempt = state
    topic, partition, offset = delivery.origin
    first = delivery.header(Header.FIRST_FAILED_AT)
    return CurrentDelivery(
        handler=handler,
        attempt=attempt,
        message_id=delivery.message_id,
        topic=topic,
        partition=partition,
        offset=offset,
        key=delivery.key,
        first_failed_at=datetime.fromisoformat(first.replace("Z", "+00:00")) if first else None,
    )


def delivering(handler: str, delivery: Delivery, attempt: int) -> Any:
    """Name ``delivery`` as the current one; returns the token for :func:`delivered`."""
    return _current.set((handler, delivery, attempt))


def delivered(token: Any) -> None:
    _current.reset(token)


def _header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data is not None else None


def _unb64(text: str | None) -> bytes | None:
    return base64.b64decode(text) if text is not None else None
