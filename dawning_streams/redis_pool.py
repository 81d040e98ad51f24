"""The worker's Redis connection pool, as a service with a start and a stop."""

from __future__ import annotations

import redis.asyncio as redis
from mode import Service

from .settings import RedisSettings

__all__ = ["RedisPool"]


class RedisPool(Service):
    """One ``redis.asyncio`` client for the process; connections open on first use."""

    def __init__(self, settings: RedisSettings, **kwargs: object) -> None:
        self.settings = settings
        self._client: redis.Redis | None = None
        super().__init__(**kwargs)  # type: ignore[arg-type]

    @property
    def client(self) -> redis.Redis:
        """The client; usable once the service (or the worker) has started."""
        if self._client is None:
            self._client = redis.from_url(self.settings.url)
        return self._client

    async def on_stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
