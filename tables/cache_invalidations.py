"""Table ``cache-invalidations``: the latest invalidation of each key or pattern."""

from __future__ import annotations

from typing import Any

from dawning_streams import App
from dawning_streams.kafka.tables import message_keyed_table

__all__ = ["create"]


def create(app: App) -> Any:
    """The table, keyed like the topic (``Region:CacheKey`` or ``Region:Pattern``).

    Each value: ``{"cache_key", "pattern", "region", "reason", "removed",
    "invalidated_at", "count"}``.
    """
    return message_keyed_table(
        app, "cache-invalidations", help="Latest invalidation of each cache key or pattern."
    )
