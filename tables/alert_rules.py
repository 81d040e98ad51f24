"""Table ``alert-rules``: the latest state of each alert rule, and its throttle."""

from __future__ import annotations

import faust

from dawning_streams import App
from dawning_streams.kafka.tables import message_keyed_table

__all__ = ["AlertRuleState", "create"]


class AlertRuleState(faust.Record, include_metadata=False):
    """One rule's latest alert, when it last notified (ISO 8601), and how many
    alerts it raised and how many of them the throttle suppressed."""

    rule_name: str
    severity: str
    metric_type: str
    current_value: float
    threshold: float
    last_alert_at: str
    alerts: int
    suppressed: int
    description: str | None = None
    last_notified_at: str | None = None


def create(app: App) -> faust.Table:
    """The table, keyed by ``AlertRuleId``."""
    return message_keyed_table(
        app,
        "alert-rules",
        value_type=AlertRuleState,
        help="Latest state and throttle of each alert rule.",
    )
