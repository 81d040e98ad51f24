"""What handlers need of the app: Faust's app, and the framework's parts.

A handler is a Faust agent (its subscription and co-partitioning), a lane and
a timers table; it publishes through the bus, keeps markers in Redis, and
counts and traces through the telemetry. :class:`HandlerHost` names exactly
that, and the application implements it, as ``faust.App`` implements Faust's
``AppT``: the handlers depend on this layer's interface, never on the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import faust
from faust.types import TopicT

from dawning_streams.core.records import MessageBase
from dawning_streams.core.settings import Settings
from dawning_streams.kafka.lanes import Lane
from dawning_streams.observability.telemetry import Telemetry

if TYPE_CHECKING:
    from dawning_streams.bus.message_bus import KafkaMessageBus
    from dawning_streams.handlers.handler import Handler
    from dawning_streams.services.redis_pool import RedisPool

__all__ = ["HandlerHost"]


class HandlerHost(faust.App):
    """The app, as its handlers see it."""

    dawning_settings: Settings
    telemetry: Telemetry
    bus: KafkaMessageBus
    redis: RedisPool
    #: Every handler declared, by name.
    handlers: dict[str, Handler[Any]]

    def declare_topic(self, topic: TopicT) -> TopicT:
        """Create ``topic`` at start-up, with the app's other topics."""
        raise NotImplementedError

    def add_lane(self, lane: Lane) -> None:
        """Let ``lane`` take its topic's records from the consumer."""
        raise NotImplementedError

    def topic_for(self, message_type: type[MessageBase]) -> TopicT:
        """The topic of ``message_type`` (``Kafka:Topics``)."""
        raise NotImplementedError
