"""The worker's Redis connection pool, as a service with a start and a stop.

Its users (the scheduler, the cache) tell its ``reachability`` (a
:class:`~dawning_streams.kafka.outages.Dependency`) whether Redis answered, so an
outage is logged once when it starts, once a minute while it lasts and once
when it ends, instead of once per call.

redis-py is imported when the first client is made, not with the framework:
its commands take 8 MB of memory, which a process that only sends tasks
(``delay()`` from a web app or a script) never uses. Its users catch what it
raises with ``except unreachable():``, which is evaluated only once something
was raised, by a client that imported it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mode import Service

from dawning_streams.core.settings import RedisSettings
from dawning_streams.kafka.outages import Dependency

if TYPE_CHECKING:
    import redis.asyncio as redis

__all__ = ["RedisPool", "unreachable"]


def unreachable(*also: type[Exception]) -> tuple[type[Exception], ...]:
    """What a Redis call raises when Redis does not answer, and ``also``, for ``except``."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, *also)


class RedisPool(Service):
    """One ``redis.asyncio`` client for the process; connections open on first use."""

    def __init__(self, settings: RedisSettings, **kwargs: object) -> None:
        self.settings = settings
        self._client: redis.Redis | None = None
        #: Redis's reachability, as the log and the metrics see it.
        self.reachability = Dependency("Redis", _address(settings.url))
        super().__init__(**kwargs)  # type: ignore[arg-type]

    @property
    def client(self) -> redis.Redis:
        """The client; usable once the service (or the worker) has started."""
        if self._client is None:
            import redis.asyncio

            self._client = redis.asyncio.from_url(self.settings.url)
        return self._client

    async def on_stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _address(url: str) -> str:
    """``host:port/db`` of a Redis URL, without its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
