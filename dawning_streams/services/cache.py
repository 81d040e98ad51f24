"""The distributed cache: an in-process first level in front of Redis.

``get``/``set`` with a TTL read the local level first and fall back to Redis;
``CacheInvalidationMessage`` removes entries from Redis once per message (the
cache-invalidation agent) and then from every instance's local level (a
broadcast: each worker follows the agent's evictions topic outside the
consumer group). A ``Region``
is a key prefix: region ``users`` and key ``42`` is the Redis key ``users:42``.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from dawning_streams.core.records import CacheInvalidationMessage
from dawning_streams.services.redis_pool import RedisPool, unreachable

if TYPE_CHECKING:
    import redis.asyncio as redis

__all__ = ["DistributedCache", "LocalCache", "redis_key", "unlink_matching"]

logger = logging.getLogger(__name__)

SCAN_BATCH = 500


def redis_key(key: str, region: str | None = None) -> str:
    """The Redis key for ``key`` in ``region``."""
    return f"{region}:{key}" if region else key


class LocalCache:
    """A bounded in-process LRU with per-entry expiry."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        #: Raised by each eviction: a value read elsewhere before it is not kept.
        self.generation = 0

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, value = entry
        if expires_at < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def evict(self, message: CacheInvalidationMessage) -> int:
        """Drop what ``message`` invalidates; returns how many entries went."""
        self.generation += 1
        if message.cache_key:
            doomed = [redis_key(message.cache_key, message.region)]
        else:
            pattern = redis_key(message.pattern or "", message.region)
            doomed = [k for k in self._entries if fnmatch.fnmatchcase(k, pattern)]
        return sum(self._entries.pop(k, None) is not None for k in doomed)


class DistributedCache:
    """``get`` and ``set`` with a TTL: local level first, then Redis.

    While Redis cannot be reached the cache runs on its local level alone: a
    ``get`` Redis would have answered is a miss, and a ``set`` is kept in this
    process for at most ``local_ttl_s``.
    """

    def __init__(
        self, pool: RedisPool, local: LocalCache | None = None, local_ttl_s: float = 30.0
    ) -> None:
        self.pool = pool
        self.local = local or LocalCache()
        self.local_ttl_s = local_ttl_s

    @property
    def client(self) -> redis.Redis:
        return self.pool.client

    async def get(self, key: str, region: str | None = None) -> bytes | None:
        """The value, from this process if it has it, else from Redis."""
        full = redis_key(key, region)
        value = self.local.get(full)
        if value is not None:
            return value
        generation = self.local.generation
        try:
            stored: bytes | None = await self.client.get(full)  # type: ignore[assignment]
            self.pool.reachability.up()
            if stored is None:
                return None
            ttl_ms = await self.client.pttl(full)
        except unreachable() as exc:
            self.pool.reachability.down(exc)
            logger.debug("cache: Redis unreachable, %s is a miss: %s", full, exc)
            return None
        if self.local.generation == generation:
            # Not when an eviction came in while Redis answered: the value
            # read may be the one it evicts, kept here for up to local_ttl_s.
            local_ttl = self.local_ttl_s if ttl_ms < 0 else min(self.local_ttl_s, ttl_ms / 1000)
            self.local.set(full, stored, local_ttl)
        return stored

    async def set(self, key: str, value: bytes, ttl_s: float, region: str | None = None) -> None:
        """Store ``value`` in Redis and locally, both for at most ``ttl_s``."""
        full = redis_key(key, region)
        self.local.set(full, value, min(ttl_s, self.local_ttl_s))
        try:
            await self.client.set(full, value, px=int(ttl_s * 1000))
            self.pool.reachability.up()
        except unreachable() as exc:
            self.pool.reachability.down(exc)
            logger.debug("cache: Redis unreachable, %s kept in this process only: %s", full, exc)


async def unlink_matching(client: redis.Redis, message: CacheInvalidationMessage) -> int:
    """Delete what ``message`` names from Redis: the exact key, or every key matching
    the pattern, found with SCAN and removed with UNLINK in batches (never KEYS)."""
    if message.cache_key:
        return int(await client.unlink(redis_key(message.cache_key, message.region)))
    removed = 0
    async for batch in _scan(client, redis_key(message.pattern or "", message.region)):
        removed += int(await client.unlink(*batch))
    return removed


async def _scan(client: redis.Redis, pattern: str) -> AsyncIterator[list[bytes]]:
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=SCAN_BATCH):
        batch.append(key)
        if len(batch) >= SCAN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
