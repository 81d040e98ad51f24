"""``dawning.cache-invalidation``: drop cache entries in Redis once, and everywhere locally.

The group's handler deletes from Redis (an exact ``CacheKey`` directly, a glob
``Pattern`` with SCAN and UNLINK in batches), then announces the delete on
``<topic>.evictions`` and records the invalidation in the ``cache-invalidations``
table. It de-duplicates (``dedupe=True``): once it returns, the message's id
is marked done. Every instance follows the evictions topic outside the group
and evicts its in-process cache level.

The order is what keeps a stale value from surviving:

* the done-marker is written after the handler returns, so a crash anywhere
  before (in the middle of a pattern's SCAN, say) leaves the message to be
  handled again, and the delete, being idempotent, finishes; a redelivery
  after the marker skips;
* local levels are evicted only after the Redis delete, so an instance that
  misses locally afterwards reads Redis, which no longer has the value (and
  :class:`~dawning_streams.services.cache.LocalCache` refuses a value read from Redis
  before an eviction it applied meanwhile).

Views: ``GET /cache/invalidations`` (this instance's partitions of the table)
and ``GET /cache/local`` (this instance's local keys and broadcasts applied).
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord
from faust.web import Request, Response

from dawning_streams import App, CacheInvalidationMessage, Handler, decode
from dawning_streams.core.names import evictions_topic
from dawning_streams.kafka.broadcast import Broadcast
from dawning_streams.ops.web import Page
from dawning_streams.services.cache import unlink_matching
from dawning_streams.tables import cache_invalidations
from dawning_streams.tables.cache_invalidations import Invalidation

__all__ = ["install"]


def install(app: App) -> Handler[CacheInvalidationMessage]:
    """Declare the invalidation handler, the local-eviction broadcast and the views."""
    table = cache_invalidations.create(app)
    kafka = app.dawning_settings.kafka
    evictions = evictions_topic(kafka.topics.cache_invalidation)
    app.declare_topic(
        app.topic(
            evictions,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=kafka.partitions,
            replicas=kafka.replication_factor,
        )
    )

    def evict_locally(record: ConsumerRecord) -> None:
        app.distributed_cache.local.evict(
            decode(record.value, CacheInvalidationMessage, topic=evictions)
        )

    eviction = Broadcast(kafka, evictions, evict_locally)
    app.add_dependency(eviction)

    @app.handler(CacheInvalidationMessage, dedupe=True, name="invalidate_cache")
    async def invalidate_cache(message: CacheInvalidationMessage) -> None:
        """Delete the named keys from Redis, have every instance evict them
        locally, and note it in the table."""
        client = app.redis.client
        removed = await unlink_matching(client, message)
        await app.bus.publish(message, topic=evictions)
        key = message.partition_key()
        previous = table.get(key)
        table[key] = Invalidation(
            cache_key=message.cache_key,
            pattern=message.pattern,
            region=message.region,
            reason=message.reason,
            removed=removed,
            invalidated_at=datetime.now(UTC).isoformat(),
            count=(previous.count if previous is not None else 0) + 1,
        )

    @app.page("/cache/invalidations")
    class InvalidationsView(Page):
        """Recent invalidations held by this instance's partitions."""

        async def get(self, request: Request) -> Response:
            return self.json({"invalidations": {k: v.asdict() for k, v in table.items()}})

    @app.page("/cache/local")
    class LocalCacheView(Page):
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
