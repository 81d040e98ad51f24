"""What the dashboard shows of the cluster, read every few seconds by one service.

A page never talks to Kafka: it reads the latest :class:`Snapshot`, which
:class:`ClusterSampler` refreshes every :data:`SAMPLE_INTERVAL_S` seconds with
one long-lived admin client. Each
sample reads the brokers, every partition's leader and in-sync replicas, the
app's topics' first and end offsets, and the consumer group's members and
committed offsets. The sampler also keeps 15 minutes of history, in memory:
the group's lag per partition, and this worker's handler durations (so a page
can give p50/p99 over the last minute without a cost per message).

When Kafka does not answer, the last snapshot stays, marked with the error and
its age; the client is made anew for the next sample. Nothing it asks creates
a topic, even on a broker that creates any topic a client names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError
from mode import Service

from dawning_streams.kafka import faust_compat
from dawning_streams.kafka.security import client_options

if TYPE_CHECKING:
    from dawning_streams.ops.host import OpsHost

__all__ = ["HISTORY_S", "SAMPLE_INTERVAL_S", "ClusterSampler", "Partition", "Snapshot"]

logger = logging.getLogger(__name__)

#: How often the cluster is read; a page is at most this old (plus one sample's time).
SAMPLE_INTERVAL_S = 5.0
#: How far back the charts and windowed figures reach.
HISTORY_S = 900
#: One sample's deadline: a broker that does not answer costs no more than this.
SAMPLE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of one of the app's topics, as the last sample saw it."""

    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    begin: int
    end: int
    #: The group's committed offset, or None when it has committed none.
    committed: int | None
    #: The group member (``#1``, ``#2``, ...) that holds it, or None.
    owner: str | None
    #: Where the group starts a partition it has committed nothing on:
    #: ``Kafka:AutoOffsetReset`` is earliest (its log start) or not (unknown).
    starts_at_begin: bool = True

    @property
    def lag(self) -> int | None:
        """Records the group has yet to commit; with nothing committed, all of
        them when it starts at the beginning (a first record stuck in its
        handler is lag too), and unknown otherwise."""
        if self.committed is not None:
            return self.end - self.committed
        return self.end - self.begin if self.starts_at_begin else None

    @property
    def under_replicated(self) -> bool:
        return len(self.isr) < len(self.replicas)


@dataclass(slots=True)
class Snapshot:
    """The cluster and the group as one sample read them."""

    #: time.time() of the sample (0 before the first).
    at: float = 0.0
    brokers: list[dict[str, Any]] = field(default_factory=list)
    controller: int | None = None
    partitions: list[Partition] = field(default_factory=list)
    group_state: str = "?"
    members: list[dict[str, Any]] = field(default_factory=list)
    #: Why the latest sample failed (the rest is from the last one that did not).
    error: str | None = None

    def of_topic(self, topic: str) -> list[Partition]:
        return [p for p in self.partitions if p.topic == topic]


class ClusterSampler(Service):
    """Reads the cluster every few seconds and keeps the dashboard's history."""

    def __init__(self, app: OpsHost, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.snapshot = Snapshot()
        self.started_at = time.time()
        #: (time, {(topic, partition): lag}), oldest first.
        self.lag_history: deque[tuple[float, dict[tuple[str, int], int]]] = deque(
            maxlen=int(HISTORY_S / SAMPLE_INTERVAL_S) + 1
        )
        #: (time, {(handler, outcome): bucket counts}) of this worker's durations.
        self.duration_history: deque[tuple[float, dict[tuple[str, str], list[int]]]] = deque(
            maxlen=int(HISTORY_S / SAMPLE_INTERVAL_S) + 1
        )
        #: How many samples were taken (failed ones included).
        self.samples = 0
        self._lock = asyncio.Lock()
        self._current: asyncio.Future[Snapshot] | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def on_stop(self) -> None:
        # A sample under way (one waiting on an unreachable broker) is cancelled,
        # so stopping never waits for it; then its clients are closed.
        current = self._current
        if current is not None and not current.done():
            current.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await current
        await self._close()

    @Service.task
    async def _sampling(self) -> None:
        while not self.should_stop:
            self._current = asyncio.ensure_future(self.sample())
            try:
                await self._current
            except asyncio.CancelledError:
                if self.should_stop:
                    return
                raise
            await self.sleep(SAMPLE_INTERVAL_S)

    async def sample(self) -> Snapshot:
        """Read the cluster now; on failure keep the last snapshot and say why."""
        async with self._lock:
            await self._sample()
        return self.snapshot

    async def current(self) -> Snapshot:
        """The latest snapshot; read now only before the first sample."""
        if self.samples == 0:
            return await self.sample()
        return self.snapshot

    async def _sample(self) -> None:
        self.samples += 1
        now = time.time()
        self.duration_history.append((now, self.app.telemetry.metrics.duration.counts()))
        try:
            async with asyncio.timeout(SAMPLE_TIMEOUT_S):
                snapshot = await self._read()
        except Exception as exc:  # the dashboard's view must never stop the worker
            self.snapshot.error = f"could not read the cluster: {exc!r}"
            await self._close()
        else:
            self.snapshot = snapshot
            self.lag_history.append(
                (
                    snapshot.at,
                    {
                        (p.topic, p.partition): p.lag
                        for p in snapshot.partitions
                        if p.lag is not None
                    },
                )
            )

    def topics(self) -> list[str]:
        """The app's topics and its tables' changelogs."""
        app = self.app
        return sorted(
            {t.get_topic_name() for t in app.declared_topics}
            | {table.changelog_topic.get_topic_name() for table in app.tables.values()}
        )

    async def _client(self) -> AIOKafkaAdminClient:
        admin = self._admin
        if admin is None:
            admin = AIOKafkaAdminClient(**client_options(self.app.dawning_settings.kafka))
            # Kept first, so a start that fails is closed by _close.
            self._admin = admin
            await admin.start()
        return admin

    async def _close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is None:
            return
        try:
            async with asyncio.timeout(SAMPLE_TIMEOUT_S):
                await admin.close()
        except (KafkaError, OSError, TimeoutError) as exc:
            logger.debug("closing the dashboard's admin client: %r", exc)

    async def _read(self) -> Snapshot:
        admin = await self._client()
        group_id = self.app.dawning_settings.kafka.consumer_group_id
        cluster, described = await asyncio.gather(
            admin.describe_cluster(), faust_compat.describe_topics(admin, self.topics())
        )
        layout = {
            TopicPartition(topic["topic"], p["partition"]): p
            for topic in described
            if topic["error_code"] == 0
            for p in topic["partitions"]
        }
        tps = sorted(layout)
        # Asked of each partition's leader, for the partitions just described:
        # nothing here names a topic that may be gone, which a broker that
        # creates topics on demand would bring back.
        led: dict[int, list[TopicPartition]] = {}
        for tp in tps:
            if layout[tp]["leader"] >= 0:
                led.setdefault(layout[tp]["leader"], []).append(tp)
        asked = [
            faust_compat.list_offsets(admin, leader, led[leader], which)
            for which in (faust_compat.EARLIEST, faust_compat.LATEST)
            for leader in led
        ]
        offsets, groups, committed = await asyncio.gather(
            asyncio.gather(*asked),
            admin.describe_consumer_groups([group_id]),
            admin.list_consumer_group_offsets(group_id),
        )
        # A partition without a leader (a broker failing over) keeps the offsets
        # of the last sample until it has one again.
        before = {(p.topic, p.partition): p for p in self.snapshot.partitions}
        begin = {tp: p.begin for tp, p in before.items()}
        end = {tp: p.end for tp, p in before.items()}
        for n, found in enumerate(offsets):
            (begin if n < len(led) else end).update(found)
        group = groups[0].to_object()["groups"][0]
        owners, members = _members(group["members"])
        from_earliest = self.app.dawning_settings.kafka.auto_offset_reset == "earliest"
        return Snapshot(
            at=time.time(),
            brokers=sorted(cluster["brokers"], key=lambda b: b["node_id"]),
            controller=cluster.get("controller_id"),
            partitions=[
                Partition(
                    topic=tp.topic,
                    partition=tp.partition,
                    leader=layout[tp]["leader"],
                    replicas=tuple(layout[tp]["replicas"]),
                    isr=tuple(layout[tp]["isr"]),
                    begin=begin.get((tp.topic, tp.partition), 0),
                    end=end.get((tp.topic, tp.partition), 0),
                    committed=committed[tp].offset if tp in committed else None,
                    owner=owners.get(tp),
                    starts_at_begin=from_earliest,
                )
                for tp in tps
            ],
            group_state=group["state"],
            members=members,
        )

    def lag_series(
        self, tps: Iterable[tuple[str, int]], *, bucket_s: int, buckets: int
    ) -> list[list[int | None]]:
        """Per partition, its lag at the end of each ``bucket_s`` bucket (None: no sample)."""
        wanted = list(tps)
        end = time.time()
        series: list[list[int | None]] = [[None] * buckets for _ in wanted]
        for at, lags in self.lag_history:
            index = buckets - 1 - int((end - at) // bucket_s)
            if 0 <= index < buckets:
                for row, tp in zip(series, wanted, strict=True):
                    if tp in lags:
                        row[index] = lags[tp]
        return series

    def durations_since(self, seconds: float) -> dict[tuple[str, str], list[int]]:
        """This worker's duration bucket counts recorded in the last ``seconds``."""
        now_counts = self.app.telemetry.metrics.duration.counts()
        since = time.time() - seconds
        before: dict[tuple[str, str], list[int]] = {}
        for at, counts in self.duration_history:
            if at > since:
                break
            before = counts
        return {
            key: [n - b for n, b in zip(counts, before.get(key, [0] * len(counts)), strict=True)]
            for key, counts in now_counts.items()
        }


def _members(
    described: list[dict[str, Any]],
) -> tuple[dict[TopicPartition, str], list[dict[str, Any]]]:
    """Who holds which partition, each member numbered in the order Kafka lists them."""
    owners: dict[TopicPartition, str] = {}
    members = []
    for number, member in enumerate(described, start=1):
        label = f"#{number}"
        held: list[str] = []
        if member["member_assignment"]:
            decoded = ConsumerProtocolMemberAssignment.decode(member["member_assignment"])
            for topic, numbers in decoded.assignment:
                owners.update({TopicPartition(topic, n): label for n in numbers})
                held.extend(f"{topic}/{n}" for n in sorted(numbers))
        members.append(
            {
                "member": label,
                "member_id": member["member_id"],
                "host": member["client_host"].lstrip("/"),
                "partitions": sorted(held),
            }
        )
    return owners, members
