"""Line charts as inline SVG, drawn on the server: no script, nothing fetched at page load.

A chart spans a fixed window (the last 15 minutes), whatever data it has, so
the time axis reads the same on a worker that started a minute ago. Buckets
with no data (before the worker started, or before the first sample) are None
and leave a gap instead of drawing a false zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["COLORS", "line_chart"]

#: Series colours, in order; distinguishable, and readable on white.
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")

_WIDTH = 480
_HEIGHT = 120
_LEFT = 44
_BOTTOM = 18
_TOP = 8


def line_chart(
    series: Sequence[tuple[str, Sequence[int | None]]],
    *,
    bucket_s: int,
    title: str,
    unit: str,
) -> str:
    """An SVG chart of ``series`` (label, one value per bucket, oldest first)."""
    buckets = max((len(values) for _, values in series), default=0)
    values = [v for _, vs in series for v in vs if v is not None]
    top = _nice(max(values, default=0))
    plot_w = _WIDTH - _LEFT - 8
    plot_h = _HEIGHT - _TOP - _BOTTOM

    def x(index: int) -> float:
        return _LEFT + plot_w * index / max(buckets - 1, 1)

    def y(value: float) -> float:
        return _TOP + plot_h * (1 - value / top)

    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" width="{_WIDTH}" '
        f'height="{_HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0, 0.5, 1):
        level = top * fraction
        parts.append(
            f'<line x1="{_LEFT}" x2="{_WIDTH - 8}" y1="{y(level):.1f}" '
            f'y2="{y(level):.1f}" stroke="#e5e8ee"/>'
            f'<text x="{_LEFT - 4}" y="{y(level) + 4:.1f}" text-anchor="end" '
            f'font-size="10" fill="#667">{_short(level)}</text>'
        )
    span_s = bucket_s * buckets
    for minutes_ago in range(span_s // 60, -1, -5):
        index = buckets - 1 - (minutes_ago * 60) // bucket_s
        label = "now" if minutes_ago == 0 else f"-{minutes_ago}m"
        parts.append(
            f'<text x="{x(max(index, 0)):.1f}" y="{_HEIGHT - 4}" text-anchor="middle" '
            f'font-size="10" fill="#667">{label}</text>'
        )
    for number, (_label, points) in enumerate(series):
        color = COLORS[number % len(COLORS)]
        for run in _runs(points):
            path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
            if len(run) == 1:
                i, v = run[0]
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2" fill="{color}"/>')
            else:
                parts.append(
                    f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>'
                )
    if not values:
        parts.append(
            f'<text x="{_LEFT + plot_w / 2:.0f}" y="{_TOP + plot_h / 2:.0f}" '
            'text-anchor="middle" font-size="12" fill="#889">no data yet</text>'
        )
    parts.append("</svg>")
    legend = " ".join(
        f'<span class="key" style="color:{COLORS[n % len(COLORS)]}">&#9632;</span>{escape(label)}'
        for n, (label, _) in enumerate(series)
    )
    return (
        f'<figure class="chart"><figcaption>{escape(title)} '
        f'<span class="muted">({escape(unit)}, {bucket_s} s buckets)</span></figcaption>'
        f"{''.join(parts)}<div class='legend'>{legend}</div></figure>"
    )


def _runs(points: Sequence[int | None]) -> list[list[tuple[int, int]]]:
    """The stretches of consecutive buckets that have data."""
    runs: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    for index, value in enumerate(points):
        if value is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((index, value))
    if current:
        runs.append(current)
    return runs


def _nice(peak: float) -> float:
    """The axis top: 1, 2 or 5 times a power of ten, at or above ``peak`` (at least 1)."""
    if peak <= 1:
        return 1
    power = 1
    while True:
        for step in (1, 2, 5):
            if step * power >= peak:
                return step * power
        power *= 10


def _short(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return f"{value:g}"
