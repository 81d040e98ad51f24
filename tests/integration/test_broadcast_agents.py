"""Config and cache broadcasts, proven with three worker processes in one group."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis.asyncio as redis

from dawning_streams import (
    CacheInvalidationMessage,
    ConfigChangedMessage,
    Settings,
    UserEventMessage,
    create_app,
)
from dawning_streams.agents import config_changed
from dawning_streams.services.shared_config import ConfigEntry

from ..handler_helpers import eventually, running
from ..kafka_helpers import caught_up
from ..workers import Worker, workers

pytestmark = pytest.mark.kafka


async def test_config_views_and_subscribers_see_each_change(settings: Settings) -> None:
    app = create_app(settings)
    config_changed.install(app)
    seen: list[ConfigEntry] = []
    app.shared_config.on_change(seen.append)
    async with running(app):
        for value in ("5", "3"):
            await app.bus.publish(
                ConfigChangedMessage(
                    config_group="security",
                    config_key="lockout",
                    new_value=value,
                    changed_by="admin",
                )
            )
        await app.bus.publish(
            ConfigChangedMessage(
                config_group="mail", config_key="from", new_value="ops@dawning.local"
            )
        )

        async def all_seen():  # type: ignore[no-untyped-def]
            return len(seen) >= 3

        await eventually(all_seen)
        worker = Worker("self", settings.web.port, None, Path())  # type: ignore[arg-type]
        status, one = await worker.get_json("/config/security/lockout")
        _, group = await worker.get_json("/config/security")
        _, everything = await worker.get_json("/config")
        missing_status, missing = await worker.get_json("/config/security/absent")
        no_group_status, _ = await worker.get_json("/config/nothing")
    assert status == 200
    assert (one["value"], one["version"], one["changed_by"]) == ("3", 2, "admin")
    assert [e["key"] for e in group["config"]] == ["lockout"]
    assert [(e["group"], e["key"]) for e in everything["config"]] == [
        ("mail", "from"),
        ("security", "lockout"),
    ]
    assert (missing_status, missing["error"]) == (404, "no configuration security/absent")
    assert no_group_status == 404
    assert [(e.key, e.value, e.version) for e in seen if e.group == "security"] == [
        ("lockout", "5", 1),
        ("lockout", "3", 2),
    ]


async def test_three_workers_share_config_evict_once_and_route_user_views(
    settings: Settings,
    tmp_path: Path,
    redis_url: str,
) -> None:
    client = redis.from_url(redis_url)
    key = f"profile:{uuid.uuid4()}"
    publisher = create_app(settings, web_enabled=False)
    try:
        async with workers(settings, 3, tmp_path) as three, publisher.bus as bus:
            await bus.publish(
                ConfigChangedMessage(
                    config_group="features", config_key="signup", new_value="on", changed_by="ops"
                )
            )
            for worker in three:

                async def sees_it(worker: Worker = worker):  # type: ignore[no-untyped-def]
                    status, body = await worker.get_json("/config/features/signup")
                    return status == 200 and body["value"] == "on"

                await eventually(sees_it, what=f"{worker.name} sees the config change")

            await client.set(key, "cached")
            before = await _unlinks(client)
            broadcasts = [(await eventually(lambda w=w: _applied(w)))[0] for w in three]
            await bus.publish(CacheInvalidationMessage(cache_key=key, reason="test"))
            for worker, seen_before in zip(three, broadcasts, strict=True):

                async def evicted(worker: Worker = worker, seen: int = seen_before):  # type: ignore[no-untyped-def]
                    return (await _applied(worker) or (seen,))[0] > seen

                await eventually(evicted, what=f"{worker.name} applies the cache broadcast")
            await eventually(lambda: _gone(client, key), what="the key is deleted")
            await caught_up(settings, settings.kafka.topics.cache_invalidation)
            assert await _unlinks(client) - before == 1

            # Per-user state lives on the worker owning the user's partition;
            # asking any worker is routed there.
            users = [uuid.uuid4() for _ in range(6)]
            await bus.publish_many(
                UserEventMessage(user_id=u, event_type="user.login") for u in users
            )
            for worker in three:
                for user in users:

                    async def served(worker: Worker = worker, user: uuid.UUID = user):  # type: ignore[no-untyped-def]
                        status, body = await worker.get_json(f"/users/{user}")
                        return status == 200 and body["counts"] == {"user.login": 1}

                    await eventually(served, what=f"{worker.name} serves user {user}")
    finally:
        await client.aclose()


async def _applied(worker: Worker) -> tuple[int] | None:
    """How many cache broadcasts ``worker`` has applied, or None while it cannot say."""
    status, body = await worker.get_json("/cache/local")
    return (body["broadcasts_applied"],) if status == 200 else None


async def _gone(client: redis.Redis, key: str) -> bool:
    return await client.exists(key) == 0


async def _unlinks(client: redis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_unlink", {}).get("calls", 0))


async def test_a_subscriber_hears_the_history_only_when_it_asks_for_replay(
    settings: Settings,
) -> None:
    first = create_app(settings)
    config_changed.install(first)
    async with running(first):
        for value in ("1", "2"):
            await first.bus.publish(
                ConfigChangedMessage(config_group="replay", config_key="k", new_value=value)
            )
        await eventually(
            lambda: (
                (first.shared_config.get("replay", "k") or 0)
                and first.shared_config.get("replay", "k").version == 2
            )
        )  # type: ignore[union-attr]
    second = create_app(settings)
    config_changed.install(second)
    new_only: list[ConfigEntry] = []
    everything: list[ConfigEntry] = []
    second.shared_config.on_change(new_only.append)
    second.shared_config.on_change(everything.append, replay=True)
    async with running(second):
        await eventually(lambda: len(everything) >= 2, what="the history replayed")
        await second.bus.publish(
            ConfigChangedMessage(config_group="replay", config_key="k", new_value="3")
        )
        await eventually(lambda: len(everything) >= 3, what="the new change")
        await eventually(lambda: new_only, what="the new change, without history")
    assert [e.value for e in everything] == ["1", "2", "3"]
    assert [e.value for e in new_only] == ["3"]
