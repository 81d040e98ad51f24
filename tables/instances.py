"""Table ``instances``: each instance's lifecycle, from ``dawning.system-event``."""

from __future__ import annotations

from typing import Any

from dawning_streams import App
from dawning_streams.kafka.tables import message_keyed_table

__all__ = ["create"]


def create(app: App) -> Any:
    """The table, keyed by instance name (the events' ``SourceInstance``).

    Each value: ``{"instance", "last_event", "last_seen", "started_at",
    "stopped_at", "config_reloaded_at", "events": {type: n}}``.
    """
    return message_keyed_table(app, "instances", help="Lifecycle of each gateway instance.")
