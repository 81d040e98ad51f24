"""The distributed cache on its own: Redis behind a local level, and the local level alone."""

from __future__ import annotations

import asyncio

from dawning_streams import CacheInvalidationMessage
from dawning_streams.core.settings import RedisSettings
from dawning_streams.services.cache import DistributedCache
from dawning_streams.services.redis_pool import RedisPool

from ..conftest import free_port


async def test_with_redis_unreachable_the_cache_runs_on_its_local_level() -> None:
    nothing_listens = RedisPool(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"))
    cache = DistributedCache(nothing_listens)
    try:
        await cache.set("42", b"profile", ttl_s=60, region="users")
        assert await cache.get("42", region="users") == b"profile"
        assert await cache.get("43", region="users") is None
        assert cache.local.keys() == ["users:42"]
    finally:
        await nothing_listens.on_stop()


async def test_a_value_set_through_redis_is_read_back_by_another_instance(redis_url: str) -> None:
    writer, reader = (
        RedisPool(RedisSettings(url=redis_url)),
        RedisPool(RedisSettings(url=redis_url)),
    )
    try:
        await DistributedCache(writer).set("shared", b"yes", ttl_s=5, region="test-cache")
        fresh = DistributedCache(reader)
        assert await fresh.get("shared", region="test-cache") == b"yes"
        assert fresh.local.keys() == ["test-cache:shared"]
    finally:
        await writer.on_stop()
        await reader.on_stop()


async def test_a_value_read_from_redis_across_an_eviction_is_not_kept_locally(
    redis_url: str,
) -> None:
    pool = RedisPool(RedisSettings(url=redis_url))
    cache = DistributedCache(pool)
    try:
        await cache.set("7", b"stale", ttl_s=5, region="test-cache")
        cache.local.evict(CacheInvalidationMessage(cache_key="7", region="test-cache"))
        # The read is in flight (waiting on Redis) when the eviction arrives.
        reading = asyncio.create_task(cache.get("7", region="test-cache"))
        await asyncio.sleep(0)
        cache.local.evict(CacheInvalidationMessage(cache_key="7", region="test-cache"))
        assert await reading == b"stale"  # what Redis had when asked
        assert cache.local.keys() == []  # but not served again from this process
        # Without an eviction meanwhile, a read from Redis is kept.
        assert await cache.get("7", region="test-cache") == b"stale"
        assert cache.local.keys() == ["test-cache:7"]
    finally:
        await pool.on_stop()
