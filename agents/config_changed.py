"""``dawning.config-changed``: keep the ``config`` table, and show it to every instance.

The worker owning a message's partition writes the new value with the next
version into the table; every instance replays the table's changelog into
``app.shared_config`` (see :mod:`dawning_streams.services.shared_config`), so all of
them see every change and can ``app.shared_config.on_change(callback)``.

Views (answered by any instance, from its replica): ``GET /config``,
``GET /config/{group}``, ``GET /config/{group}/{key}``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from faust.web import Request, Response

from dawning_streams import App, ConfigChangedMessage, Handler
from dawning_streams.ops.web import Page, error
from dawning_streams.services.shared_config import config_key
from dawning_streams.tables import config_values
from dawning_streams.tables.config_values import ConfigValue

__all__ = ["install"]


def install(app: App) -> Handler[ConfigChangedMessage]:
    """Declare the config handler, the changelog broadcast and the views."""
    table = config_values.create(app)
    shared = app.shared_config
    shared.follow(app, table)

    @app.handler(ConfigChangedMessage, dedupe=True, name="apply_config_change")
    async def apply_config_change(message: ConfigChangedMessage) -> None:
        """Store the new value under the next version; a redelivery changes nothing."""
        key = config_key(message.config_group, message.config_key)
        previous = table.get(key)
        changed_at = message.timestamp or datetime.now(UTC)
        table[key] = ConfigValue(
            group=message.config_group,
            key=message.config_key,
            value=message.new_value,
            changed_by=message.changed_by,
            changed_at=changed_at.isoformat(),
            version=(previous.version if previous is not None else 0) + 1,
            message_id=str(message.message_id),
        )

    @app.page("/config")
    class AllConfig(Page):
        """Every configuration value."""

        async def get(self, request: Request) -> Response:
            return self.json({"config": [e.as_dict() for e in shared.all()]})

    @app.page("/config/{group}")
    class GroupConfig(Page):
        """The values of one group."""

        async def get(self, request: Request, group: str) -> Response:
            entries = shared.group(group)
            if not entries:
                return error(self, 404, f"no configuration group {group!r}")
            return self.json({"group": group, "config": [e.as_dict() for e in entries]})

    @app.page("/config/{group}/{key}")
    class OneConfig(Page):
        """One value."""

        async def get(self, request: Request, group: str, key: str) -> Response:
            entry = shared.get(group, key)
            if entry is None:
                return error(self, 404, f"no configuration {group}/{key}")
            return self.json(entry.as_dict())

    return apply_config_change
