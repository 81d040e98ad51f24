"""What the operator's tools need of the app: the handlers' view of it, and more.

The web views, the dashboard and its sampler, the search and the CLI commands
read the handlers, the tables and the topics the app declares, the telemetry,
and the state ``/ready`` reports. :class:`OpsHost` names that, and the
application implements it: ops depends on its own interface, not on the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from faust.types import TopicT

from dawning_streams.handlers.host import HandlerHost
from dawning_streams.kafka.outages import Dependency

if TYPE_CHECKING:
    from dawning_streams.ops.sampler import ClusterSampler

__all__ = ["OpsHost"]


class OpsHost(HandlerHost):
    """The app, as the operator's tools see it."""

    #: Kafka's reachability, as ``/ready`` and the metrics report it.
    kafka_state: Dependency
    #: When the rebalance under way started (``time.monotonic()``), if one is.
    rebalance_started_at: float | None
    #: The dashboard's sampler of offsets, rates and lag.
    sampler: ClusterSampler

    @property
    def declared_topics(self) -> list[TopicT]:
        """Message, handler, retry and dead-letter topics (not changelogs)."""
        raise NotImplementedError
