"""``dawning.system-event``: the lifecycle of every instance, and this one's reports.

Each worker publishes its own ``instance.started``, ``instance.heartbeat``
(every 30 s), ``instance.config_reloaded`` (when a config change reaches it)
and ``instance.stopped``; the .NET gateway's instances may publish the same.
The handler records them in the ``instances`` table, and ``GET /instances``
lists every instance with its last-seen time, from any worker.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from faust.web import Request, Response
from mode import Service

from dawning_streams import App, Handler, SystemEventMessage
from dawning_streams.kafka.replica import TableReplica
from dawning_streams.ops.web import Page
from dawning_streams.services.shared_config import ConfigEntry
from dawning_streams.tables import instances
from dawning_streams.tables.instances import InstanceState

__all__ = ["HEARTBEAT_S", "LifecycleReporter", "install"]

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
_MOMENTS = {
    "instance.started": "started_at",
    "instance.stopped": "stopped_at",
    "instance.config_reloaded": "config_reloaded_at",
}


class LifecycleReporter(Service):
    """Publishes this instance's lifecycle events."""

    def __init__(self, app: App, **kwargs: Any) -> None:
        self.app = app
        #: Whether ``instance.started`` was reported: a worker that never got
        #: that far (Kafka unreachable, say) reports no stop either.
        self.reported_start = False
        super().__init__(**kwargs)

    async def report(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        try:
            await self.app.bus.publish(SystemEventMessage(event_type=event_type, data=data))
        except Exception:
            logger.warning("could not report %s", event_type, exc_info=True)

    async def on_started(self) -> None:
        await self.report("instance.started", {"web_port": self.app.dawning_settings.web.port})
        self.reported_start = True

    @Service.timer(HEARTBEAT_S)
    async def _heartbeat(self) -> None:
        await self.report("instance.heartbeat")


def install(app: App) -> Handler[SystemEventMessage]:
    """Declare the system-event handler, this instance's reporter and ``GET /instances``."""
    table = instances.create(app)
    seen = TableReplica()
    seen.follow(app, table)
    reporter = LifecycleReporter(app)
    app.add_dependency(reporter)

    # Sent while the producer still runs: after the consumer stops, before the rest.
    # Not with Kafka unreachable: it would wait the send timeout, then be spooled
    # and reported by the next start, stopped at a time that is no longer true.
    @app.on_before_shutdown.connect
    async def report_stopped(sender: App, **kwargs: Any) -> None:
        if reporter.reported_start and app.kafka_state.down_since is None:
            await reporter.report("instance.stopped")

    @app.shared_config.on_change
    async def config_reloaded(entry: ConfigEntry) -> None:
        await reporter.report(
            "instance.config_reloaded",
            {"group": entry.group, "key": entry.key, "version": entry.version},
        )

    @app.handler(SystemEventMessage, dedupe=True, name="record_system_event")
    async def record_system_event(message: SystemEventMessage) -> None:
        """Note the event against its instance; a redelivery counts once."""
        name = message.source_instance or "unknown"
        state = table.get(name) or InstanceState(instance=name, events={})
        at = (message.timestamp or datetime.now(UTC)).isoformat()
        events = dict(state.events)
        events[message.event_type] = events.get(message.event_type, 0) + 1
        moment = {_MOMENTS[message.event_type]: at} if message.event_type in _MOMENTS else {}
        table[name] = state.derive(
            last_event=message.event_type, last_seen=at, events=events, **moment
        )

    @app.page("/instances")
    class InstancesView(Page):
        """Every instance that has reported, with its last-seen time."""

        async def get(self, request: Request) -> Response:
            rows = [state.asdict() for _, state in sorted(seen.values.items())]
            return self.json({"instances": rows})

    return record_system_event
