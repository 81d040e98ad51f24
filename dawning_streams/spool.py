"""A durable spool for what the broker cannot take right now.

When :meth:`~dawning_streams.bus.KafkaMessageBus.publish` cannot reach Kafka,
the record it was about to send is appended here instead: one SQLite file,
written through (``synchronous=FULL``) before ``publish`` returns, so neither a
broker outage nor a crash of this process loses it. Records leave the spool
oldest first, and only after the broker has acknowledged them, so delivery is
at least once and each key's records keep their order.

A record the broker refuses for good (too large, say) would block the spool's
head forever; it is moved to the ``rejected`` table, logged, and kept there for
an operator, never dropped.

The spool's size is bounded (``Kafka:Spool:MaxBytes``). When a record does not
fit, :class:`SpoolFullError` is raised to the publisher: loud, never silent.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import orjson

from .errors import PublishError

__all__ = ["Spool", "SpoolFullError", "SpooledRecord"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB,
    headers BLOB NOT NULL,
    timestamp_ms INTEGER,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    key BLOB,
    value BLOB,
    headers BLOB NOT NULL,
    timestamp_ms INTEGER,
    size INTEGER NOT NULL,
    reason TEXT NOT NULL
);
"""


class SpoolFullError(PublishError):
    """The broker is unreachable and the spool has no room left for the message."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One record waiting for the broker, exactly as it will be sent."""

    seq: int
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None

    @property
    def size(self) -> int:
        """Bytes counted against ``Kafka:Spool:MaxBytes``."""
        return _size(self.key, self.value, self.headers)


def _size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    return len(key or b"") + len(value or b"") + sum(len(n) + len(v) for n, v in headers)


def _encode_headers(headers: list[tuple[str, bytes]]) -> bytes:
    return orjson.dumps([[name, base64.b64encode(value).decode()] for name, value in headers])


def _decode_headers(blob: bytes) -> list[tuple[str, bytes]]:
    return [(name, base64.b64decode(value)) for name, value in orjson.loads(blob)]


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Spool:
    """A bounded, durable FIFO of records, in one SQLite file.

    Every database call runs on one thread of its own, in call order, so the
    event loop never waits on the disk. ``count`` and ``size_bytes`` are kept
    on the event loop's side: a record counts from the moment ``append`` is
    called until ``remove`` or ``reject`` has taken it out.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        #: Records waiting, and their size in bytes.
        self.count = 0
        self.size_bytes = 0
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="dawning-spool")
        # Shielded: once handed to the thread the work happens, so the counts
        # below (kept on the event loop's side) must follow it even if the
        # caller is cancelled meanwhile.
        done = asyncio.get_running_loop().run_in_executor(self._thread, self._call, work)
        return await asyncio.shield(done)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            self._db = self._open()
        return work(self._db)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    async def open(self) -> None:
        """Open the file (creating it) and count what an earlier run left in it."""
        self.count, self.size_bytes = await self._run(
            lambda db: db.execute("SELECT count(*), coalesce(sum(size), 0) FROM spool").fetchone()
        )

    async def append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        timestamp_ms: int | None,
    ) -> None:
        """Store one record durably, or raise :class:`SpoolFullError`."""
        size = _size(key, value, headers)
        if self.size_bytes + size > self.max_bytes:
            raise SpoolFullError(
                f"the spool {self.path} is full ({self.size_bytes} of {self.max_bytes} bytes, "
                f"{self.count} records) and Kafka is unreachable: a {size}-byte record "
                f"for {topic} was not accepted (Kafka:Spool:MaxBytes)"
            )
        # Counted before the write, so the drainer never sees an empty spool
        # while a record is on its way into it.
        self.count += 1
        self.size_bytes += size
        row = (topic, key, value, _encode_headers(headers), timestamp_ms, size)
        try:
            await self._run(
                lambda db: db.execute(
                    "INSERT INTO spool (topic, key, value, headers, timestamp_ms, size)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
            )
        except sqlite3.Error:
            self.count -= 1
            self.size_bytes -= size
            raise

    async def oldest(self, limit: int) -> list[SpooledRecord]:
        """Up to ``limit`` records, oldest first."""

        def select(db: sqlite3.Connection) -> list[SpooledRecord]:
            rows = db.execute(
                "SELECT seq, topic, key, value, headers, timestamp_ms FROM spool"
                " ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                SpooledRecord(seq, topic, key, value, _decode_headers(headers), timestamp_ms)
                for seq, topic, key, value, headers, timestamp_ms in rows
            ]

        return await self._run(select)

    async def remove(self, records: list[SpooledRecord]) -> None:
        """Forget ``records``: the broker has acknowledged them."""

        def delete(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany("DELETE FROM spool WHERE seq = ?", [(r.seq,) for r in records])

        await self._run(delete)
        self.count -= len(records)
        self.size_bytes -= sum(r.size for r in records)

    async def reject(self, record: SpooledRecord, reason: str) -> None:
        """Set ``record`` aside for good, with the broker's reason."""

        def move(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT OR REPLACE INTO rejected"
                    " SELECT seq, topic, key, value, headers, timestamp_ms, size, ?"
                    " FROM spool WHERE seq = ?",
                    (reason, record.seq),
                )
                db.execute("DELETE FROM spool WHERE seq = ?", (record.seq,))

        await self._run(move)
        self.count -= 1
        self.size_bytes -= record.size

    async def rejected(self) -> list[tuple[SpooledRecord, str]]:
        """Every record the broker refused, with its reason."""

        def select(db: sqlite3.Connection) -> list[tuple[SpooledRecord, str]]:
            rows = db.execute(
                "SELECT seq, topic, key, value, headers, timestamp_ms, reason FROM rejected"
                " ORDER BY seq"
            ).fetchall()
            return [
                (SpooledRecord(seq, topic, key, value, _decode_headers(headers), ts), reason)
                for seq, topic, key, value, headers, ts, reason in rows
            ]

        return await self._run(select)

    async def close(self) -> None:
        """Close the file; the spool reopens on next use."""
        if self._thread is None:
            return

        def close(db: sqlite3.Connection) -> None:
            db.close()
            self._db = None

        if self._db is not None:
            await self._run(close)
        self._thread.shutdown(wait=True)
        self._thread = None
