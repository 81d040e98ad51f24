"""The SQL store behind the audit-log agent: SQLite by default, PostgreSQL or
MySQL/MariaDB by URL.

Entries are written in batches and exactly once: the message id is the primary
key and a repeat is ignored (``ON CONFLICT DO NOTHING``; on MySQL ``ON
DUPLICATE KEY UPDATE`` with nothing changed), so redelivery, which
at-least-once delivery allows, never stores an entry twice.

``Audit:StoreUrl`` picks the store: ``sqlite:///dawning-audit.db`` (relative
path) or ``sqlite:////var/lib/dawning/audit.db`` (absolute),
``postgresql://user:password@host:5432/db``, or
``mysql://user:password@host:3306/db`` (MySQL or MariaDB; the tests run
MariaDB 10.11).

MySQL is reached through asyncmy rather than aiomysql: asyncmy ships compiled
wheels for CPython 3.10 to 3.14, has recent releases (0.2.13 to 0.2.18 in
2026) and stands alone, while aiomysql 0.3 is a layer over PyMySQL's
internals that already broke with PyMySQL 1.2 (escaping bytes raises).

The three stores are small classes with the same methods and their own SQL,
side by side: the module runs past 400 lines, because the dialects are easier
to compare in one place than across three files.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncmy
import asyncmy.errors
import asyncpg
from mode import Service

from dawning_streams.core.errors import DawningError, described
from dawning_streams.core.records import AuditLogMessage
from dawning_streams.core.settings import mask_url
from dawning_streams.kafka.outages import Dependency

__all__ = ["AuditQuery", "AuditStore", "AuditStoreError", "open_audit_store"]

COLUMNS = (
    "message_id", "occurred_at", "user_id", "user_name", "action", "entity_type", "entity_id",
    "description", "old_value", "new_value", "ip_address", "user_agent", "correlation_id",
    "source_instance", "tenant_id",
)  # fmt: skip

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    message_id {uuid} PRIMARY KEY,
    occurred_at {time} NOT NULL,
    user_id {uuid} NOT NULL,
    user_name TEXT,
    action TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT,
    description TEXT,
    old_value TEXT,
    new_value TEXT,
    ip_address TEXT,
    user_agent TEXT,
    correlation_id TEXT,
    source_instance TEXT,
    tenant_id TEXT
);
CREATE INDEX IF NOT EXISTS audit_log_by_time ON audit_log (occurred_at DESC);
CREATE INDEX IF NOT EXISTS audit_log_by_user ON audit_log (user_id, occurred_at DESC);
CREATE INDEX IF NOT EXISTS audit_log_by_action ON audit_log (action, occurred_at DESC);
"""


class AuditStoreError(DawningError):
    """The audit store could not be reached or refused a write."""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of ``GET /audit``; results come newest first."""

    user_id: uuid.UUID | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


def _row(message: AuditLogMessage) -> tuple[Any, ...]:
    return tuple(
        message.timestamp if column == "occurred_at" else getattr(message, column)
        for column in COLUMNS
    )


class AuditStore(Service):
    """Base of the stores: ``write`` a batch, ``query`` with filters."""

    #: A store on a server: whether it answers (see ``App.watch``).
    reachability: Dependency | None = None

    async def write(self, messages: Sequence[AuditLogMessage]) -> int:
        """Store ``messages``; returns how many were new."""
        raise NotImplementedError

    async def query(self, query: AuditQuery) -> list[dict[str, Any]]:
        """Entries matching ``query``, newest first, as JSON-ready dicts."""
        raise NotImplementedError

    async def delete_older_than(self, cutoff: datetime) -> int:
        """Remove entries that occurred before ``cutoff``; returns how many."""
        raise NotImplementedError


def _where(query: AuditQuery, placeholder: Any) -> tuple[str, list[Any]]:
    clauses, args = [], []
    for column, op, value in (
        ("user_id", "=", query.user_id),
        ("action", "=", query.action),
        ("occurred_at", ">=", query.since),
        ("occurred_at", "<=", query.until),
    ):
        if value is not None:
            args.append(value)
            clauses.append(f"{column} {op} {placeholder(len(args))}")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


class SqliteAuditStore(AuditStore):
    """SQLite in a file; calls run in a thread, one at a time."""

    def __init__(self, path: str, **kwargs: object) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        super().__init__(**kwargs)  # type: ignore[arg-type]

    async def on_start(self) -> None:
        def connect() -> sqlite3.Connection:
            db = sqlite3.connect(self.path, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA.format(uuid="TEXT", time="TEXT"))
            return db

        self._db = await asyncio.to_thread(connect)

    async def on_stop(self) -> None:
        if self._db is not None:
            await asyncio.to_thread(self._db.close)
            self._db = None

    async def _run(self, fn: Any) -> Any:
        if self._db is None:
            raise AuditStoreError("the SQLite audit store is not started")
        async with self._lock:
            try:
                return await asyncio.to_thread(fn, self._db)
            except sqlite3.Error as exc:
                raise AuditStoreError(f"SQLite {self.path}: {exc}") from exc

    async def write(self, messages: Sequence[AuditLogMessage]) -> int:
        rows = [tuple(_plain(v) for v in _row(m)) for m in messages]
        sql = (
            f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES "
            f"({', '.join('?' * len(COLUMNS))}) ON CONFLICT (message_id) DO NOTHING"
        )

        def insert(db: sqlite3.Connection) -> int:
            with db:
                before = db.total_changes
                db.executemany(sql, rows)
                return db.total_changes - before

        return int(await self._run(insert))

    async def query(self, query: AuditQuery) -> list[dict[str, Any]]:
        where, args = _where(query, lambda n: "?")
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM audit_log{where} "
            f"ORDER BY occurred_at DESC, message_id LIMIT ?"
        )
        params = [_plain(a) for a in args] + [query.limit]
        rows = await self._run(lambda db: db.execute(sql, params).fetchall())
        return [dict(zip(COLUMNS, row, strict=True)) for row in rows]

    async def delete_older_than(self, cutoff: datetime) -> int:
        sql = "DELETE FROM audit_log WHERE occurred_at < ?"

        def delete(db: sqlite3.Connection) -> int:
            with db:
                return db.execute(sql, (_plain(cutoff),)).rowcount

        return int(await self._run(delete))


def _plain(value: Any) -> Any:
    # JSON-ready and, for SQLite, fixed-width UTC text that sorts in time order.
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


class PostgresAuditStore(AuditStore):
    """PostgreSQL through an asyncpg pool."""

    def __init__(self, url: str, **kwargs: object) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None
        #: Logged once when the database stops answering and once when it is back.
        self.reachability = self._state = Dependency("PostgreSQL", _address(url))
        super().__init__(**kwargs)  # type: ignore[arg-type]

    async def _call(self, method: str, sql: str, *args: Any) -> Any:
        """``pool.<method>(sql, *args)``, noting the database's reachability."""
        try:
            result = await getattr(self._ready(), method)(sql, *args)
        except _UNREACHABLE as exc:
            self._state.down(exc)
            raise AuditStoreError(f"PostgreSQL audit store: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise AuditStoreError(f"PostgreSQL audit store: {exc}") from exc
        self._state.up()
        return result

    async def on_start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=4)
            async with self._pool.acquire() as db:
                await db.execute(_SCHEMA.format(uuid="UUID", time="TIMESTAMPTZ"))
        except (OSError, asyncpg.PostgresError) as exc:
            raise AuditStoreError(
                f"Audit:StoreUrl={mask_url(self.url)!r}: "
                f"the PostgreSQL audit store cannot start: {exc}"
            ) from exc

    async def on_stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _ready(self) -> asyncpg.Pool:
        if self._pool is None:
            raise AuditStoreError("the PostgreSQL audit store is not started")
        return self._pool

    async def write(self, messages: Sequence[AuditLogMessage]) -> int:
        columns = ", ".join(COLUMNS)
        # One round trip per batch: unnest the columns, skip ids already stored.
        sql = (
            f"INSERT INTO audit_log ({columns}) SELECT * FROM unnest("
            "$1::uuid[], $2::timestamptz[], $3::uuid[], $4::text[], $5::text[], $6::text[], "
            "$7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], "
            "$13::text[], $14::text[], $15::text[]) "
            "ON CONFLICT (message_id) DO NOTHING"
        )
        rows = [_row(m) for m in messages]
        status = await self._call("execute", sql, *[list(c) for c in zip(*rows, strict=True)])
        return int(status.rsplit(" ", 1)[-1])

    async def query(self, query: AuditQuery) -> list[dict[str, Any]]:
        where, args = _where(query, lambda n: f"${n}")
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM audit_log{where} "
            f"ORDER BY occurred_at DESC, message_id LIMIT ${len(args) + 1}"
        )
        rows = await self._call("fetch", sql, *args, query.limit)
        return [{k: _plain(v) for k, v in dict(row).items()} for row in rows]

    async def delete_older_than(self, cutoff: datetime) -> int:
        status = await self._call("execute", "DELETE FROM audit_log WHERE occurred_at < $1", cutoff)
        return int(status.rsplit(" ", 1)[-1])


#: What a database that does not answer raises (a refused query is not an outage).
_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)


def _address(url: str, default_port: int = 5432) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port or default_port
    except ValueError:  # not a number: the store says so when it starts
        port = default_port
    return f"{parts.hostname or 'localhost'}:{port}/{parts.path.lstrip('/')}"


# MySQL has no CREATE INDEX IF NOT EXISTS (MariaDB has), so the indexes come
# with the table. Text compares byte for byte (utf8mb4_bin), as PostgreSQL's
# and SQLite's do: an action filter is case-sensitive on every store. A TEXT
# column is indexed by a prefix, so no action is too long to store.
_MYSQL_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    message_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    occurred_at DATETIME(6) NOT NULL,
    user_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    user_name TEXT,
    action TEXT NOT NULL,
    entity_type TEXT NOT NULL,
    entity_id TEXT,
    description TEXT,
    old_value TEXT,
    new_value TEXT,
    ip_address TEXT,
    user_agent TEXT,
    correlation_id TEXT,
    source_instance TEXT,
    tenant_id TEXT,
    KEY audit_log_by_time (occurred_at),
    KEY audit_log_by_user (user_id, occurred_at),
    KEY audit_log_by_action (action(100), occurred_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin
"""


def _mysql_value(value: Any) -> Any:
    # DATETIME holds no zone: every time is stored and compared in UTC.
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


#: What a MySQL call raises when it fails: its errors, or the connection's
#: (TimeoutError is an OSError; a read cut short is an EOFError).
_MYSQL_FAILURES = (OSError, EOFError, asyncmy.errors.MySQLError)


def _mysql_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the server did not answer (a refused query does not)."""
    if isinstance(exc, OSError | EOFError | asyncmy.errors.InterfaceError):
        return True
    # 2000-2999 are the client's own codes: cannot connect, server gone, connection lost.
    code = exc.args[0] if exc.args else None
    return (
        isinstance(exc, asyncmy.errors.OperationalError)
        and isinstance(code, int)
        and (2000 <= code < 3000)
    )


def _mysql_options(url: str) -> dict[str, Any]:
    """asyncmy's connection options from ``mysql://user:password@host:port/db``."""
    parts = urlsplit(url)
    database = unquote(parts.path.strip("/"))
    if not parts.hostname or not parts.username or not database or "/" in database:
        raise ValueError("must be mysql://user:password@host:3306/db")
    if parts.query or parts.fragment:
        raise ValueError("takes no ?options or #fragment")
    return {
        "host": parts.hostname,
        "port": parts.port or 3306,  # raises ValueError on a port that is not a number
        "user": unquote(parts.username),
        "password": unquote(parts.password or ""),
        "database": database,
    }


class MysqlAuditStore(AuditStore):
    """MySQL or MariaDB through an asyncmy pool."""

    def __init__(self, url: str, **kwargs: object) -> None:
        self.url = url
        self._pool: Any = None
        #: Logged once when the database stops answering and once when it is back.
        self.reachability = self._state = Dependency("MySQL", _address(url, 3306))
        super().__init__(**kwargs)  # type: ignore[arg-type]

    async def on_start(self) -> None:
        # Everything that can go wrong here is the URL's: its shape, the host,
        # the login or the database. Say which setting to fix, password masked.
        try:
            options = _mysql_options(self.url)
            self._pool = await asyncmy.create_pool(
                minsize=1, maxsize=4, autocommit=True, charset="utf8mb4", **options
            )
            async with self._pool.acquire() as db, db.cursor() as cursor:
                # "Table already exists" is a note, which the driver logs as a warning.
                await cursor.execute("SET SESSION sql_notes = 0")
                await cursor.execute(_MYSQL_SCHEMA)
                await cursor.execute("SET SESSION sql_notes = 1")
        except (ValueError, *_MYSQL_FAILURES) as exc:
            await self.on_stop()
            raise AuditStoreError(
                f"Audit:StoreUrl={mask_url(self.url)!r}: the MySQL audit store cannot start: "
                f"{_describe_mysql(exc)}"
            ) from exc

    async def on_stop(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
            await pool.wait_closed()

    async def _call(self, sql: str, args: Sequence[Any] = (), *, many: bool = False) -> Any:
        """Run ``sql`` on a pooled connection, noting the database's reachability;
        returns the rows, or the affected row count when there are none."""
        if self._pool is None:
            raise AuditStoreError("the MySQL audit store is not started")
        try:
            async with self._pool.acquire() as db, db.cursor() as cursor:
                if many:
                    await cursor.executemany(sql, args)
                else:
                    await cursor.execute(sql, args)
                result = await cursor.fetchall() if cursor.description else cursor.rowcount
        except _MYSQL_FAILURES as exc:
            if _mysql_unreachable(exc):
                self._state.down(exc)
            raise AuditStoreError(f"MySQL audit store: {_describe_mysql(exc)}") from exc
        self._state.up()
        return result

    async def write(self, messages: Sequence[AuditLogMessage]) -> int:
        if not messages:
            return 0
        # One multi-row INSERT per batch (the driver joins the rows). An id
        # already stored "updates" to itself, which counts as no affected row.
        sql = (
            f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES "
            f"({', '.join(['%s'] * len(COLUMNS))}) "
            "ON DUPLICATE KEY UPDATE message_id = message_id"
        )
        rows = [tuple(_mysql_value(v) for v in _row(m)) for m in messages]
        return int(await self._call(sql, rows, many=True))

    async def query(self, query: AuditQuery) -> list[dict[str, Any]]:
        where, args = _where(query, lambda n: "%s")
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM audit_log{where} "
            f"ORDER BY occurred_at DESC, message_id LIMIT %s"
        )
        rows = await self._call(sql, [_mysql_value(a) for a in args] + [query.limit])
        return [
            {
                column: _plain(value.replace(tzinfo=UTC) if column == "occurred_at" else value)
                for column, value in zip(COLUMNS, row, strict=True)
            }
            for row in rows
        ]

    async def delete_older_than(self, cutoff: datetime) -> int:
        sql = "DELETE FROM audit_log WHERE occurred_at < %s"
        return int(await self._call(sql, [_mysql_value(cutoff)]))


def _describe_mysql(exc: BaseException) -> str:
    # asyncmy's errors are (code, message): the message first reads better.
    if isinstance(exc, asyncmy.errors.MySQLError) and len(exc.args) == 2:
        return f"{exc.args[1]} (error {exc.args[0]})"
    if type(exc) is ValueError:  # the URL's shape
        return str(exc)
    return described(exc)


def open_audit_store(url: str) -> AuditStore:
    """The store ``url`` names (not started yet)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return SqliteAuditStore(url.removeprefix("sqlite:///"))
    if parts.scheme in {"postgresql", "postgres"}:
        return PostgresAuditStore(url)
    if parts.scheme == "mysql":
        return MysqlAuditStore(url)
    raise AuditStoreError(f"unsupported audit store URL scheme {parts.scheme!r}")
