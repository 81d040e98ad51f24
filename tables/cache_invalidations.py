"""Table ``cache-invalidations``: the latest invalidation of each key or pattern."""

from __future__ import annotations

import faust

from dawning_streams import App
from dawning_streams.kafka.tables import message_keyed_table

__all__ = ["Invalidation", "create"]


class Invalidation(faust.Record, include_metadata=False):
    """The latest invalidation of a key or pattern: what it named, why, how many
    Redis keys it removed, when (ISO 8601), and how many invalidations so far."""

    removed: int
    invalidated_at: str
    count: int
    cache_key: str | None = None
    pattern: str | None = None
    region: str | None = None
    reason: str | None = None


def create(app: App) -> faust.Table:
    """The table, keyed like the topic (``Region:CacheKey`` or ``Region:Pattern``)."""
    return message_keyed_table(
        app,
        "cache-invalidations",
        value_type=Invalidation,
        help="Latest invalidation of each cache key or pattern.",
    )
