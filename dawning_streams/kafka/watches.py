"""Two things the worker's consumer watches for, where aiokafka or Faust would
wait for minutes, or for ever: a subscribed topic missing from its metadata, and
a table recovery that receives nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka.cluster import ClusterMetadata
from faust.types import TP

from dawning_streams.kafka import faust_compat

__all__ = ["RECOVERY_STALL_S", "MissingTopicsWatch", "stalled_changelogs"]

logger = logging.getLogger(__name__)

#: How long an active changelog partition may receive nothing, from the start
#: of a recovery, before it is read again from the recovery's offset.
RECOVERY_STALL_S = 15.0
#: A subscribed topic still missing after this is said at WARNING (at first
#: it is a topic just made, as at every first start: INFO).
MISSING_WARN_S = 10.0


def stalled_changelogs(
    started_at: float | None,
    now: float,
    offsets: Mapping[TP, int],
    highwaters: Mapping[TP, int],
    received: Mapping[TP, float],
) -> dict[TP, int]:
    """The active changelog partitions of a recovery that began ``RECOVERY_STALL_S``
    or more before ``now`` and have received no record since, although records
    wait below their highwater; each with the offset to read it again from."""
    if started_at is None or now - started_at < RECOVERY_STALL_S:
        return {}
    return {
        tp: offset + 1
        for tp, offset in offsets.items()
        if tp not in received and highwaters.get(tp, -1) > offset
    }


class MissingTopicsWatch:
    """Asks for ``consumer``'s metadata again every ``every_s`` while a topic it
    subscribes to is missing from it.

    A group's leader assigns the partitions its metadata shows, and leaves out a
    subscribed topic it does not know (Faust logs "Ignoring missing topic"). It
    rejoins when its metadata changes, but aiokafka asks for metadata only every
    ``metadata_max_age_ms`` (Faust: five minutes) unless something else needs
    it. A topic created a moment before the group joined (a table's changelog,
    made by another worker starting at the same time) can be missing from the
    broker's answer, and its partitions, with every handler waiting on that
    table, would stay unassigned for minutes. Kafka's Java client asks again
    after ``retry.backoff.ms`` in that case; this does the same.
    """

    def __init__(self, consumer: Any, every_s: float = 1.0) -> None:
        self.consumer = consumer
        self.every_s = every_s
        self.missing: frozenset[str] = frozenset()
        self._missing_since = 0.0
        self._warned = False
        self._asking: asyncio.TimerHandle | None = None
        faust_compat.on_metadata_update(consumer, self._updated)

    def check(self) -> None:
        """Look without an update (on the consumer's loop): after a failed one,
        which calls no listener, the metadata may lack every topic (Kafka was
        down as the consumer subscribed) and nothing would ask again."""
        self._updated(faust_compat.consumer_metadata(self.consumer))

    def _updated(self, cluster: ClusterMetadata) -> None:
        missing = frozenset(
            topic
            for topic in self.consumer.subscription()
            if not cluster.partitions_for_topic(topic)
        )
        now = time.monotonic()
        if missing != self.missing:
            if missing:
                if not self.missing:
                    self._missing_since, self._warned = now, False
                logger.info(
                    "subscribed topics missing from the cluster's metadata, asked again every "
                    "%g s (their partitions are not assigned until they show): %s",
                    self.every_s,
                    _listed(missing),
                )
            else:
                logger.info("subscribed topics now in the metadata: %s", _listed(self.missing))
            self.missing = missing
        elif missing and not self._warned and now - self._missing_since >= MISSING_WARN_S:
            self._warned = True
            logger.warning(
                "subscribed topics still missing from the cluster's metadata after %.0f s "
                "(their partitions are not assigned): %s",
                now - self._missing_since,
                _listed(missing),
            )
        if missing and self._asking is None:
            self._asking = asyncio.get_running_loop().call_later(self.every_s, self._ask)

    def _ask(self) -> None:
        self._asking = None
        faust_compat.refresh_metadata(self.consumer)


def _listed(topics: frozenset[str], shown: int = 5) -> str:
    names = sorted(topics)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
