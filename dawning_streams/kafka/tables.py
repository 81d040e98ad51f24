"""Tables keyed exactly like their messages, and tables of markers that expire."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import faust
import orjson
from faust.types import TP
from mode import Service

from dawning_streams.kafka import faust_compat

__all__ = ["MarkerTable", "message_keyed_table"]

logger = logging.getLogger(__name__)

#: How many entries a purge looks at before it lets the event loop run again.
_PURGE_CHUNK = 5_000
#: The first and the longest pause between tries of a marker write that failed.
_RETRY_FIRST_S, _RETRY_MAX_S = 0.5, 10.0


def message_keyed_table(
    app: faust.App, name: str, *, value_type: type[faust.Record], help: str
) -> Any:
    """A changelog-backed table keyed like the messages, with typed values.

    Keys are ``str``, kept as their UTF-8 bytes: the bytes the producer
    partitions by. (Faust would serialise a ``str`` key as JSON, with quotes,
    and its web routing would then hash other bytes than the producer did and
    send a request to the wrong worker.) Values are ``value_type`` records,
    plain JSON objects on the changelog (declare them with ``include_metadata=False``).
    """
    if not (isinstance(value_type, type) and issubclass(value_type, faust.Record)):
        raise TypeError(
            f"table {name!r}: value_type must be a faust.Record type, got {value_type!r}"
        )
    if faust_compat.record_metadata_included(value_type):
        raise TypeError(
            f"table {name!r}: declare {value_type.__name__} with include_metadata=False, "
            "or Faust writes its Python module path into every changelog value"
        )
    table: Any = app.Table(
        name,
        default=None,
        partitions=app.conf.topic_partitions,
        key_type=str,
        value_type=value_type,
        help=help,
    )
    # Faust picks "json" for a str key type, and has made the changelog topic
    # with it already.
    table.key_serializer = "raw"
    changelog = table.changelog_topic.derive(key_serializer="raw")
    # derive() drops acks=False: an acking changelog is one Faust's livelock
    # check expects a stream to read, and from five minutes after the start it
    # would log an ERROR every few seconds for each partition the table writes.
    changelog.acks = False
    table.changelog_topic = changelog
    return table


class MarkerTable(faust.Table):  # type: ignore[misc]
    """A changelog-backed set of ids, each kept for ``ttl_s`` after it was marked.

    For a handler that must not repeat an effect (a mail sent) when its message
    is delivered again: it asks :meth:`marked` first, and after the effect
    awaits :meth:`mark`, which returns once the broker has the marker. The
    marker goes to the changelog partition of the source record's partition,
    so the worker that owns a source partition has its markers (recovered from
    the changelog before it takes the partition's records, on a restart or
    after a rebalance), and a redelivery, which comes on the same partition,
    meets them.

    Each worker purges the markers of the partitions it owns every
    ``purge_every_s``: those marked more than ``ttl_s`` ago are removed, with a
    tombstone on the compacted changelog, so the table and its recovery stay
    bounded by what was marked in the last ``ttl_s``. Values are JSON,
    ``{"p": partition, "at": epoch seconds}``.
    """

    def __init__(
        self,
        app: faust.App,
        *,
        name: str,
        ttl_s: float,
        purge_every_s: float = 3600.0,
        help: str,
        **kwargs: Any,
    ) -> None:
        if not ttl_s > 0 or not purge_every_s > 0:
            raise ValueError(
                f"table {name!r}: ttl_s and purge_every_s must be positive, "
                f"got {ttl_s!r} and {purge_every_s!r}"
            )
        self.ttl_s = ttl_s
        self.purge_every_s = purge_every_s
        #: Partitions this worker owns and has recovered; empty while rebalancing.
        self.owned: set[int] = set()
        super().__init__(
            app,
            name=name,
            default=None,
            key_type=bytes,
            value_type=bytes,
            partitions=app.conf.topic_partitions,
            beacon=app.tables.beacon,  # type: ignore[attr-defined]
            help=help,
            # Compaction only reaches closed segments: rolled daily, a purged
            # marker leaves the changelog a day or two after its tombstone,
            # not after the broker's default week.
            extra_topic_configs={"segment.ms": str(24 * 3600 * 1000)},
            **kwargs,
        )

    @classmethod
    def declare(
        cls, app: faust.App, name: str, *, ttl_s: float, help: str, **kwargs: Any
    ) -> MarkerTable:
        """A new marker table, added to ``app``'s tables."""
        table = cls(app, name=name, ttl_s=ttl_s, help=help, **kwargs)
        app.tables.add(table)  # type: ignore[attr-defined]
        return table

    def marked(self, marker_id: str) -> bool:
        """Whether ``marker_id`` was marked (and not purged yet)."""
        return marker_id.encode() in self.data

    def _marker(self, marker_id: str, partition: int) -> tuple[bytes, bytes]:
        key = marker_id.encode()
        value = bytes(memoryview(orjson.dumps({"p": partition, "at": math.floor(time.time())})))
        self.data[key] = value
        return key, value

    def mark_soon(self, marker_id: str, partition: int) -> None:
        """Mark ``marker_id`` in ``partition`` (the source record's) without waiting:
        the write is queued like a table write, and an offset commit waits for it."""
        self.send_changelog(partition, *self._marker(marker_id, partition))

    async def mark(self, marker_id: str, partition: int) -> None:
        """Mark ``marker_id`` in ``partition`` (the source record's); returns once the
        broker has it.

        A write the producer fails is tried again, with longer pauses, until it
        is sent: until then the effect it records is not final, and giving up
        would have the handler's retry repeat it. It stops trying when the
        partition is taken from this worker or the worker stops; the next owner
        then handles the record again, the one repeat a crash can cause.
        """
        key, value = self._marker(marker_id, partition)
        pause_s = _RETRY_FIRST_S
        while True:
            try:
                await self.send_changelog(partition, key, value)
                return
            except Exception as exc:  # the producer's error: the broker does not have it
                if self.should_stop or (self.owned and partition not in self.owned):
                    logger.warning(
                        "%s: marker %s not written (%r); partition %d's next owner "
                        "handles its record again",
                        self.name,
                        marker_id,
                        exc,
                        partition,
                    )
                    return
                logger.warning(
                    "%s: marker write failed (%r); trying again in %.1f s",
                    self.name,
                    exc,
                    pause_s,
                )
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, _RETRY_MAX_S)

    async def purge(self, now_s: float | None = None) -> int:
        """Remove the markers of owned partitions marked ``ttl_s`` before ``now_s``
        (default: now); returns how many, once the broker has their tombstones."""
        cutoff_s = (time.time() if now_s is None else now_s) - self.ttl_s
        store = self.data
        owned = set(self.owned)
        # A copy: markers written while this yields to the loop must not
        # change what it iterates.
        entries = list(store.items())
        tombstones = []
        for n, (key, value) in enumerate(entries, start=1):
            if value is not None:
                marker = orjson.loads(value)
                if marker["p"] in owned and marker["at"] < cutoff_s and store.get(key) == value:
                    store.pop(key, None)
                    tombstones.append(self.send_changelog(marker["p"], key, None))
            if n % _PURGE_CHUNK == 0:
                await asyncio.sleep(0)
        if tombstones:
            await asyncio.gather(*tombstones)
            logger.info(
                "%s: purged %d markers older than %.0f s", self.name, len(tombstones), self.ttl_s
            )
        return len(tombstones)

    @Service.task
    async def _purging(self) -> None:
        async for _ in self.itertimer(self.purge_every_s, name=f"{self.name}-purge"):
            if not self.owned:
                continue
            try:
                await self.purge()
            except Exception:  # the next round tries again; the markers only wait longer
                logger.warning("%s: purge failed", self.name, exc_info=True)

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        # Nothing is purged until the new assignment is recovered.
        self.owned = set()
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        owned = {tp.partition for tp in active_tps}
        # Markers this worker wrote on partitions another worker owns now: that
        # worker has them from the changelog.
        store = self.data
        for key, value in list(store.items()):
            if value is not None and orjson.loads(value)["p"] not in owned:
                store.pop(key, None)
        self.owned = owned
