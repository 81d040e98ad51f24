"""The audit-log agent: batched, exactly-once SQL storage, and GET /audit."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest

from dawning_streams import AuditLogMessage, Settings, create_app
from dawning_streams.agents import audit_log
from dawning_streams.core.settings import AuditSettings
from dawning_streams.services.audit_store import AuditQuery

from ..conftest import TEST_ENV
from ..handler_helpers import running
from ..kafka_helpers import caught_up

pytestmark = pytest.mark.kafka

POSTGRES = f"postgresql://postgres@127.0.0.1:{TEST_ENV['POSTGRES_PORT']}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A SQLite file, or a fresh database on the test PostgreSQL server (dropped after)."""
    if request.param == "sqlite":
        yield "sqlite:///audit.db"
        return
    name = f"audit_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(f"{POSTGRES}/postgres")
    except OSError:
        pytest.fail(
            f"PostgreSQL is not answering at {POSTGRES}; start it with "
            "`scripts/services.sh start test` (make test does)",
            pytrace=False,
        )
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield f"{POSTGRES}/{name}"
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()


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
        ]:
            status, body = await get(query)
            assert (status, body["error"].split(";")[0]) == (400, message)
