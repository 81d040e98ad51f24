"""Table ``config``: the current value of each configuration (group, key)."""

from __future__ import annotations

import faust

from dawning_streams import App
from dawning_streams.kafka.tables import message_keyed_table

__all__ = ["ConfigValue", "create"]


class ConfigValue(faust.Record, include_metadata=False):
    """A configuration value, its version (1 for the first), and the change
    that set it: who, when (ISO 8601) and in which message."""

    group: str
    key: str
    value: str | None
    changed_by: str | None
    changed_at: str
    version: int
    message_id: str


def create(app: App) -> faust.Table:
    """The table, keyed ``group:key`` (co-partitioned with ``dawning.config-changed``)."""
    return message_keyed_table(
        app, "config", value_type=ConfigValue, help="Current configuration values."
    )
