"""A distributed lock on Redis, as the seed's ``IDistributedLock``.

    async with app.lock.try_acquire("scheduled-task-cleanup", ttl_s=300) as handle:
        if handle is None:
            return  # another instance holds it
        ...         # handle.fencing_token orders this holder against every other

* Acquire is ``SET NX PX`` with a random token, and in the same script an
  ``INCR`` of a per-lock counter: the fencing token, strictly increasing, so a
  store can refuse writes from a holder that lost the lock while paused. The
  counter never stays below Redis's clock in milliseconds, so a Redis that
  lost it (restarted without persistence) still hands out larger tokens.
* Release and renewal run as scripts that compare the token first, so no
  instance can free or extend a lock it does not hold.
* While held, the lock renews itself every third of its TTL; if renewal finds
  the lock gone, ``handle.lost`` turns true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dawning_streams.core.errors import DawningError
from dawning_streams.core.names import lock_key
from dawning_streams.services.redis_pool import RedisPool, unreachable

if TYPE_CHECKING:
    import redis.asyncio as redis

__all__ = ["DistributedLock", "LockHandle", "LockUnavailable"]

logger = logging.getLogger(__name__)

_ACQUIRE = """
if redis.call("set", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
    local token = redis.call("incr", KEYS[2])
    local now = redis.call("time")
    local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    if token < floor then
        redis.call("set", KEYS[2], floor)
        token = floor
    end
    return token
end
return 0
"""
_RENEW = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("pexpire", KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""


class LockUnavailable(DawningError):
    """Redis could not be asked, so the lock is neither held nor refused."""


@dataclass
class LockHandle:
    """A held lock."""

    name: str
    token: str
    fencing_token: int
    ttl_s: float
    lost: bool = field(default=False)


class DistributedLock:
    """Named locks shared by every instance that uses the same Redis."""

    def __init__(self, pool: RedisPool) -> None:
        self.pool = pool

    @property
    def _client(self) -> redis.Redis:
        return self.pool.client

    @contextlib.asynccontextmanager
    async def try_acquire(self, name: str, ttl_s: float) -> AsyncIterator[LockHandle | None]:
        """Yield a :class:`LockHandle`, or None when another instance holds ``name``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a lock's name must be a non-empty string, got {name!r}")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0:
            raise ValueError(f"lock {name!r}: ttl_s must be positive seconds, got {ttl_s!r}")
        key, fence_key = lock_key(name), lock_key(name, fence=True)
        token = secrets.token_hex(16)
        ttl_ms = max(1, int(ttl_s * 1000))
        try:
            fence = int(await self._client.eval(_ACQUIRE, 2, key, fence_key, token, ttl_ms))
        except unreachable() as exc:
            raise LockUnavailable(f"cannot reach Redis for lock {name!r}: {exc}") from exc
        if not fence:
            yield None
            return
        handle = LockHandle(name, token, fence, ttl_s)
        renewal = asyncio.create_task(self._renew(handle, key, ttl_ms), name=f"renew lock {name}")
        try:
            yield handle
        finally:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
            try:
                await self._client.eval(_RELEASE, 1, key, token)
            except unreachable():
                logger.warning("could not release lock %r; it expires in %.0f s", name, ttl_s)

    async def _renew(self, handle: LockHandle, key: str, ttl_ms: int) -> None:
        while True:
            await asyncio.sleep(handle.ttl_s / 3)
            try:
                renewed = await self._client.eval(_RENEW, 1, key, handle.token, ttl_ms)
            except unreachable() as exc:
                logger.warning("could not renew lock %r: %s", handle.name, exc)
                continue
            if not renewed:
                handle.lost = True
                logger.error("lock %r was lost (expired or taken) while held", handle.name)
                return
