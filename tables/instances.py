"""Table ``instances``: the lifecycle of every gateway instance that reported."""

from __future__ import annotations

import faust

from dawning_streams import App
from dawning_streams.kafka.tables import message_keyed_table

__all__ = ["InstanceState", "create"]


class InstanceState(faust.Record, include_metadata=False):
    """One instance: its events by type, and when it was last seen, started,
    stopped and reloaded its configuration (ISO 8601)."""

    instance: str
    events: dict[str, int]
    last_event: str | None = None
    last_seen: str | None = None
    started_at: str | None = None
    stopped_at: str | None = None
    config_reloaded_at: str | None = None


def create(app: App) -> faust.Table:
    """The table, keyed by instance name (the events' ``SourceInstance``)."""
    return message_keyed_table(
        app, "instances", value_type=InstanceState, help="Lifecycle of each gateway instance."
    )
