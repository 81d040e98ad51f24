"""The dashboard's pure parts: windowed quantiles, charts with gaps, the search's verdicts."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from dawning_streams.handlers.delivery import message_id_of
from dawning_streams.observability.metrics import Durations, quantile
from dawning_streams.ops import search
from dawning_streams.ops.charts import line_chart
from dawning_streams.ops.search import Sighting

BOUNDS = (0.001, 0.01, 0.1, 1.0)


def test_a_quantile_is_interpolated_inside_its_bucket() -> None:
    # 10 in (0.001, 0.01], 10 in (0.01, 0.1]
    counts = [0, 10, 10, 0, 0]
    assert quantile(counts, BOUNDS, 0.5) == pytest.approx(0.01)
    assert quantile(counts, BOUNDS, 0.75) == pytest.approx(0.055)
    assert quantile(counts, BOUNDS, 1.0) == pytest.approx(0.1)


def test_a_quantile_of_nothing_is_none_and_the_overflow_bucket_is_its_last_bound() -> None:
    assert quantile([0, 0, 0, 0, 0], BOUNDS, 0.5) is None
    assert quantile([0, 0, 0, 0, 3], BOUNDS, 0.99) == 1.0


def test_durations_counts_are_copies_a_window_can_subtract() -> None:
    durations = Durations("d", "d", BOUNDS)
    durations.record(("h", "handled"), 0.005)
    before = durations.counts()
    durations.record(("h", "handled"), 0.05)
    durations.record(("h", "handled"), 0.05)
    after = durations.counts()
    window = [a - b for a, b in zip(after[("h", "handled")], before[("h", "handled")], strict=True)]
    assert before[("h", "handled")] == [0, 1, 0, 0, 0]
    assert window == [0, 0, 2, 0, 0]
    assert quantile(window, BOUNDS, 0.5) == pytest.approx(0.055)


def _points(svg: str) -> list[list[tuple[float, float]]]:
    lines = re.findall(r'<polyline points="([^"]+)"', svg)
    return [[tuple(map(float, p.split(","))) for p in line.split()] for line in lines]  # type: ignore[misc]


def test_a_chart_leaves_a_gap_where_there_is_no_data_and_spans_the_whole_window() -> None:
    # A worker that started 2 buckets before the end of a 90-bucket window.
    values: list[int | None] = [None] * 88 + [3, 7]
    svg = line_chart([("handled", values)], bucket_s=10, title="t", unit="messages")
    [line] = _points(svg)
    assert len(line) == 2  # no false zeros drawn before the start
    assert line[0][0] > 400 and line[1][0] > line[0][0]  # at the right-hand end
    for label in ("-15m", "-10m", "-5m", "now"):
        assert f">{label}</text>" in svg
    assert ">10</text>" in svg  # the axis top: 10, the first 1-2-5 step at or above 7
    assert "no data yet" not in svg


def test_a_chart_without_any_data_says_so() -> None:
    svg = line_chart([("lag", [None] * 90)], bucket_s=10, title="t", unit="messages")
    assert "no data yet" in svg and "<polyline" not in svg


def test_a_chart_breaks_its_line_at_a_missing_sample() -> None:
    values: list[int | None] = [1, 2, None, 4, 5]
    svg = line_chart([("lag", values)], bucket_s=10, title="t", unit="messages")
    assert [len(line) for line in _points(svg)] == [2, 2]


def test_the_message_id_is_read_in_any_case_of_its_name() -> None:
    guid = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
    assert message_id_of(orjson.dumps({"messageId": guid})) == guid.lower()
    assert message_id_of(orjson.dumps({"MessageId": guid.lower()})) == guid.lower()
    assert message_id_of(b"not json") is None
    assert message_id_of(b"[1, 2]") is None


def _seen(stage: str, minutes: int, detail: str = "") -> Sighting:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    return Sighting(stage, "h", at, f"t/0/{minutes}", detail)


def test_a_pending_timer_wins_over_every_record() -> None:
    waiting = Sighting("waiting", "h", None, "h timers", "waiting for retry 1, due ...")
    state, detail = search._state([_seen("consumed", 0), waiting])
    assert (state, detail) == ("waiting", "waiting for retry 1, due ...")


def test_the_latest_record_says_where_the_message_is() -> None:
    assert search._state([_seen("consumed", 0)])[0] == "handled"
    assert search._state([_seen("received", 0)])[0] == "received"
    assert search._state([_seen("consumed", 0), _seen("dead-lettered", 1)])[0] == "dead-lettered"
    # Replayed from the dead letters and handled again.
    replayed = [_seen("consumed", 0), _seen("dead-lettered", 1), _seen("consumed", 2)]
    assert search._state(replayed)[0] == "handled"
    assert search._state([])[0] == "not seen"
