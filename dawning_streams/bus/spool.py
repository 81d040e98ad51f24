"""A durable spool for what the broker cannot take right now.

When :meth:`~dawning_streams.bus.message_bus.KafkaMessageBus.publish` cannot reach Kafka,
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

One process per file. Two processes draining one file would each send its
records (twice over) and miscount it, so a spool holds an exclusive lock on
its file (``flock`` on ``<file>.lock``, released by the kernel when the
process dies). A process that finds ``<name>.sqlite3`` taken uses the first
free of ``<name>.1.sqlite3``, ``<name>.2.sqlite3``, ... and says so. A process
started later with the same settings takes the lowest free file, so what a
dead process left is delivered by the next one to take its file, and a
process that opens its spool also takes in the records of every sibling file
no live process holds.

One cluster per file: the default file is named after the instance and a hash
of the bootstrap servers (:meth:`Spool.of`), so records spooled for one cluster
are never delivered to another. An empty spool removes its file on close. A
worker's spool also takes in, now and then, the files other processes of this
machine left for its cluster (:meth:`Spool.adopt_strays`).

The module passes 400 lines to keep every rule of the file's life (locks,
slots, orphans, the older unnamed file) in one reading.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import orjson

from dawning_streams.core.errors import PublishError
from dawning_streams.core.settings import Settings

__all__ = ["Spool", "SpoolBusyError", "SpoolFullError", "SpooledRecord"]

logger = logging.getLogger(__name__)

#: How many files a spool path may grow into, one per process using it at once.
MAX_SLOTS = 64

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


class SpoolBusyError(PublishError):
    """Every file the spool could use is held by another process."""


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

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        *,
        unnamed: Path | None = None,
        cluster: str | None = None,
    ) -> None:
        #: The file asked for; :attr:`path` is the one this process holds.
        self.wanted = path
        self.path = path
        self.max_bytes = max_bytes
        #: Where a spool of an older version, for an unknown cluster, may wait.
        self.unnamed = unnamed
        #: The cluster's tag in the default file names, by which the spools other
        #: processes left for it are found (None: a path set in the settings).
        self.cluster = cluster
        self._lock_fd: int | None = None
        #: Records waiting, and their size in bytes.
        self.count = 0
        self.size_bytes = 0
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    @classmethod
    def of(cls, settings: Settings) -> Spool:
        """The spool of ``settings``'s instance for its cluster (``Kafka:Spool:*``)."""
        spool = settings.kafka.spool
        servers = settings.kafka.bootstrap_servers
        return cls(
            spool.file(settings.instance_name, servers),
            spool.max_bytes,
            unnamed=spool.unnamed_file(settings.instance_name),
            cluster=None if spool.path is not None else spool.cluster_tag(servers),
        )

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
        self.wanted.parent.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self.path, self._lock_fd = _take_free_slot(self.wanted)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._adopt_orphans(db)
        self._note_unnamed()
        return db

    def _note_unnamed(self) -> None:
        """Name what an older version's spool (named without its cluster) holds:
        it is not delivered here, since it may be for another cluster."""
        if self.unnamed is None or not self.unnamed.exists():
            return
        try:
            with closing(sqlite3.connect(f"{self.unnamed.as_uri()}?mode=ro", uri=True)) as old:
                (waiting,) = old.execute("SELECT count(*) FROM spool").fetchone()
        except sqlite3.Error:
            return
        if waiting:
            logger.warning(
                "%d messages wait in %s, a spool from before spool files named their "
                "cluster; they are not delivered from here: to deliver them, run one "
                "process for their cluster with Kafka:Spool:Path=%s",
                waiting,
                self.unnamed,
                self.unnamed,
            )

    def _adopt_orphans(self, db: sqlite3.Connection) -> None:
        """Move into this file the records of sibling files no process holds."""
        self._adopt(db, (_slot(self.wanted, n) for n in range(MAX_SLOTS)))

    def _adopt(self, db: sqlite3.Connection, candidates: Iterable[Path]) -> tuple[int, int]:
        """Move into this file the records of each of ``candidates`` no process
        holds, and remove it; (records, bytes) moved."""
        records = size = 0
        for orphan in candidates:
            if orphan == self.path or not orphan.exists():
                continue
            fd = os.open(f"{orphan}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process holds it
                db.execute("ATTACH DATABASE ? AS orphan", (str(orphan),))
                try:
                    db.executescript(_SCHEMA.replace("IF NOT EXISTS ", "IF NOT EXISTS orphan."))
                    with _transaction(db):
                        (bytes_moved,) = db.execute(
                            "SELECT coalesce(sum(size), 0) FROM orphan.spool"
                        ).fetchone()
                        moved = db.execute(
                            "INSERT INTO spool (topic, key, value, headers, timestamp_ms, size)"
                            " SELECT topic, key, value, headers, timestamp_ms, size"
                            " FROM orphan.spool ORDER BY seq"
                        ).rowcount
                        db.execute(
                            "INSERT INTO rejected"
                            " (topic, key, value, headers, timestamp_ms, size, reason)"
                            " SELECT topic, key, value, headers, timestamp_ms, size, reason"
                            " FROM orphan.rejected ORDER BY seq"
                        )
                finally:
                    db.execute("DETACH DATABASE orphan")
                for leftover in (orphan, Path(f"{orphan}-wal"), Path(f"{orphan}-shm")):
                    leftover.unlink(missing_ok=True)
                if moved:
                    records, size = records + moved, size + bytes_moved
                    logger.warning(
                        "took %d records left in %s by a process that has gone; "
                        "they are delivered from %s",
                        moved,
                        orphan,
                        self.path,
                    )
            finally:
                os.close(fd)
        return records, size

    async def adopt_strays(self) -> int:
        """Take in what other processes left in their spools for this cluster, in
        this folder, and no live process holds (a script that ended while Kafka
        was down, say): it is delivered from here. Returns the records taken."""
        cluster = self.cluster
        if cluster is None:
            return 0
        folder = self.wanted.parent
        strays = sorted(
            {*folder.glob(f"*-{cluster}.sqlite3"), *folder.glob(f"*-{cluster}.*.sqlite3")}
        )
        if not [stray for stray in strays if stray != self.path]:
            return 0
        records, size = await self._run(lambda db: self._adopt(db, strays))
        self.count += records
        self.size_bytes += size
        return records

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
    ) -> int:
        """Store one record durably and return its ``seq``, or raise :class:`SpoolFullError`."""
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
            cursor = await self._run(
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
        return cursor.lastrowid  # type: ignore[return-value]  # set by an INSERT

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
            (left,) = db.execute(
                "SELECT (SELECT count(*) FROM spool) + (SELECT count(*) FROM rejected)"
            ).fetchone()
            db.close()
            self._db = None
            if not left:
                # Still under this process's lock, so nobody else has it open:
                # an empty spool leaves no file behind (its lock file stays).
                for file in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                    file.unlink(missing_ok=True)

        if self._db is not None:
            await self._run(close)
        self._thread.shutdown(wait=True)
        self._thread = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


def _slot(path: Path, n: int) -> Path:
    return path if n == 0 else path.with_name(f"{path.stem}.{n}{path.suffix}")


def _take_free_slot(path: Path) -> tuple[Path, int]:
    """Lock the first spool file of ``path`` no other process holds."""
    for n in range(MAX_SLOTS):
        candidate = _slot(path, n)
        fd = os.open(f"{candidate}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if n:
            logger.info(
                "the spool %s is in use by another process; this one uses %s", path, candidate
            )
        return candidate, fd
    raise SpoolBusyError(
        f"the spool {path} and its {MAX_SLOTS - 1} siblings are all in use by other processes; "
        "give each group of processes its own Kafka:Spool:Path"
    )
