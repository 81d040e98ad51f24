"""Table ``user-state``: per user, event counts by type and the last event."""

from __future__ import annotations

from typing import Any

from dawning_streams import App
from dawning_streams.kafka.tables import message_keyed_table

__all__ = ["create"]


def create(app: App) -> Any:
    """The table, keyed by user id (co-partitioned with ``dawning.user-event``).

    Each value: ``{"user_name", "counts": {event type: n}, "last_event": {...}}``.
    """
    return message_keyed_table(app, "user-state", help="Per-user event counts and last event.")
