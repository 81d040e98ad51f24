"""The operator's dashboard: what the cluster, the group, the handlers and the tables are doing.

Everything shown is read when the page is asked for: topic offsets and the
group's members and committed offsets from the brokers (as Kafka UI and
Karafka's Web UI show them), throughput from this worker's metrics, dead-letter
counts from the dead-letter topics' offsets, and each table's local summary.
Settings are shown with every secret masked. HTML is rendered here, escaped,
with no template engine and no scripts but the replay button's.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

from . import dlq, health
from .errors import DawningError
from .kafka_security import client_options
from .settings import shown

if TYPE_CHECKING:
    from .application import App

__all__ = [
    "BadReplay",
    "browse",
    "dead_letter_topics",
    "overview",
    "render_dead_letters",
    "render_overview",
    "replay",
]

#: How many dead letters the browse page lists (newest first).
BROWSE_LIMIT = 200
#: The page shows what it has, and says the cluster did not answer, after this long.
CLUSTER_TIMEOUT_S = 10.0
_OUTCOMES = ("handled", "failed", "retried", "dead_lettered")


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
        cluster = await consumer._client.fetch_all_metadata()
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
            else "retry"
            if ".retry-" in name or name.endswith(".delay")
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
        }
        for name in names
    ]


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


# -- HTML ------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f4f6f9}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:baseline}
header h1{font-size:18px;margin:0}header a{color:#9ec1ff}
main{padding:16px 24px;display:grid;gap:16px;
  grid-template-columns:repeat(auto-fit,minmax(520px,1fr))}
section{background:#fff;border-radius:6px;padding:12px 16px;box-shadow:0 1px 2px #0002}
h2{font-size:15px;margin:0 0 8px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #e5e8ee;
  font-variant-numeric:tabular-nums}
th{font-weight:600;color:#556}td.n,th.n{text-align:right}
.ok{color:#18794e;font-weight:600}.bad{color:#c4320a;font-weight:600}.muted{color:#778}
.bar{display:inline-block;width:6px;margin-right:1px;background:#3b82f6;vertical-align:bottom}
button{font:inherit;padding:2px 10px}input{font:inherit;padding:2px 6px}
pre{white-space:pre-wrap;max-height:8em;overflow:auto;background:#f4f6f9;padding:4px;margin:0}
"""

_REPLAY_SCRIPT = """
<script>
const tokenInput = document.getElementById('token');
tokenInput.value = sessionStorage.getItem('dawning-admin-token') || '';
tokenInput.addEventListener(
  'change', () => sessionStorage.setItem('dawning-admin-token', tokenInput.value));
async function replay(body) {
  const response = await fetch('/api/dead-letters/replay', {
    method: 'POST',
    headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + tokenInput.value},
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  document.getElementById('result').textContent =
    response.ok ? `replayed ${answer.replayed} message(s)` : `${response.status}: ${answer.error}`;
}
</script>
"""


def _page(title: str, body: str, *, refresh_s: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:  # type: ignore[assignment]
    if not rows:
        return '<p class="muted">none</p>'
    head = "".join(
        f'<th class="n">{escape(h)}</th>' if i in numeric else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_cell(c)}</td>' if i in numeric else f"<td>{_cell(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Html(str):
    """Markup built here, inserted as it is."""


def _cell(value: Any) -> str:
    if isinstance(value, _Html):
        return str(value)
    if value is None:
        return '<span class="muted">-</span>'
    return escape(str(value))


def _bars(counts: list[int]) -> _Html:
    top = max(counts) or 1
    bars = "".join(
        f'<span class="bar" title="{n}" style="height:{max(1, round(18 * n / top))}px"></span>'
        for n in counts
    )
    return _Html(f'<span title="handled per minute, last 15 minutes">{bars}</span>')


def render_overview(data: dict[str, Any]) -> str:
    """The dashboard page."""
    ready = data["readiness"]
    checks = ", ".join(
        f"{name} {'ok' if check['ok'] else 'NOT ok'}" for name, check in ready["checks"].items()
    )
    recovery = ready["checks"]["recovery"]
    state = (
        '<span class="ok">ready</span>'
        if ready["ready"]
        else f'<span class="bad">not ready</span> <span class="muted">({escape(checks)}'
        + ("; recovery is stuck" if recovery.get("stuck") else "")
        + ")</span>"
    )
    group = data["group"]
    sections = [
        _section(
            "Topics",
            _table(
                ["topic", "kind", "partitions", "messages", "group lag"],
                [
                    [t["topic"], t["kind"], t["partitions"], t["messages"], t["lag"]]
                    for t in data["topics"]
                ],
                {2, 3, 4},
            ),
        ),
        _section(
            f"Consumer group {group['group']} ({escape(str(group.get('state', '?')))})",
            _table(
                ["member", "member id", "host", "partitions"],
                [
                    [m["member"], m["member_id"], m["host"], m["partitions"]]
                    for m in group["members"]
                ],
                {3},
            )
            + "<h2 style='margin-top:12px'>Lag per partition</h2>"
            + _table(
                ["topic", "partition", "committed", "end", "lag", "member"],
                [
                    [r["topic"], r["partition"], r["committed"], r["end"], r["lag"], r["owner"]]
                    for r in data["partitions"]
                ],
                {1, 2, 3, 4},
            ),
        ),
        _section(
            "Throughput (this worker)",
            _table(
                [
                    "handler",
                    "last 15 min",
                    "handled 1m",
                    "failed 1m",
                    "retried 1m",
                    "dead 1m",
                    "handled 15m",
                    "dead 15m",
                ],
                [
                    [
                        r["handler"],
                        _bars(r["per_minute"]),
                        r["handled_1m"],
                        r["failed_1m"],
                        r["retried_1m"],
                        r["dead_lettered_1m"],
                        r["handled_15m"],
                        r["dead_lettered_15m"],
                    ]
                    for r in data["throughput"]
                ],
                {2, 3, 4, 5, 6, 7},
            ),
        ),
        _section(
            "Dead letters",
            _table(
                ["topic", "messages", ""],
                [
                    [
                        d["topic"],
                        d["count"],
                        _Html(
                            f'<a href="/dead-letters/{escape(d["topic"])}">browse and replay</a>'
                        ),
                    ]
                    for d in data["dead_letters"]
                ],
                {1},
            ),
        ),
        _section(
            "Tables (partitions held by this worker)",
            _table(
                ["table", "changelog", "partitions", "local keys", "sample keys"],
                [
                    [
                        t["table"],
                        t["changelog"],
                        t["partitions"],
                        t["local_keys"],
                        ", ".join(t["sample_keys"]),
                    ]
                    for t in data["tables"]
                ],
                {2, 3},
            ),
        ),
        _section(
            "Settings",
            "<details><summary>every setting, secrets masked</summary>"
            + _table(["key", "value"], [[k, v] for k, v in data["settings"].items()])
            + "</details>",
        ),
    ]
    error = (
        f'<section class="bad">{escape(data["cluster_error"])}</section>'
        if data["cluster_error"]
        else ""
    )
    header = (
        f"<header><h1>dawning-streams</h1><span>{escape(data['instance'])}</span>"
        f"<span>{state}</span><span class='muted'>{escape(data['generated_at'])}</span>"
        '<a href="/metrics">metrics</a><a href="/ready">ready</a></header>'
    )
    return _page(
        "dawning-streams dashboard",
        header + f"<main>{error}{''.join(sections)}</main>",
        refresh_s=15,
    )


def _section(title: str, content: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{content}</section>"


def render_dead_letters(topic: str, letters: list[dlq.DeadLetter]) -> str:
    """One dead-letter topic's messages, each with a replay button."""
    rows = []
    for letter in letters:
        summary = letter.summary()
        target = {"topic": topic, "partition": letter.partition, "offset": letter.offset}
        button = _Html(f"<button onclick='replay({escape(_json(target))})'>replay</button>")
        rows.append(
            [
                f"{letter.partition}/{letter.offset}",
                summary["dead_lettered_at"],
                summary["key"],
                summary["handler"],
                summary["attempts"],
                _Html(f"<pre>{escape(str(summary['exception']))}</pre>"),
                _Html(f"<pre>{escape(_preview(letter.value))}</pre>"),
                button,
            ]
        )
    everything = _json({"topic": topic, "all": True})
    controls = (
        '<p><label>Admin token <input id="token" type="password" autocomplete="off"></label> '
        f"<button onclick='replay({escape(everything)})'>replay all {len(letters)}</button> "
        '<span id="result" class="muted"></span></p>'
    )
    body = (
        f"<header><h1>Dead letters: {escape(topic)}</h1><a href='/'>dashboard</a></header>"
        f"<main><section>{controls}"
        + _table(
            [
                "partition/offset",
                "dead-lettered at",
                "key",
                "handler",
                "attempts",
                "exception",
                "message",
                "",
            ],
            rows,
            {4},
        )
        + f"</section></main>{_REPLAY_SCRIPT}"
    )
    return _page(f"dead letters: {topic}", body)


def _preview(value: bytes | None, limit: int = 600) -> str:
    if value is None:
        return "(no value)"
    text = value.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + " ..."


def _json(value: Any) -> str:
    return json.dumps(value)
