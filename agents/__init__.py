"""The Dawning agents, one module per topic; installed as ``dawning_streams.agents``.

Each module declares its handlers with ``install(app)``, so the worker's app and
a test's app get the same agents; ``install(app)`` here installs them all.
"""

from __future__ import annotations

from dawning_streams.application import App

from . import (
    alert_notification,
    audit_log,
    cache_invalidation,
    config_changed,
    email_queue,
    system_event,
    user_event,
)

__all__ = [
    "alert_notification",
    "audit_log",
    "cache_invalidation",
    "config_changed",
    "email_queue",
    "install",
    "system_event",
    "user_event",
]


def install(app: App) -> None:
    """Declare every Dawning agent on ``app``."""
    audit_log.install(app)
    alert_notification.install(app)
    email_queue.install(app)
    config_changed.install(app)
    cache_invalidation.install(app)
    user_event.install(app)
    system_event.install(app)
