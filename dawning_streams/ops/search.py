"""Where is my message? Find a message by its ``MessageId``, or a key's messages, and say
what became of each.

Nothing new is recorded for this: the answer comes from what the framework
keeps anyway.

- **The handlers' topics**, read for the time range asked (the last hour by
  default): each handler's source topic and its timers topic
  (``apply_async`` with a countdown). A record below the group's committed
  offset has been handled (or its failure routed); one at or above it has not
  been committed yet: it waits its turn, is being handled, or was handled
  since the group's last commit.
- **The timer tables**: a message with a pending timer waits for a retry or
  its countdown, with the time it is due and the last error.
- **Revocations**: a ``revoke()`` record on a timers topic before the
  message's due time means it was revoked and does not run.
- **The dead-letter topics**, read whole (they are kept forever and hold few
  records): a dead letter says when and why.

A search reads every record of those topics in its range, at most
:data:`SCAN_LIMIT`; a page says how many it read and whether it stopped early.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dawning_streams.core.names import Header, header_text
from dawning_streams.handlers.delivery import message_id_of
from dawning_streams.handlers.timers import pending_timers
from dawning_streams.kafka.reading import scan

if TYPE_CHECKING:
    from dawning_streams.ops.host import OpsHost
    from dawning_streams.ops.sampler import Snapshot

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_WINDOW",
    "SCAN_LIMIT",
    "Found",
    "Search",
    "Sighting",
    "as_json",
    "find",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: How far back a search looks when it is given no ``since``.
DEFAULT_WINDOW = timedelta(hours=1)
#: The longest range one search may read.
MAX_WINDOW = timedelta(days=7)
#: The most records one search reads, over every topic it looks at.
SCAN_LIMIT = 500_000


@dataclass(frozen=True, slots=True)
class Sighting:
    """One place a message was seen: a record of a topic, or a pending timer."""

    stage: str
    handler: str | None
    at: datetime | None
    where: str
    detail: str


@dataclass(slots=True)
class Found:
    """One message and what became of it: ``state`` is where it is now."""

    message_id: str
    key: str | None = None
    state: str = "not seen"
    detail: str = ""
    sightings: list[Sighting] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Search:
    """What was asked, what was read, and every message found."""

    message_id: uuid.UUID | None
    key: str | None
    since: datetime
    until: datetime
    scanned: int
    truncated: bool
    found: list[Found]


async def find(
    app: OpsHost,
    snapshot: Snapshot,
    *,
    message_id: uuid.UUID | None = None,
    key: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Search:
    """The message ``message_id``, or every message of ``key``, in the range given.

    ``snapshot`` gives the group's committed offsets (a fresh one, read for the search).
    """
    if (message_id is None) == (key is None):
        raise ValueError("give a message id or a key, not both")
    until = until or datetime.now(UTC)
    # Kafka finds no offset for a time before the epoch.
    since = since or max(until - DEFAULT_WINDOW, _EPOCH)
    if since >= until:
        raise ValueError(f"since ({since.isoformat()}) must be before until ({until.isoformat()})")
    if until - since > MAX_WINDOW:
        raise ValueError(
            f"since ({since.isoformat()}) and until ({until.isoformat()}) may be at most "
            f"{MAX_WINDOW.days} days apart"
        )
    handlers = list(app.handlers.values())
    window = (int(since.timestamp() * 1000), int(until.timestamp() * 1000) + 1)
    stage_of: dict[str, tuple[str, str | None]] = {}
    for handler in handlers:
        on_topic = sorted(h.name for h in handlers if h.topic == handler.topic)
        stage_of[handler.topic] = ("received", ", ".join(on_topic))
        stage_of[handler.timers_topic] = ("scheduled", handler.name)
        if handler.options.dead_letter:
            stage_of[handler.dead_letter_topic] = ("dead-lettered", None)
    ranges: dict[str, tuple[int | None, int | None]] = {
        topic: (None, None) if stage == "dead-lettered" else window
        for topic, (stage, _) in stage_of.items()
    }
    needles = (str(message_id).encode(), str(message_id).upper().encode())
    wanted_key = key.encode() if key is not None else None

    def keep(record: Any) -> bool:
        if _revoked_id(record) is not None:
            return True  # a revoke() on a timers topic, matched to what it names below
        if wanted_key is not None:
            return bool(record.key == wanted_key)
        value = record.value or b""
        return needles[0] in value or needles[1] in value

    result = await scan(app.dawning_settings.kafka, ranges, keep, limit=SCAN_LIMIT)
    committed = {(p.topic, p.partition): p.committed for p in snapshot.partitions}
    by_id: dict[str, Found] = {}
    #: timer id -> the first revoke() record for it (one goes to every partition).
    revocations: dict[str, Any] = {}
    #: message id -> when its countdown, eta or retry was due.
    due_ms: dict[str, int] = {}
    for record in result.records:
        revoked = _revoked_id(record)
        if revoked is not None:
            first = revocations.get(revoked)
            if first is None or record.timestamp < first.timestamp:
                revocations[revoked] = record
            continue
        found_id = (
            message_id_of(record.value) or f"{record.topic}/{record.partition}/{record.offset}"
        )
        if message_id is not None and found_id != str(message_id):
            continue
        entry = by_id.setdefault(found_id, Found(found_id, _text(record.key)))
        stage, name = stage_of[record.topic]
        entry.sightings.append(
            _sighting(record, stage, name, committed.get((record.topic, record.partition)))
        )
        if stage == "scheduled":
            due = header_text(_headers(record), Header.DUE_MS)
            if due is not None and due.isdigit():
                due_ms[found_id] = int(due)
    for timer_id, revocation in revocations.items():
        revoked_entry = by_id.get(timer_id)
        due_at = due_ms.get(timer_id)
        # A revoke() after the due time found nothing pending: it ran.
        if revoked_entry is not None and due_at is not None and revocation.timestamp < due_at:
            revoked_entry.sightings.append(
                Sighting(
                    "revoked",
                    stage_of[revocation.topic][1],
                    datetime.fromtimestamp(revocation.timestamp / 1000, UTC),
                    f"{revocation.topic}/{revocation.partition}/{revocation.offset}",
                    f"revoke() before it was due ({_time(due_at)}): it does not run",
                )
            )
    if message_id is not None:
        by_id.setdefault(str(message_id), Found(str(message_id)))
    await _add_timers(app, by_id)
    for entry in by_id.values():
        entry.sightings.sort(key=lambda s: s.at or datetime.max.replace(tzinfo=UTC))
        entry.state, entry.detail = _state(entry.sightings)
    return Search(
        message_id=message_id,
        key=key,
        since=since,
        until=until,
        scanned=result.scanned,
        truncated=result.truncated,
        found=sorted(by_id.values(), key=_first_seen),
    )


def as_json(search: Search) -> dict[str, Any]:
    """``search`` as plain data."""
    return {
        "message_id": str(search.message_id) if search.message_id else None,
        "key": search.key,
        "since": search.since.isoformat(),
        "until": search.until.isoformat(),
        "scanned": search.scanned,
        "truncated": search.truncated,
        "found": [
            {
                "message_id": f.message_id,
                "key": f.key,
                "state": f.state,
                "detail": f.detail,
                "sightings": [
                    {
                        "stage": s.stage,
                        "handler": s.handler,
                        "at": s.at.isoformat() if s.at else None,
                        "where": s.where,
                        "detail": s.detail,
                    }
                    for s in f.sightings
                ],
            }
            for f in search.found
        ],
    }


def _first_seen(entry: Found) -> datetime:
    times = [s.at for s in entry.sightings if s.at is not None]
    return min(times) if times else datetime.max.replace(tzinfo=UTC)


def _headers(record: Any) -> list[tuple[str, bytes]]:
    return [(k, bytes(v)) for k, v in record.headers or ()]


def _revoked_id(record: Any) -> str | None:
    """The timer id a ``revoke()`` record names; None for any other record."""
    if record.value is not None:
        return None
    for name, value in record.headers or ():
        if name == Header.REVOKE:
            return bytes(value).decode("ascii", "replace")
    return None


def _sighting(record: Any, stage: str, handler: str | None, committed: int | None) -> Sighting:
    at = datetime.fromtimestamp(record.timestamp / 1000, UTC)
    where = f"{record.topic}/{record.partition}/{record.offset}"
    headers = _headers(record)
    if stage == "dead-lettered":
        detail = (
            f"{header_text(headers, Header.EXCEPTION_TYPE)}: "
            f"{header_text(headers, Header.EXCEPTION_MESSAGE)}"
            f" (handler {header_text(headers, Header.HANDLER)},"
            f" after {header_text(headers, Header.ATTEMPT)} attempt(s))"
        )
        return Sighting(stage, header_text(headers, Header.HANDLER), at, where, detail)
    done = committed is not None and record.offset < committed
    if stage == "scheduled":
        due = header_text(headers, Header.DUE_MS)
        due_at = _time(int(due)) if due and due.isdigit() else "now"
        state = "taken into the timer table" if done else "on its way to the timer table"
        return Sighting(stage, handler, at, where, f"due {due_at}; {state}")
    if done:
        return Sighting("consumed", handler, at, where, "the group has committed past it")
    # Being handled, waiting its turn, or handled since the group's last commit.
    before = record.offset - committed if committed is not None else record.offset
    return Sighting(
        "received",
        handler,
        at,
        where,
        f"the group has not committed past it yet ({before} uncommitted record(s) before it)",
    )


async def _add_timers(app: OpsHost, by_id: dict[str, Found]) -> None:
    """Each message's pending timers, from this worker's tables where it owns the
    partition, else from the timer tables' changelogs."""
    missing: list[tuple[Found, str]] = []
    for entry in by_id.values():
        for handler in app.handlers.values():
            timer = handler.timers.pending(entry.message_id)
            if timer is not None:
                entry.sightings.append(
                    _waiting(handler.name, timer.due_ms, timer.attempt, timer.error)
                )
            elif not _owns_all(handler):
                missing.append((entry, handler.name))
    if not missing:
        return
    report = await pending_timers(app, sorted({name for _, name in missing}))
    for entry, name in missing:
        timer = report[name]["timers"].get(entry.message_id)
        if timer is not None:
            entry.sightings.append(_waiting(name, timer["due_ms"], timer["attempt"], None))


def _owns_all(handler: Any) -> bool:
    return all(handler.timers.owns(p) for p in range(handler.app.dawning_settings.kafka.partitions))


def _waiting(handler: str, due_ms: int, attempt: int, error: str | None) -> Sighting:
    what = f"retry {attempt}" if attempt else "its countdown"
    detail = f"waiting for {what}, due {_time(due_ms)}"
    if error:
        detail += f"; last error {error}"
    return Sighting("waiting", handler, None, f"{handler} timers", detail)


def _state(sightings: list[Sighting]) -> tuple[str, str]:
    """Where the message is now: a pending timer wins, then the latest record."""
    for sighting in sightings:
        if sighting.stage == "waiting":
            return "waiting", sighting.detail
    recorded = [s for s in sightings if s.at is not None]
    if not recorded:
        return "not seen", "in no topic or timer table the search read"
    last = recorded[-1]
    if last.stage == "consumed":
        return "handled", f"at {last.where}, received {last.at:%Y-%m-%d %H:%M:%S} UTC"
    if last.stage == "scheduled" and last.detail.endswith("taken into the timer table"):
        return "handled", "its timer has fired and is gone"
    return last.stage, last.detail


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", "replace") if value is not None else None
