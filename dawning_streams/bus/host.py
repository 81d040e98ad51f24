"""What the bus needs of the app it publishes for: a Protocol, not the App.

The bus reads the settings, stamps and counts through the telemetry, routes a
message type to its topic, and declares the app's topics before a first send.
In a worker it also shares the Faust producer's start (the topics are declared
through it).
"""

from __future__ import annotations

from typing import Any, Protocol

from faust.types import TopicT

from dawning_streams.core.records import MessageBase
from dawning_streams.core.settings import Settings
from dawning_streams.observability.telemetry import Telemetry

__all__ = ["BusHost"]


class BusHost(Protocol):
    """The app, as the bus sees it."""

    #: Faust's producer: the worker's topics are declared through it.
    producer: Any

    @property
    def dawning_settings(self) -> Settings: ...

    @property
    def telemetry(self) -> Telemetry: ...

    @property
    def declared_topics(self) -> list[TopicT]:
        """Message, handler, retry and dead-letter topics (not changelogs)."""
        ...

    def topic_for(self, message_type: type[MessageBase]) -> TopicT: ...

    async def maybe_start_producer(self) -> Any: ...
