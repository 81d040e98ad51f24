"""The operator's dashboard: what the cluster, the group, the handlers and the tables are doing.

Everything shown is read when the page is asked for: topic offsets and the
group's members and committed offsets from the brokers (as Kafka UI and
Karafka's Web UI show them), throughput from this worker's metrics, dead-letter
counts from the dead-letter topics' offsets, and each table's local summary.
Settings are shown with every secret masked. This module gathers the data;
:mod:`dawning_streams.ops.dashboard_html` renders it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

from dawning_streams.core.errors import DawningError
from dawning_streams.core.settings import shown
from dawning_streams.kafka import faust_compat
from dawning_streams.kafka.security import client_options
from dawning_streams.observability import health
from dawning_streams.ops import dlq

if TYPE_CHECKING:
    from dawning_streams.application import App

__all__ = [
    "BadReplay",
    "browse",
    "dead_letter_topics",
    "overview",
    "replay",
]

#: How many dead letters the browse page lists (newest first).
BROWSE_LIMIT = 200
#: The page shows what it has, and says the cluster did not answer, after this long.
CLUSTER_TIMEOUT_S = 10.0
_OUTCOMES = ("handled", "failed", "retried", "dead_lettered", "expired")


class BadReplay(DawningError):
    """A replay request that names nothing replayable."""


def dead_letter_topics(app: App) -> list[str]:
    """The app's dead-letter topics."""
    return sorted(_dlq_names(app))


def _dlq_names(app: App) -> set[str]:
    names = (t.get_topic_name() for t in app.declared_topics)
    return {name for name in names if name.endswith(".dlq")}


async def _cluster(app: App) -> dict[str, Any]:
    """Offsets of the app's topics, and the group's members and committed offsets."""
    kafka = app.dawning_settings.kafka
    topics = sorted(
        {t.get_topic_name() for t in app.declared_topics}
        | {table.changelog_topic.get_topic_name() for table in app.tables.values()}
    )
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False, group_id=None)
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await consumer.start()
    try:
        await admin.start()
        cluster = await faust_compat.cluster_metadata(consumer)
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(cluster.partitions_for_topic(topic) or ())
        ]
        begin, end = await asyncio.gather(
            consumer.beginning_offsets(partitions), consumer.end_offsets(partitions)
        )
        [description] = await admin.describe_consumer_groups([kafka.consumer_group_id])
        committed = await admin.list_consumer_group_offsets(kafka.consumer_group_id)
    finally:
        await admin.close()
        await consumer.stop()
    group = description.to_object()["groups"][0]
    owners: dict[TopicPartition, str] = {}
    members = []
    for number, member in enumerate(group["members"], start=1):
        label = f"#{number}"
        assigned = 0
        if member["member_assignment"]:
            decoded = ConsumerProtocolMemberAssignment.decode(member["member_assignment"])
            for topic, numbers in decoded.assignment:
                owners.update({TopicPartition(topic, n): label for n in numbers})
                assigned += len(numbers)
        members.append(
            {
                "member": label,
                "member_id": member["member_id"],
                "host": member["client_host"].lstrip("/"),
                "partitions": assigned,
            }
        )
    rows = []
    for tp in partitions:
        done = committed.get(tp)
        rows.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "begin": begin[tp],
                "end": end[tp],
                "committed": done.offset if done is not None else None,
                "lag": end[tp] - done.offset if done is not None else None,
                "owner": owners.get(tp),
            }
        )
    return {
        "group": kafka.consumer_group_id,
        "state": group["state"],
        "members": members,
        "partitions": rows,
    }


def _topics(rows: list[dict[str, Any]], app: App) -> list[dict[str, Any]]:
    by_topic: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = by_topic.setdefault(
            row["topic"], {"topic": row["topic"], "partitions": 0, "messages": 0, "lag": None}
        )
        entry["partitions"] += 1
        entry["messages"] += row["end"] - row["begin"]
        if row["lag"] is not None:
            entry["lag"] = (entry["lag"] or 0) + row["lag"]
    dead = _dlq_names(app)
    for entry in by_topic.values():
        name = entry["topic"]
        entry["kind"] = (
            "dead letters"
            if name in dead
            else "timers"
            if name.endswith(".timers") or name.endswith("-timers-changelog")
            else "changelog"
            if name.endswith("-changelog")
            else "messages"
        )
    return sorted(by_topic.values(), key=lambda e: e["topic"])


def _throughput(app: App) -> list[dict[str, Any]]:
    recent = app.telemetry.metrics.recent
    now = time.time()
    names = sorted(set(recent.names()) | set(app.handlers))
    return [
        {
            "handler": name,
            **{f"{o}_1m": recent.total(name, o, 60, now) for o in _OUTCOMES},
            **{f"{o}_15m": recent.total(name, o, 900, now) for o in _OUTCOMES},
            "per_minute": recent.series(name, "handled", bucket_s=60, buckets=15, now=now),
            **_timers(app, name),
        }
        for name in names
    ]


def _timers(app: App, name: str) -> dict[str, Any]:
    """What ``name``'s timers hold on this worker: pending, next due, held and stuck keys."""
    handler = app.handlers.get(name)
    if handler is None:
        return {"timers_pending": None, "next_due": None, "held_keys": None, "stuck_keys": []}
    stats = handler.timers.stats()
    next_due = (
        datetime.fromtimestamp(stats.next_due_ms / 1000, UTC).isoformat(timespec="seconds")
        if stats.next_due_ms is not None
        else None
    )
    return {
        "timers_pending": stats.pending,
        "next_due": next_due,
        "held_keys": stats.held_keys,
        "stuck_keys": list(stats.stuck_keys),
    }


def _tables(app: App) -> list[dict[str, Any]]:
    rows = []
    for table in app.tables.values():
        data: Any = table
        keys = list(data.keys())
        rows.append(
            {
                "table": table.name,
                "changelog": table.changelog_topic.get_topic_name(),
                "partitions": table.partitions,
                "local_keys": len(keys),
                "sample_keys": [_text(k) for k in keys[:3]],
            }
        )
    return sorted(rows, key=lambda r: r["table"])


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def overview(app: App) -> dict[str, Any]:
    """Everything the dashboard shows, as plain data."""
    try:
        async with asyncio.timeout(CLUSTER_TIMEOUT_S):
            cluster: dict[str, Any] = await _cluster(app)
        error = None
    except (KafkaError, OSError, TimeoutError) as exc:
        cluster = {
            "group": app.dawning_settings.kafka.consumer_group_id,
            "members": [],
            "partitions": [],
        }
        error = f"could not read the cluster: {exc!r}"
    topics = _topics(cluster["partitions"], app)
    return {
        "instance": app.dawning_settings.instance_name,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "readiness": health.readiness(app),
        "cluster_error": error,
        "topics": topics,
        "group": {k: v for k, v in cluster.items() if k != "partitions"},
        # Partitions that hold messages or a committed offset: the empty retry
        # tiers would only bury the ones that matter.
        "partitions": [
            r for r in cluster["partitions"] if r["committed"] is not None or r["end"] > r["begin"]
        ],
        "dead_letters": [
            {"topic": t["topic"], "count": t["messages"]}
            for t in topics
            if t["kind"] == "dead letters"
        ],
        "throughput": _throughput(app),
        "tables": _tables(app),
        "settings": shown(app.dawning_settings),
    }


async def browse(app: App, topic: str) -> list[dlq.DeadLetter]:
    """The newest dead letters of ``topic``."""
    letters = await dlq.read_dead_letters(app, [topic])
    return list(reversed(letters))[:BROWSE_LIMIT]


async def replay(app: App, request: Any) -> int:
    """Replay what ``request`` names.

    ``{"topic": T, "partition": p, "offset": o}`` replays one dead letter,
    ``{"topic": T, "all": true}`` every one of ``T``.
    """
    if not isinstance(request, dict) or not isinstance(request.get("topic"), str):
        raise BadReplay(
            'give {"topic": ..., "partition": n, "offset": n} or {"topic": ..., "all": true}'
        )
    topic = request["topic"]
    if topic not in dead_letter_topics(app):
        raise BadReplay(f"{topic!r} is not a dead-letter topic of this app")
    letters = await dlq.read_dead_letters(app, [topic])
    if request.get("all") is True:
        chosen = letters
    else:
        partition, offset = request.get("partition"), request.get("offset")
        if not isinstance(partition, int) or not isinstance(offset, int):
            raise BadReplay('partition and offset must be integers (or give "all": true)')
        chosen = [x for x in letters if (x.partition, x.offset) == (partition, offset)]
        if not chosen:
            raise BadReplay(f"no dead letter at {topic}/{partition}/{offset}")
    return await dlq.replay(app, chosen)
