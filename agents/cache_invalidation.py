"""``dawning.cache-invalidation``: drop cache entries in Redis once, and everywhere locally.

The group's handler deletes from Redis (an exact ``CacheKey`` directly, a glob
``Pattern`` with SCAN and UNLINK in batches) and records the invalidation in
the ``cache-invalidations`` table. Every instance also follows the topic
outside the group and evicts its in-process cache level.

Views: ``GET /cache/invalidations`` (this instance's partitions of the table)
and ``GET /cache/local`` (this instance's local keys and broadcasts applied).
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord
from faust.web import Request, Response, View

from dawning_streams import App, CacheInvalidationMessage, Handler, decode
from dawning_streams.broadcast import Broadcast
from dawning_streams.cache import unlink_matching
from dawning_streams.names import invalidation_key
from dawning_streams.tables import cache_invalidations

__all__ = ["INVALIDATION_MARKER_TTL_S", "install"]

INVALIDATION_MARKER_TTL_S = 24 * 3600


def install(app: App) -> Handler[CacheInvalidationMessage]:
    """Declare the invalidation handler, the local-eviction broadcast and the views."""
    table = cache_invalidations.create(app)
    topic = app.dawning_settings.kafka.topics.cache_invalidation

    def evict_locally(record: ConsumerRecord) -> None:
        app.distributed_cache.local.evict(
            decode(record.value, CacheInvalidationMessage, topic=topic)
        )

    eviction = Broadcast(app, topic, evict_locally)
    app.add_dependency(eviction)

    @app.handler(CacheInvalidationMessage, name="invalidate_cache")
    async def invalidate_cache(message: CacheInvalidationMessage) -> None:
        """Delete the named keys from Redis and note it in the table.

        A marker per message id makes a redelivery (after a rebalance, say)
        delete nothing again: the deletion happens once per message.
        """
        client = app.redis.client
        first_time = await client.set(
            invalidation_key(message.message_id), b"1", nx=True, ex=INVALIDATION_MARKER_TTL_S
        )
        if not first_time:
            return
        removed = await unlink_matching(client, message)
        key = message.partition_key()
        previous = table.get(key.encode()) or {"count": 0}
        table[key.encode()] = {
            "cache_key": message.cache_key,
            "pattern": message.pattern,
            "region": message.region,
            "reason": message.reason,
            "removed": removed,
            "invalidated_at": datetime.now(UTC).isoformat(),
            "count": previous["count"] + 1,
        }

    @app.page("/cache/invalidations")
    class InvalidationsView(View):
        """Recent invalidations held by this instance's partitions."""

        async def get(self, request: Request) -> Response:
            return self.json({"invalidations": {k.decode(): v for k, v in table.items()}})

    @app.page("/cache/local")
    class LocalCacheView(View):
        """This instance's in-process cache level."""

        async def get(self, request: Request) -> Response:
            return self.json(
                {
                    "instance": app.dawning_settings.instance_name,
                    "keys": app.distributed_cache.local.keys(),
                    "broadcasts_applied": eviction.seen,
                }
            )

    return invalidate_cache
