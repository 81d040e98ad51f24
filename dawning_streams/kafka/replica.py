"""Every instance's copy of a changelog-backed table.

A Faust table is partitioned: each worker holds only the keys of its
partitions. A :class:`TableReplica` follows the table's changelog (compacted,
from the beginning) on every instance, outside the consumer group, so any
instance can answer for all keys and hear every change. This is what Faust's
GlobalTable promises, built on a plain group-less consumer instead
(GlobalTable has open multi-instance bugs: faust-streaming #283, #212).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from aiokafka.structs import ConsumerRecord

from dawning_streams.core.settings import Settings
from dawning_streams.kafka.broadcast import Broadcast

__all__ = ["TableHost", "TableReplica"]

logger = logging.getLogger(__name__)

Subscriber = Callable[[str, Any], Awaitable[None] | None]


class TableHost(Protocol):
    """What following a table needs of the app: its settings and serializers, and
    a place for the changelog among the topics and for the follower among the
    services it starts."""

    dawning_settings: Settings
    serializers: Any

    def declare_topic(self, topic: Any) -> Any: ...

    def add_dependency(self, service: Any) -> Any: ...


class TableReplica:
    """Key to latest value of one table, on this instance, with change callbacks."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        #: (callback, whether it hears the history replayed at start-up too)
        self._subscribers: list[tuple[Subscriber, bool]] = []
        self._load_key: Callable[[bytes | None], Any] = lambda raw: raw
        self._load_value: Callable[[bytes], Any] = orjson.loads
        self._broadcast: Broadcast | None = None

    def follow(self, app: TableHost, table: Any) -> Broadcast:
        """Start following ``table``'s changelog when ``app`` starts.

        The changelog is declared with the app's other topics, so it exists
        before the first instance starts following it.
        """
        app.declare_topic(table.changelog_topic)
        self._load_key = lambda raw: app.serializers.loads_key(
            table.key_type, raw, serializer=table.key_serializer
        )
        self._load_value = lambda raw: app.serializers.loads_value(
            table.value_type, raw, serializer=table.value_serializer
        )
        broadcast = Broadcast(
            app.dawning_settings.kafka,
            table.changelog_topic.get_topic_name(),
            self.apply,
            from_beginning=True,
        )
        app.add_dependency(broadcast)
        self._broadcast = broadcast
        return broadcast

    def subscribe(self, callback: Subscriber, *, replay: bool = False) -> Subscriber:
        """Call ``callback(key, value)`` on every change made from the start of
        this instance on; with ``replay``, also on every change the changelog
        held before (so the callback sees the table's history at start-up)."""
        self._subscribers.append((callback, replay))
        return callback

    async def apply(self, record: ConsumerRecord) -> None:
        """Take one changelog record in and tell the subscribers."""
        loaded = self._load_key(record.key)
        key = loaded.decode("utf-8", "replace") if isinstance(loaded, bytes) else str(loaded)
        value = self._load_value(record.value) if record.value is not None else None
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        history = self._broadcast is not None and self._broadcast.replaying(record)
        for callback, replay in list(self._subscribers):
            if history and not replay:
                continue
            try:
                result = callback(key, value)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("subscriber %r failed on %s", callback, key)
