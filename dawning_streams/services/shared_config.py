"""Shared configuration: every instance's view of the ``config`` table.

The config agent writes each change into a changelog-backed table on the
worker that owns its partition; every instance replicates that table (see
:mod:`dawning_streams.kafka.replica`), so each holds every current value and hears
every change, whichever worker wrote it. Application code subscribes with
:meth:`SharedConfig.on_change`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from dawning_streams.kafka.replica import TableReplica

__all__ = ["ConfigEntry", "SharedConfig", "config_key"]


def config_key(group: str, key: str) -> str:
    """The table key of (group, key); also the messages' Kafka key."""
    return f"{group}:{key}"


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """One configuration value as the table holds it."""

    group: str
    key: str
    value: str | None
    changed_by: str | None
    changed_at: str
    version: int

    @classmethod
    def of(cls, value: Any) -> ConfigEntry:
        """The entry of a table value (a record with these fields)."""
        fields: dict[str, Any] = {name: getattr(value, name, None) for name in cls.__slots__}  # type: ignore[attr-defined]
        return cls(**fields)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


class SharedConfig(TableReplica):
    """This instance's replica of every config value."""

    def on_change(
        self, callback: Callable[[ConfigEntry], Awaitable[None] | None], *, replay: bool = False
    ) -> Callable[[ConfigEntry], Awaitable[None] | None]:
        """Call ``callback(entry)`` on every change made from this instance's start
        on; with ``replay=True`` also on every earlier change, in order, as the
        instance catches up at start-up. Usable as a decorator (without ``replay``)."""

        def deliver(key: str, value: Any) -> Awaitable[None] | None:
            return callback(ConfigEntry.of(value)) if value is not None else None

        self.subscribe(deliver, replay=replay)
        return callback

    def get(self, group: str, key: str) -> ConfigEntry | None:
        value = self.values.get(config_key(group, key))
        return ConfigEntry.of(value) if value is not None else None

    def group(self, group: str) -> list[ConfigEntry]:
        return [e for e in self.all() if e.group == group]

    def all(self) -> list[ConfigEntry]:
        return sorted(map(ConfigEntry.of, self.values.values()), key=lambda e: (e.group, e.key))
