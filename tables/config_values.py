"""Table ``config``: the current value of each configuration (group, key)."""

from __future__ import annotations

from typing import Any

from dawning_streams import App
from dawning_streams.kafka.tables import message_keyed_table

__all__ = ["create"]


def create(app: App) -> Any:
    """The table, keyed ``group:key`` (co-partitioned with ``dawning.config-changed``).

    Each value: ``{"group", "key", "value", "changed_by", "changed_at",
    "version", "message_id"}``.
    """
    return message_keyed_table(app, "config", help="Current configuration values.")
