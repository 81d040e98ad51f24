"""The dashboard's HTML: escaped, no template engine, no script but the replay button's.

Pages: the handler-first overview (``/``), one handler (``/handlers/{name}``),
raw topics (``/topics``), the cluster (``/cluster``), "where is my message?"
(``/messages``) and each dead-letter topic (``/dead-letters/{topic}``).

Each page is a short function; the module runs past 400 lines because it holds
all six and the style and helpers they share, and a template engine would be
one dependency more for the same markup.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from html import escape
from typing import Any

from dawning_streams.ops.charts import line_chart
from dawning_streams.ops.dlq import DeadLetter
from dawning_streams.ops.search import Search

__all__ = [
    "render_cluster",
    "render_dead_letters",
    "render_handler",
    "render_overview",
    "render_search",
    "render_topics",
]


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
pre{white-space:pre-wrap;overflow-wrap:anywhere;max-height:8em;overflow:auto;background:#f4f6f9;padding:4px;margin:0}
nav{display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}
nav form{display:inline}
.cards{display:grid;gap:16px;grid-column:1/-1;
  grid-template-columns:repeat(auto-fill,minmax(500px,1fr))}
.card h2 a{color:inherit}.figures{display:flex;flex-wrap:wrap;gap:4px 16px;margin:4px 0}
figure.chart{margin:6px 0}figure.chart figcaption{font-size:12px;color:#445}
svg.chart{max-width:100%;height:auto;display:block}.legend{font-size:12px}.key{margin:0 2px 0 8px}
.wide{grid-column:1/-1}tr.bad td{background:#fdecea}
.state{font-size:18px;font-weight:600}
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


def _table(headers: list[str], rows: list[list[Any]], numeric: Collection[int] = ()) -> str:
    """A table; the columns at the ``numeric`` positions are right-aligned."""
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


def _header(data: dict[str, Any]) -> str:
    """The bar on top of every page: instance, readiness, navigation, message search."""
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
    return (
        f"<header><h1>dawning-streams</h1><span>{escape(data['instance'])}</span>"
        f"<span>{state}</span><span class='muted'>{escape(data['generated_at'])}</span>"
        '<nav><a href="/">handlers</a><a href="/topics">topics</a>'
        '<a href="/cluster">cluster</a><a href="/metrics">metrics</a>'
        '<form action="/messages" method="get"><input name="id" size="36" '
        'placeholder="MessageId" aria-label="MessageId"> <button>find</button></form>'
        "</nav></header>"
    )


def _error(data: dict[str, Any]) -> str:
    error = data.get("cluster_error")
    return f'<section class="bad wide">{escape(error)}</section>' if error else ""


def _figures(row: dict[str, Any]) -> str:
    def figure(label: str, value: Any, bad: bool = False) -> str:
        shown = "-" if value is None else escape(str(value))
        cls = ' class="bad"' if bad else ""
        return f"<span>{escape(label)} <b{cls}>{shown}</b></span>"

    return (
        '<div class="figures">'
        + figure("handled/min", row["handled_1m"])
        + figure("failed/min", row["failed_1m"], bool(row["failed_1m"]))
        + figure("retried/min", row["retried_1m"])
        + figure("p50 ms", row["p50_ms"])
        + figure("p99 ms", row["p99_ms"])
        + figure("lag", row["lag"])
        + figure("timers", row["timers_pending"])
        + figure("held keys", row["held_keys"])
        + figure("stuck", len(row["stuck_keys"]), bool(row["stuck_keys"]))
        + figure("dead letters", row["dead_letters"], bool(row["dead_letters"]))
        + "</div>"
    )


def _throughput_chart(row: dict[str, Any], chart: dict[str, Any]) -> str:
    return line_chart(
        [("handled", row["handled_series"]), ("failed", row["failed_series"])],
        bucket_s=chart["bucket_s"],
        title=f"{row['handler']}: handled and failed, this worker",
        unit="messages",
    )


def render_overview(data: dict[str, Any]) -> str:
    """The overview: a card per handler, then dead letters, group, tables and settings."""
    group = data["group"]
    cards = []
    for row in data["handlers"]:
        name = escape(row["handler"])
        cards.append(
            f'<section class="card"><h2><a href="/handlers/{name}">{name}</a> '
            f'<span class="muted">{escape(row["topic"])}, {escape(row["kind"])}</span></h2>'
            + _figures(row)
            + _throughput_chart(row, data["chart"])
            + "</section>"
        )
    handlers = (
        f'<div class="cards">{"".join(cards)}</div>'
        if cards
        else '<section class="wide"><h2>Handlers</h2><p class="muted">none declared</p></section>'
    )
    sections = [
        _section(
            f"Consumer group {group['group']}",
            f"<p>state <b>{escape(str(group['state']))}</b>, {len(group['members'])} member(s), "
            f"{group['brokers']} broker(s), "
            + (
                f'<span class="bad">{group["under_replicated"]} under-replicated '
                "partition(s)</span>"
                if group["under_replicated"]
                else "every partition fully replicated"
            )
            + f' <span class="muted">(sampled {escape(str(group["sampled_at"]))})</span>'
            ' <a href="/cluster">cluster</a> <a href="/topics">topics</a></p>',
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
    return _page(
        "dawning-streams dashboard",
        _header(data) + f"<main>{_error(data)}{handlers}{''.join(sections)}</main>",
        refresh_s=15,
    )


def render_handler(data: dict[str, Any]) -> str:
    """One handler: its figures, charts, topics, partitions and timers."""
    row = data["row"]
    lag_chart = line_chart(
        list(data["lag_series"].items()),
        bucket_s=data["chart"]["bucket_s"],
        title=f"{row['topic']}: the group's lag per partition",
        unit="messages",
    )
    timers = _table(
        ["pending", "next due", "held keys", "stuck keys"],
        [
            [
                row["timers_pending"],
                row["next_due"],
                row["held_keys"],
                ", ".join(row["stuck_keys"]) or None,
            ]
        ],
        {0, 2},
    )
    body = (
        f"<section class='wide'><h2>{escape(row['handler'])} "
        f"<span class='muted'>{escape(row['topic'])}, {escape(row['kind'])}</span></h2>"
        + _figures(row)
        + _throughput_chart(row, data["chart"])
        + lag_chart
        + "</section>"
        + _section("Topics", _topics(data["topics"]))
        + _section("Partitions of the source topic", _partitions(data["partitions"]))
        + _section("Timers (this worker)", timers)
    )
    return _page(
        f"handler {row['handler']}",
        _header(data) + f"<main>{_error(data)}{body}</main>",
        refresh_s=15,
    )


def _topics(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["topic", "kind", "partitions", "messages", "group lag"],
        [[t["topic"], t["kind"], t["partitions"], t["messages"], t["lag"]] for t in rows],
        {2, 3, 4},
    )


def _partitions(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["topic", "partition", "committed", "end", "lag", "member", "leader"],
        [
            [
                r["topic"],
                r["partition"],
                r["committed"],
                r["end"],
                r["lag"],
                r["owner"],
                r["leader"],
            ]
            for r in rows
        ],
        {1, 2, 3, 4, 6},
    )


def render_topics(data: dict[str, Any]) -> str:
    """Every topic, by kind, and the group's lag per partition."""
    body = _section("Topics", _topics(data["topics"])) + _section(
        "Lag per partition", _partitions(data["partitions"])
    )
    return _page("topics", _header(data) + f"<main>{_error(data)}{body}</main>", refresh_s=15)


def render_cluster(data: dict[str, Any]) -> str:
    """Brokers, partitions with leaders and in-sync replicas, and the group's members."""
    group = data["group"]
    partitions = data["partitions"]
    rows = "".join(
        ('<tr class="bad">' if p["under_replicated"] else "<tr>")
        + "".join(
            f"<td>{_cell(c)}</td>"
            for c in (
                p["topic"],
                p["partition"],
                p["leader"],
                ",".join(map(str, p["replicas"])),
                ",".join(map(str, p["isr"])),
                "UNDER-REPLICATED" if p["under_replicated"] else "ok",
            )
        )
        + "</tr>"
        for p in partitions
    )
    layout = (
        "<table><thead><tr><th>topic</th><th>partition</th><th>leader</th><th>replicas</th>"
        f"<th>in sync</th><th>replication</th></tr></thead><tbody>{rows}</tbody></table>"
        if partitions
        else '<p class="muted">none</p>'
    )
    under = sum(p["under_replicated"] for p in partitions)
    body = (
        _section(
            "Brokers",
            _table(
                ["node", "address", "rack", "controller", "partitions led"],
                [
                    [
                        b["node_id"],
                        b["address"],
                        b["rack"],
                        "controller" if b["controller"] else "",
                        b["leads"],
                    ]
                    for b in data["brokers"]
                ],
                {0, 4},
            ),
        )
        + _section(
            f"Consumer group {group['group']} ({group['state']})",
            _table(
                ["member", "member id", "host", "partitions"],
                [
                    [m["member"], m["member_id"], m["host"], ", ".join(m["partitions"])]
                    for m in group["members"]
                ],
            ),
        )
        + _section(
            f"Partitions ({len(partitions)}, {under} under-replicated)",
            layout,
        )
    )
    return _page("cluster", _header(data) + f"<main>{_error(data)}{body}</main>", refresh_s=15)


def render_search(data: dict[str, Any], search: Search | None, problem: str | None) -> str:
    """The "where is my message?" form, and what it found."""
    asked = search.message_id if search is not None else None
    form = (
        '<form action="/messages" method="get" class="figures">'
        f'<label>MessageId <input name="id" size="36" value="{escape(str(asked or ""))}"></label>'
        '<label>or key <input name="key" size="36"></label>'
        '<label>since <input name="since" placeholder="ISO time, default 1 h ago"></label>'
        '<label>until <input name="until" placeholder="ISO time, default now"></label>'
        "<button>find</button></form>"
    )
    parts = [form]
    if problem is not None:
        parts.append(f'<p class="bad">{escape(problem)}</p>')
    if search is not None:
        parts.append(
            f'<p class="muted">read {search.scanned} record(s) from '
            f"{search.since.isoformat(timespec='seconds')} to "
            f"{search.until.isoformat(timespec='seconds')} (dead letters: all of them)"
            + (", and stopped at the limit: narrow the range" if search.truncated else "")
            + "</p>"
        )
        for found in search.found:
            parts.append(
                f'<article class="found"><h2>{escape(found.message_id)}</h2>'
                f'<p><span class="state" data-state="{escape(found.state)}">'
                f"{escape(found.state)}</span> {escape(found.detail)}</p>"
                + (f"<p>key {escape(found.key)}</p>" if found.key else "")
                + _table(
                    ["stage", "handler", "at", "where", "detail"],
                    [
                        [
                            s.stage,
                            s.handler,
                            s.at.isoformat(timespec="seconds") if s.at else None,
                            s.where,
                            s.detail,
                        ]
                        for s in found.sightings
                    ],
                )
                + "</article>"
            )
    body = _section("Where is my message?", "".join(parts))
    return _page("find a message", _header(data) + f"<main>{body}</main>")


def _section(title: str, content: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{content}</section>"


def render_dead_letters(topic: str, letters: list[DeadLetter]) -> str:
    """One dead-letter topic's messages, each with a replay button."""
    rows = []
    for letter in letters:
        summary = letter.summary()
        target = {"topic": topic, "partition": letter.partition, "offset": letter.offset}
        button = _Html(f"<button onclick='replay({escape(_json(target))})'>replay</button>")
        group = summary["group"]
        rows.append(
            [
                button,
                f"{letter.partition}/{letter.offset}",
                summary["dead_lettered_at"],
                summary["key"],
                summary["handler"] if group is None else f"{group}/{summary['handler']}",
                summary["attempts"],
                _Html(f"<pre>{escape(str(summary['exception']))}</pre>"),
                _Html(f"<pre>{escape(_preview(letter.value))}</pre>"),
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
                "",
                "partition/offset",
                "dead-lettered at",
                "key",
                "group/handler",
                "attempts",
                "exception",
                "message",
            ],
            rows,
            {5},
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
