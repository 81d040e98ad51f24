"""Table ``alert-rules``: the latest state of each alert rule, and its throttle."""

from __future__ import annotations

from typing import Any

from dawning_streams import App
from dawning_streams.kafka.tables import message_keyed_table

__all__ = ["create"]


def create(app: App) -> Any:
    """The table, keyed by ``AlertRuleId``.

    Each value: ``{"rule_name", "severity", "metric_type", "current_value",
    "threshold", "last_alert_at", "last_notified_at", "alerts", "suppressed"}``.
    """
    return message_keyed_table(
        app, "alert-rules", help="Latest state and throttle of each alert rule."
    )
