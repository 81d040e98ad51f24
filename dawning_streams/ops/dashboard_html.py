"""The dashboard's HTML: escaped, no template engine, no script but the replay button's."""

from __future__ import annotations

import json
from collections.abc import Collection
from html import escape
from typing import Any

from dawning_streams.ops.dlq import DeadLetter

__all__ = ["render_dead_letters", "render_overview"]


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
                    "timers",
                    "next due",
                    "held keys",
                    "stuck",
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
                        r["timers_pending"],
                        r["next_due"] or "",
                        r["held_keys"],
                        len(r["stuck_keys"]),
                    ]
                    for r in data["throughput"]
                ],
                {2, 3, 4, 5, 6, 7, 8, 10, 11},
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


def render_dead_letters(topic: str, letters: list[DeadLetter]) -> str:
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
