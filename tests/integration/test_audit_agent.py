"""The audit-log agent: batched, exactly-once SQL storage, and GET /audit.

The stores run against the real SQLite, PostgreSQL and MariaDB (the test
profile's, started by ``scripts/services.sh start test``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncmy
import asyncpg
import pytest

from dawning_streams import AuditLogMessage, Settings, create_app
from dawning_streams.agents import audit_log
from dawning_streams.core.settings import AuditSettings
from dawning_streams.services.audit_store import AuditQuery, AuditStoreError, open_audit_store

from ..conftest import TEST_ENV
from ..handler_helpers import running
from ..kafka_helpers import caught_up

pytestmark = pytest.mark.kafka


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A SQLite file, or a fresh database on the test PostgreSQL or MariaDB
    server (dropped after)."""
    name = f"dawning_audit_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        yield "sqlite:///audit.db"
    elif request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        admin = await asyncpg.connect(f"{server}/postgres")
        try:
            await admin.execute(f"CREATE DATABASE {name}")
            yield f"{server}/{name}"
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        finally:
            await admin.close()
    else:
        server = request.getfixturevalue("mariadb_server")
        async with mysql_admin(server) as admin:
            await admin.execute(f"CREATE DATABASE {name}")
        yield f"{server}/{name}"
        async with mysql_admin(server) as admin:
            await admin.execute(f"DROP DATABASE {name}")


@asynccontextmanager
async def mysql_admin(server: str) -> AsyncIterator[Any]:
    """A cursor on ``server`` (a ``mysql://`` URL without a database)."""
    parts = urlsplit(server)
    db = await asyncmy.connect(
        host=parts.hostname, port=parts.port, user=parts.username, password=parts.password
    )
    try:
        async with db.cursor() as cursor:
            yield cursor
    finally:
        await db.ensure_closed()


def an_hour_ago() -> datetime:
    # Recent, so the audit retention task never counts the entries as old.
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def entries(
    count: int,
    user: uuid.UUID | None = None,
    action: str = "Login",
    start: datetime | None = None,
) -> list[AuditLogMessage]:
    start = start or an_hour_ago()
    return [
        AuditLogMessage(
            user_id=user or uuid.uuid4(),
            action=action,
            entity_type="User",
            timestamp=start + timedelta(seconds=n),
            description=f"entry {n}",
        )
        for n in range(count)
    ]


async def stored(app, count: int, timeout_s: float = 60) -> list[dict]:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while len(rows := await app.audit_store.query(AuditQuery(limit=1000))) < count:
            await asyncio.sleep(0.2)
    return rows


async def test_entries_are_stored_in_batches_exactly_once(
    settings: Settings, store_url: str
) -> None:
    settings = dataclasses.replace(
        settings, audit=AuditSettings(store_url=store_url, batch_size=200, batch_within_ms=200)
    )
    app = create_app(settings, web_enabled=False)
    audit_log.install(app)
    batch = entries(700)
    async with running(app):
        await app.bus.publish_many(batch)
        await app.bus.publish_many(batch[:150])  # redelivered, as after a crash
        await stored(app, 700)
        await caught_up(settings, settings.kafka.topics.audit_log)  # the repeats were handled
        rows = await app.audit_store.query(AuditQuery(limit=1000))
    assert len(rows) == 700
    assert {r["message_id"] for r in rows} == {str(m.message_id) for m in batch}
    newest = rows[0]
    assert newest["description"] == "entry 699"
    assert newest["occurred_at"] == batch[699].timestamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert newest["source_instance"] == settings.instance_name


async def test_get_audit_filters_and_answers_newest_first(settings: Settings) -> None:
    settings = dataclasses.replace(settings, audit=AuditSettings(batch_within_ms=100))
    app = create_app(settings)
    audit_log.install(app)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    base = f"http://127.0.0.1:{settings.web.port}/audit"
    async with running(app), aiohttp.ClientSession() as http:
        start = an_hour_ago()
        await app.bus.publish_many(
            entries(5, alice, start=start) + entries(3, bob, action="Logout", start=start)
        )
        await stored(app, 8)

        async def get(query: str) -> tuple[int, dict]:  # type: ignore[type-arg]
            async with http.get(f"{base}?{query}") as response:
                return response.status, await response.json()

        status, body = await get(f"user_id={alice}&limit=2")
        assert status == 200
        assert [e["description"] for e in body["entries"]] == ["entry 4", "entry 3"]
        since = (start + timedelta(seconds=1)).replace(tzinfo=None).isoformat()  # naive: UTC
        until = (start + timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
        status, body = await get(f"action=Logout&since={since}&until={until}")
        assert [e["description"] for e in body["entries"]] == ["entry 2", "entry 1"]
        for query, message in [
            ("user_id=42", "user_id='42' is not a GUID"),
            ("since=yesterday", "since='yesterday' is not an ISO-8601 time"),
            ("limit=0", "limit=0 must be from 1 to 1000"),
            ("limit=ten", "limit='ten' is not an integer"),
            ("user=x", "unknown parameter 'user'"),
            ("action=a&action=b", "parameter 'action' is given more than once"),
            (
                "since=2030-01-01&until=2020-01-01",
                "since (2030-01-01T00:00:00+00:00) is after until (2020-01-01T00:00:00+00:00)",
            ),
        ]:
            status, body = await get(query)
            assert (status, body["error"].split(";")[0]) == (400, message)


async def test_every_store_filters_and_purges_alike(store_url: str) -> None:
    store = open_audit_store(store_url)
    await store.start()
    try:
        alice, bob = uuid.uuid4(), uuid.uuid4()
        start = an_hour_ago()
        batch = entries(4, alice, start=start) + entries(2, bob, action="login", start=start)
        old = entries(1, bob, action="Login", start=start - timedelta(days=40))
        assert await store.write(batch + old) == 7
        assert await store.write(batch[:3]) == 0  # a redelivered batch

        async def descriptions(**filters: Any) -> list[str]:
            return [row["description"] for row in await store.query(AuditQuery(**filters))]

        assert await descriptions(user_id=alice, limit=3) == ["entry 3", "entry 2", "entry 1"]
        assert await descriptions(action="login") == ["entry 1", "entry 0"]  # case counts
        assert await descriptions(
            user_id=alice, since=start + timedelta(seconds=1), until=start + timedelta(seconds=2)
        ) == ["entry 2", "entry 1"]  # both ends included
        assert len(await descriptions(user_id=bob)) == 3
        # Entries of one moment come in id order, on every store.
        same_time = [
            r["message_id"] for r in await store.query(AuditQuery(since=start, until=start))
        ]
        assert len(same_time) == 2 and same_time == sorted(same_time)

        assert await store.delete_older_than(start - timedelta(days=30)) == 1
        assert await descriptions(user_id=bob) == ["entry 1", "entry 0"]
        assert await store.delete_older_than(start - timedelta(days=30)) == 0
    finally:
        await store.stop()


async def test_a_refused_mysql_login_fails_at_start_naming_the_setting(
    settings: Settings, mariadb_server: str
) -> None:
    url = mariadb_server.replace(f":{TEST_ENV['MARIADB_PASSWORD']}@", ":not-the-password@")
    url += "/dawning"
    settings = dataclasses.replace(settings, audit=AuditSettings(store_url=url))
    app = create_app(settings, web_enabled=False)
    audit_log.install(app)
    try:
        with pytest.raises(AuditStoreError) as caught:
            await app.start()
    finally:
        await app.stop()
    message = str(caught.value)
    masked = url.replace("not-the-password", "**********")
    assert message.startswith(f"Audit:StoreUrl={masked!r}: the MySQL audit store cannot start")
    assert "Access denied" in message and "not-the-password" not in message
