"""Dead-letter tooling: list dead letters with their failure, and replay them.

Dead-letter topics are created with ``retention.ms=-1`` and are only ever read
here, never consumed by a group, so nothing leaves them silently. A replay
republishes the exact bytes (so the same ``MessageId``) and the original
headers to the original topic, with ``dawning-replayed-from`` naming the dead
letter it came from; the dead letter itself stays where it is.

From the command line::

    faust -A dawning_streams.app dlq-list [--topic T] [--key K] [--since ISO] [--until ISO]
                                          [--exception TYPE]
    faust -A dawning_streams.app dlq-replay (--all | --key K | --since ISO | ...)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from dawning_streams.core.errors import DawningError
from dawning_streams.core.names import Header, dead_letter_topic, header_text, replay_target
from dawning_streams.handlers.delivery import message_id_of
from dawning_streams.kafka.reading import existing_topics, read_to_end

if TYPE_CHECKING:
    from dawning_streams.ops.host import OpsHost

__all__ = ["DeadLetter", "read_dead_letters", "replay", "select"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in a dead-letter topic, with the failure its headers record."""

    topic: str
    partition: int
    offset: int
    dead_lettered_at: datetime
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> str | None:
        """A header's text, or None."""
        return header_text(self.headers, name)

    @property
    def original_topic(self) -> str:
        return self.header(Header.ORIGINAL_TOPIC) or self.topic.removesuffix(".dlq")

    @property
    def exception_type(self) -> str:
        return self.header(Header.EXCEPTION_TYPE) or ""

    def summary(self) -> dict[str, str | int | None]:
        """The fields an operator reads first."""
        return {
            "dlq": f"{self.topic}/{self.partition}/{self.offset}",
            # What /messages?id= and the search look for.
            "message_id": message_id_of(self.value),
            # As the failure times in the headers are written: UTC, ending in Z.
            "dead_lettered_at": self.dead_lettered_at.isoformat().replace("+00:00", "Z"),
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "handler": self.header(Header.HANDLER),
            "group": self.header(Header.GROUP),
            "attempts": _count(self.header(Header.ATTEMPT)),
            "origin": "/".join(
                str(self.header(h))
                for h in (Header.ORIGINAL_TOPIC, Header.ORIGINAL_PARTITION, Header.ORIGINAL_OFFSET)
            ),
            "exception": f"{self.exception_type}: {self.header(Header.EXCEPTION_MESSAGE)}",
            "first_failed_at": self.header(Header.FIRST_FAILED_AT),
            "last_failed_at": self.header(Header.LAST_FAILED_AT),
        }


def _count(text: str | None) -> int | str | None:
    """A count header as a number (as written by the router), else as it came."""
    return int(text) if text is not None and text.isdigit() else text


def dead_letter_topics(app: OpsHost) -> list[str]:
    """The dead-letter topics of the app's handlers, and of the seven message topics."""
    declared = {h.dead_letter_topic for h in app.handlers.values() if h.options.dead_letter}
    seven = {dead_letter_topic(t) for t in app.dawning_settings.kafka.topics.all()}
    return sorted(declared | seven)


async def read_dead_letters(app: OpsHost, topics: Iterable[str] | None = None) -> list[DeadLetter]:
    """Everything in the dead-letter topics of ``topics`` (source or ``.dlq`` names;
    default: :func:`dead_letter_topics`). A topic named that does not exist is
    an error.

    Reads from the start to the end offsets at the time of the call, without a
    consumer group, so it neither moves nor commits anything.
    """
    settings = app.dawning_settings.kafka
    if topics is None:
        names = dead_letter_topics(app)
    else:
        names = [t if t.endswith(".dlq") else dead_letter_topic(t) for t in topics]
        missing = set(names) - await existing_topics(settings, names)
        if missing:
            raise DawningError(f"no such dead-letter topic: {', '.join(sorted(missing))}")
    letters = [_letter(record) for record in await read_to_end(settings, names)]
    return sorted(letters, key=lambda letter: (letter.dead_lettered_at, letter.offset))


def _letter(record: object) -> DeadLetter:
    return DeadLetter(
        topic=record.topic,  # type: ignore[attr-defined]
        partition=record.partition,  # type: ignore[attr-defined]
        offset=record.offset,  # type: ignore[attr-defined]
        dead_lettered_at=datetime.fromtimestamp(record.timestamp / 1000, UTC),  # type: ignore[attr-defined]
        key=record.key,  # type: ignore[attr-defined]
        value=record.value,  # type: ignore[attr-defined]
        headers=tuple((k, bytes(v)) for k, v in record.headers),  # type: ignore[attr-defined]
    )


def select(
    letters: Iterable[DeadLetter],
    *,
    key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    exception: str | None = None,
) -> list[DeadLetter]:
    """The dead letters that match every filter given.

    ``since``/``until`` bound the time a message was dead-lettered;
    ``exception`` matches the exception's full or short class name.
    """
    chosen = []
    for letter in letters:
        if key is not None and letter.key != key.encode():
            continue
        if since is not None and letter.dead_lettered_at < since:
            continue
        if until is not None and letter.dead_lettered_at > until:
            continue
        if exception is not None and exception not in (
            letter.exception_type,
            letter.exception_type.rsplit(".", 1)[-1],
        ):
            continue
        chosen.append(letter)
    return chosen


async def replay(app: OpsHost, letters: Iterable[DeadLetter]) -> int:
    """Republish ``letters`` to their original topics, in order; returns how many."""
    count = 0
    for letter in letters:
        headers = [(k, v) for k, v in letter.headers if not k.startswith(Header.PREFIX)]
        headers.append(
            (Header.REPLAYED_FROM, f"{letter.topic}/{letter.partition}/{letter.offset}".encode())
        )
        group, handler = letter.header(Header.GROUP), letter.header(Header.HANDLER)
        if group is not None and handler is not None:
            # Only the handler that failed runs it again, not the others on its topic.
            headers.append((Header.REPLAY_FOR, replay_target(group, handler)))
        await app.bus.forward(letter.original_topic, letter.key, letter.value, headers=headers)
        count += 1
    return count
