"""The operator's dashboard: what each handler, the group, the cluster and the tables are doing.

The pages are handler-first, as Flower's are task-first: one row per handler
with its rate, failures, retries, timers, dead letters, durations and lag, and
its topics folded under it. Cluster facts (offsets, the group's members and
commits, leaders and in-sync replicas) come from the :class:`ClusterSampler`'s
latest snapshot, a few seconds old at most, so no page waits for Kafka.
Throughput and durations are this worker's own, kept in memory. Settings are
shown with every secret masked. This module gathers the data;
:mod:`dawning_streams.ops.dashboard_html` renders it.
"""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dawning_streams.core.errors import DawningError
from dawning_streams.core.settings import shown
from dawning_streams.observability import health
from dawning_streams.observability.metrics import quantile
from dawning_streams.ops import dlq
from dawning_streams.ops.sampler import Partition, Snapshot

if TYPE_CHECKING:
    from dawning_streams.handlers.handler import Handler
    from dawning_streams.ops.host import OpsHost

__all__ = [
    "CHART_BUCKETS",
    "CHART_BUCKET_S",
    "BadReplay",
    "browse",
    "cluster",
    "dead_letter_topics",
    "handler_detail",
    "overview",
    "replay",
    "topics",
]

#: How many dead letters the browse page lists (newest first).
BROWSE_LIMIT = 200
#: The charts: 90 buckets of 10 seconds, the last 15 minutes.
CHART_BUCKET_S = 10
CHART_BUCKETS = 90
_OUTCOMES = ("handled", "failed", "retried", "dead_lettered", "expired", "skipped")


class BadReplay(DawningError):
    """A replay request that names nothing replayable."""


def dead_letter_topics(app: OpsHost) -> list[str]:
    """The app's dead-letter topics."""
    return sorted(_dlq_names(app))


def _dlq_names(app: OpsHost) -> set[str]:
    names = (t.get_topic_name() for t in app.declared_topics)
    return {name for name in names if name.endswith(".dlq")}


def _kind(app: OpsHost, topic: str) -> str:
    if topic in _dlq_names(app):
        return "dead letters"
    if topic.endswith(".timers") or topic.endswith("-timers-changelog"):
        return "timers"
    if topic.endswith("-changelog"):
        return "changelog"
    return "messages"


def _topic_rows(app: OpsHost, partitions: list[Partition]) -> list[dict[str, Any]]:
    """One row per topic: partitions, messages held, and the group's lag."""
    by_topic: dict[str, dict[str, Any]] = {}
    for p in partitions:
        entry = by_topic.setdefault(
            p.topic,
            {
                "topic": p.topic,
                "kind": _kind(app, p.topic),
                "partitions": 0,
                "messages": 0,
                "lag": None,
            },
        )
        entry["partitions"] += 1
        entry["messages"] += p.end - p.begin
        if p.lag is not None:
            entry["lag"] = (entry["lag"] or 0) + p.lag
    return sorted(by_topic.values(), key=lambda e: e["topic"])


def _partition_row(p: Partition) -> dict[str, Any]:
    return {
        "topic": p.topic,
        "partition": p.partition,
        "begin": p.begin,
        "end": p.end,
        "committed": p.committed,
        "lag": p.lag,
        "owner": p.owner,
        "leader": p.leader,
        "replicas": list(p.replicas),
        "isr": list(p.isr),
        "under_replicated": p.under_replicated,
    }


def _handler_topics(handler: Handler[Any]) -> list[str]:
    """The topics that belong to ``handler``: its source, timers, dead letters, timer changelog."""
    names = [handler.topic, handler.timers_topic]
    if handler.options.dead_letter:
        names.append(handler.dead_letter_topic)
    names.append(handler.timers.table.changelog_topic.get_topic_name())
    return names


def _lag(partitions: list[Partition]) -> int | None:
    lags = [p.lag for p in partitions if p.lag is not None]
    return sum(lags) if lags else None


def _series(app: OpsHost, name: str, outcome: str, now: float) -> list[int | None]:
    """``outcome`` counts per chart bucket; None before this worker started."""
    counts: list[int | None] = list(
        app.telemetry.metrics.recent.series(
            name, outcome, bucket_s=CHART_BUCKET_S, buckets=CHART_BUCKETS, now=now
        )
    )
    started = app.sampler.started_at
    for index in range(CHART_BUCKETS):
        bucket_end = now - (CHART_BUCKETS - 1 - index) * CHART_BUCKET_S
        if bucket_end < started:
            counts[index] = None
    return counts


def _kind_of_handler(handler: Handler[Any]) -> str:
    options = handler.options
    if options.ordered:
        return "ordered"
    if options.batch_size > 1:
        return f"batches of {options.batch_size}"
    if options.concurrency > 1:
        return f"concurrency {options.concurrency}"
    return "one at a time"


def _handler_row(
    app: OpsHost, handler: Handler[Any], snapshot: Snapshot, now: float
) -> dict[str, Any]:
    recent = app.telemetry.metrics.recent
    name = handler.name
    window = app.sampler.durations_since(60)
    bounds = app.telemetry.metrics.duration.bounds
    attempts = [
        sum(counts)
        for counts in zip(
            *(
                window.get((name, outcome), [0] * (len(bounds) + 1))
                for outcome in ("handled", "failed")
            ),
            strict=True,
        )
    ]
    stats = handler.timers.stats()
    dead = snapshot.of_topic(handler.dead_letter_topic) if handler.options.dead_letter else []
    return {
        "handler": name,
        "topic": handler.topic,
        "kind": _kind_of_handler(handler),
        **{f"{o}_1m": recent.total(name, o, 60, now) for o in _OUTCOMES},
        **{f"{o}_15m": recent.total(name, o, 900, now) for o in _OUTCOMES},
        "p50_ms": _ms(quantile(attempts, bounds, 0.5)),
        "p99_ms": _ms(quantile(attempts, bounds, 0.99)),
        "lag": _lag(snapshot.of_topic(handler.topic)),
        "timers_lag": _lag(snapshot.of_topic(handler.timers_topic)),
        "dead_letters": sum(p.end - p.begin for p in dead) if dead else None,
        "dead_letter_topic": handler.dead_letter_topic if handler.options.dead_letter else None,
        "timers_pending": stats.pending,
        "next_due": _iso_ms(stats.next_due_ms),
        "held_keys": stats.held_keys,
        "stuck_keys": list(stats.stuck_keys),
        "handled_series": _series(app, name, "handled", now),
        "failed_series": _series(app, name, "failed", now),
    }


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def _iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _cluster_state(app: OpsHost, snapshot: Snapshot) -> dict[str, Any]:
    return {
        "group": app.dawning_settings.kafka.consumer_group_id,
        "state": snapshot.group_state,
        "members": snapshot.members,
        "brokers": len(snapshot.brokers),
        "under_replicated": sum(p.under_replicated for p in snapshot.partitions),
        "sampled_at": _iso_ms(int(snapshot.at * 1000)) if snapshot.at else None,
    }


def _tables(app: OpsHost) -> list[dict[str, Any]]:
    rows = []
    for table in app.tables.values():
        data: Any = table
        rows.append(
            {
                "table": table.name,
                "changelog": table.changelog_topic.get_topic_name(),
                "partitions": table.partitions,
                "local_keys": len(data),
                "sample_keys": [_text(k) for k in itertools.islice(data.keys(), 3)],
            }
        )
    return sorted(rows, key=lambda r: r["table"])


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _header(app: OpsHost, snapshot: Snapshot) -> dict[str, Any]:
    """What every page shows on top."""
    return {
        "instance": app.dawning_settings.instance_name,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "readiness": health.readiness(app),
        "cluster_error": snapshot.error,
    }


async def overview(app: OpsHost) -> dict[str, Any]:
    """The overview page as plain data: one row per handler, and the rest in brief."""
    snapshot = await app.sampler.current()
    now = time.time()
    handlers = [_handler_row(app, h, snapshot, now) for h in app.handlers.values()]
    return {
        **_header(app, snapshot),
        "group": _cluster_state(app, snapshot),
        "handlers": sorted(handlers, key=lambda r: r["handler"]),
        "dead_letters": [
            {"topic": t["topic"], "count": t["messages"]}
            for t in _topic_rows(app, snapshot.partitions)
            if t["kind"] == "dead letters"
        ],
        "chart": {"bucket_s": CHART_BUCKET_S, "buckets": CHART_BUCKETS},
        "tables": _tables(app),
        "settings": shown(app.dawning_settings),
    }


async def handler_detail(app: OpsHost, name: str) -> dict[str, Any] | None:
    """One handler: its row, its topics and partitions, and its lag per partition over time."""
    handler = app.handlers.get(name)
    if handler is None:
        return None
    snapshot = await app.sampler.current()
    now = time.time()
    owned = set(_handler_topics(handler))
    partitions = [p for p in snapshot.partitions if p.topic in owned]
    source = snapshot.of_topic(handler.topic)
    lag = app.sampler.lag_series(
        [(p.topic, p.partition) for p in source], bucket_s=CHART_BUCKET_S, buckets=CHART_BUCKETS
    )
    return {
        **_header(app, snapshot),
        "row": _handler_row(app, handler, snapshot, now),
        "topics": _topic_rows(app, partitions),
        "partitions": [_partition_row(p) for p in partitions if p.topic == handler.topic],
        "lag_series": {f"{p.topic}/{p.partition}": s for p, s in zip(source, lag, strict=True)},
        "chart": {"bucket_s": CHART_BUCKET_S, "buckets": CHART_BUCKETS},
    }


async def topics(app: OpsHost) -> dict[str, Any]:
    """Every topic of the app and each table's changelog, and their partitions."""
    snapshot = await app.sampler.current()
    return {
        **_header(app, snapshot),
        "group": _cluster_state(app, snapshot),
        "topics": _topic_rows(app, snapshot.partitions),
        # Partitions that hold messages or a committed offset: the empty timer
        # topics would only bury the ones that matter.
        "partitions": [
            _partition_row(p)
            for p in snapshot.partitions
            if p.committed is not None or p.end > p.begin
        ],
    }


async def cluster(app: OpsHost) -> dict[str, Any]:
    """The brokers, each partition's leader and in-sync replicas, and the group's members."""
    snapshot = await app.sampler.current()
    led: dict[int, int] = {}
    for p in snapshot.partitions:
        led[p.leader] = led.get(p.leader, 0) + 1
    return {
        **_header(app, snapshot),
        "group": _cluster_state(app, snapshot),
        "brokers": [
            {
                "node_id": b["node_id"],
                "address": f"{b['host']}:{b['port']}",
                "rack": b.get("rack"),
                "controller": b["node_id"] == snapshot.controller,
                "leads": led.get(b["node_id"], 0),
            }
            for b in snapshot.brokers
        ],
        "partitions": [_partition_row(p) for p in snapshot.partitions],
    }


async def browse(app: OpsHost, topic: str) -> list[dlq.DeadLetter]:
    """The newest dead letters of ``topic``."""
    letters = await dlq.read_dead_letters(app, [topic])
    return list(reversed(letters))[:BROWSE_LIMIT]


def _integer(value: object) -> bool:
    """An integer in JSON: ``true`` is a bool, which Python counts as an int."""
    return isinstance(value, int) and not isinstance(value, bool)


async def replay(app: OpsHost, request: Any) -> int:
    """Replay what ``request`` names.

    ``{"topic": T, "partition": p, "offset": o}`` replays one dead letter,
    ``{"topic": T, "all": true}`` every one of ``T``.
    """
    if not isinstance(request, dict) or not isinstance(request.get("topic"), str):
        raise BadReplay(
            'give {"topic": ..., "partition": n, "offset": n} or {"topic": ..., "all": true}'
        )
    unknown = sorted(set(request) - {"topic", "partition", "offset", "all"})
    if unknown:
        raise BadReplay(f"unknown field {unknown[0]!r}; use topic, partition and offset, or all")
    topic = request["topic"]
    if topic not in dead_letter_topics(app):
        raise BadReplay(f"{topic!r} is not a dead-letter topic of this app")
    if "all" in request and not isinstance(request["all"], bool):
        raise BadReplay(f'"all" must be true or false, got {request["all"]!r}')
    everything = request.get("all") is True
    partition, offset = request.get("partition"), request.get("offset")
    if everything and (partition is not None or offset is not None):
        raise BadReplay('give partition and offset, or "all": true, not both')
    if not everything and not (_integer(partition) and _integer(offset)):
        raise BadReplay('partition and offset must be integers (or give "all": true)')
    letters = await dlq.read_dead_letters(app, [topic])
    if everything:
        chosen = letters
    else:
        chosen = [x for x in letters if (x.partition, x.offset) == (partition, offset)]
        if not chosen:
            raise BadReplay(f"no dead letter at {topic}/{partition}/{offset}")
    return await dlq.replay(app, chosen)
