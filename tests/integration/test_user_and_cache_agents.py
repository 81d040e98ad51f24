"""User-event and cache-invalidation agents on the real broker and Redis."""

from __future__ import annotations

import mailbox
import uuid

import aiohttp
import pytest
import redis as sync_redis
import redis.asyncio as redis

from dawning_streams import (
    App,
    CacheInvalidationMessage,
    Retry,
    Settings,
    UserEventMessage,
    create_app,
    decode,
)
from dawning_streams.agents import cache_invalidation, email_queue, user_event
from dawning_streams.core.names import evictions_topic
from dawning_streams.services.cache import LocalCache, redis_key

from ..handler_helpers import eventually, running
from ..kafka_helpers import caught_up, read_to_end

pytestmark = pytest.mark.kafka


def app_with_agents(settings: Settings) -> App:
    app = create_app(settings)
    email_queue.install(app, retry=Retry(max_retries=1, backoff_s=0.2))
    cache_invalidation.install(app)
    user_event.install(app)
    return app


async def test_user_events_build_state_served_by_get_users(settings: Settings) -> None:
    app = app_with_agents(settings)
    user = uuid.uuid4()
    url = f"http://127.0.0.1:{settings.web.port}/users"
    events = [
        UserEventMessage(user_id=user, user_name="alice", event_type=kind, event_data={"step": n})
        for n, kind in enumerate(["user.login", "user.login", "user.profile_updated"])
    ]
    async with running(app), aiohttp.ClientSession() as http:
        await app.bus.publish_many(events)
        await app.bus.publish(events[0])  # a redelivery counts once

        async def state():  # type: ignore[no-untyped-def]
            async with http.get(f"{url}/{user}") as response:
                body = await response.json()
                return (
                    body if response.status == 200 and sum(body["counts"].values()) == 3 else None
                )

        body = await eventually(state)
        await caught_up(settings, settings.kafka.topics.user_event)  # the repeat was handled
        async with http.get(f"{url}/{user}") as response:
            body = await response.json()
        async with http.get(f"{url}/not-a-guid") as bad:
            assert (bad.status, (await bad.json())["error"]) == (
                400,
                "user id 'not-a-guid' is not a GUID",
            )
        async with http.get(f"{url}/{uuid.uuid4()}") as missing:
            assert missing.status == 404
    assert body["counts"] == {"user.login": 2, "user.profile_updated": 1}
    assert body["last_event"]["event_type"] == "user.profile_updated"
    assert body["last_event"]["event_data"] == {"step": 2}
    assert body["user_name"] == "alice"


async def test_a_new_user_gets_one_welcome_email_even_if_the_event_repeats(
    settings: Settings,
    maildir: mailbox.Maildir,
) -> None:
    app = app_with_agents(settings)
    address = f"new-{uuid.uuid4().hex[:8]}@example.com"
    created = UserEventMessage(
        user_id=uuid.uuid4(),
        user_name="Bob",
        event_type="user.created",
        event_data={"Email": address},
    )
    async with running(app):
        await app.bus.publish(created)
        await app.bus.publish(created)

        await eventually(lambda: mail_to(maildir, address))
        # Both events, and every email they asked for, were handled.
        await caught_up(settings, settings.kafka.topics.user_event)
        await caught_up(settings, settings.kafka.topics.email_queue)
    [mail] = mail_to(maildir, address)
    assert mail["Subject"] == "Welcome to Dawning"
    assert "Hello Bob" in mail.get_payload()


async def test_a_password_change_mails_a_notice_and_drops_the_users_permissions(
    settings: Settings,
    maildir: mailbox.Maildir,
    redis_url: str,
) -> None:
    app = app_with_agents(settings)
    user = uuid.uuid4()
    address = f"pw-{uuid.uuid4().hex[:8]}@example.com"
    client = redis.from_url(redis_url)
    doomed = [f"user:permissions:{user}:{n}" for n in range(1200)]
    kept = f"user:permissions:{uuid.uuid4()}:0"
    try:
        await client.mset({key: "1" for key in [*doomed, kept]})
        async with running(app):
            await app.bus.publish(
                UserEventMessage(
                    user_id=user, event_type="user.password_changed", event_data={"email": address}
                )
            )

            async def gone():  # type: ignore[no-untyped-def]
                return await client.exists(*doomed) == 0

            await eventually(gone)
            await eventually(lambda: mail_to(maildir, address))
        assert await client.exists(kept) == 1
    finally:
        await client.delete(kept)
        await client.aclose()
    [notice] = mail_to(maildir, address)
    assert notice["Subject"] == "Your Dawning password was changed"


def mail_to(maildir: mailbox.Maildir, address: str) -> list[mailbox.MaildirMessage]:
    return [m for m in maildir if m["To"] == address]


async def test_an_invalidation_evicts_the_local_level_and_records_it(
    settings: Settings,
    redis_url: str,
) -> None:
    app = app_with_agents(settings)
    region = f"r{uuid.uuid4().hex[:6]}"
    url = f"http://127.0.0.1:{settings.web.port}"
    probe = RedisAtEviction(redis_url, f"{region}:42")
    app.distributed_cache.local = probe
    async with running(app), aiohttp.ClientSession() as http:
        cache = app.distributed_cache
        await cache.set("42", b"profile", ttl_s=60, region=region)
        assert await cache.get("42", region=region) == b"profile"
        assert f"{region}:42" in cache.local
        invalidation = CacheInvalidationMessage(
            cache_key="42", region=region, reason="profile edited"
        )
        await app.bus.publish(invalidation)

        async def evicted():  # type: ignore[no-untyped-def]
            if f"{region}:42" in cache.local:
                return False
            return await cache.client.exists(f"{region}:42") == 0

        await eventually(evicted)
        # Evicted locally only once Redis no longer had the key: an instance
        # missing locally then could not have reloaded the old value.
        assert probe.redis_had_it == [False]
        announced = await read_to_end(
            settings.kafka.bootstrap_servers[0],
            evictions_topic(settings.kafka.topics.cache_invalidation),
        )
        assert [
            m.message_id
            for m in (decode(r.value, CacheInvalidationMessage) for r in announced)
            if m.region == region
        ] == [invalidation.message_id]

        async def recorded():  # type: ignore[no-untyped-def]
            async with http.get(f"{url}/cache/invalidations") as response:
                return (await response.json())["invalidations"].get(f"{region}:42")

        entry = await eventually(recorded)
        # The same message again, as after a rebalance, deletes nothing new.
        await cache.client.set(f"{region}:42", b"new profile", ex=60)
        await app.bus.publish(invalidation)
        await caught_up(settings, settings.kafka.topics.cache_invalidation)
        assert await cache.client.get(f"{region}:42") == b"new profile"
    assert (entry["reason"], entry["removed"], entry["count"]) == ("profile edited", 1, 1)
    assert await cache_get_after_stop(redis_url, f"{region}:42") == b"new profile"


class RedisAtEviction(LocalCache):
    """A local level that notes, at each eviction of ``key``, whether Redis still had it."""

    def __init__(self, redis_url: str, key: str) -> None:
        super().__init__()
        self.key = key
        self.redis = sync_redis.from_url(redis_url)
        self.redis_had_it: list[bool] = []

    def evict(self, message: CacheInvalidationMessage) -> int:
        if redis_key(message.cache_key or "", message.region) == self.key:
            self.redis_had_it.append(bool(self.redis.exists(self.key)))
        return super().evict(message)


async def cache_get_after_stop(redis_url: str, key: str) -> bytes | None:
    client = redis.from_url(redis_url)
    try:
        return await client.get(key)  # type: ignore[no-any-return]
    finally:
        await client.aclose()


def test_the_follow_ups_of_each_user_event_type() -> None:
    user = uuid.uuid4()

    def kinds(event_type: str, data: dict | None = None) -> list[tuple[str, str]]:  # type: ignore[type-arg]
        event = UserEventMessage(user_id=user, event_type=event_type, event_data=data)
        return [
            (type(m).__name__, getattr(m, "to", None) or m.pattern)
            for m in user_event.follow_ups(event)
        ]

    pattern = f"user:permissions:{user}:*"
    assert kinds("user.created", {"Email": "a@b.c"}) == [("EmailMessage", "a@b.c")]
    assert kinds("user.created") == []  # no address, no mail
    assert kinds("user.password_changed", {"email": "a@b.c"}) == [
        ("EmailMessage", "a@b.c"),
        ("CacheInvalidationMessage", pattern),
    ]
    assert kinds("user.role_assigned") == [("CacheInvalidationMessage", pattern)]
    assert kinds("user.login") == []
    event = UserEventMessage(user_id=user, event_type="user.created", event_data={"Email": "a@b.c"})
    assert [m.message_id for m in user_event.follow_ups(event)] == [
        m.message_id for m in user_event.follow_ups(event)
    ]
