"""Table ``user-state``: per user, event counts by type and the last event."""

from __future__ import annotations

from typing import Any

import faust

from dawning_streams import App
from dawning_streams.kafka.tables import message_keyed_table

__all__ = ["UserState", "create"]


class UserState(faust.Record, include_metadata=False):
    """One user's event counts by type and last event (``MessageId``, type,
    timestamp and ``EventData``)."""

    counts: dict[str, int]
    user_name: str | None = None
    last_event: dict[str, Any] | None = None


def create(app: App) -> faust.Table:
    """The table, keyed by user id (co-partitioned with ``dawning.user-event``)."""
    return message_keyed_table(
        app, "user-state", value_type=UserState, help="Per-user event counts and last event."
    )
