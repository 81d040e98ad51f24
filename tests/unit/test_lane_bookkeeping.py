"""A lane's offset bookkeeping without a broker: what it takes, skips, refuses and commits.

The integration tier (tests/integration/test_lanes.py) and the fault suite
prove the same against Kafka through rebalances; these pin the rules down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from dawning_streams.kafka.lanes import Lane, _Progress

TP0 = TP("orders", 0)
TP1 = TP("orders", 1)


@dataclass
class Fetching:
    """Who a lane asks to stop and resume fetching a partition."""

    paused: list[TP] = field(default_factory=list)
    resumed: list[TP] = field(default_factory=list)

    def on_buffer_full(self, tp: TP) -> None:
        self.paused.append(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        self.resumed.append(tp)


def records(*offsets: int) -> list[Any]:
    return [SimpleNamespace(offset=o) for o in offsets]


def lane(max_buffered: int = 100, ready: Any = None) -> tuple[Lane, Fetching]:
    fetching = Fetching()
    app = SimpleNamespace(conf=SimpleNamespace(stream_buffer_maxsize=max_buffered))
    lane = Lane(app, "orders", step=lambda record: None, ready=ready)  # type: ignore[arg-type]
    lane.fetching = fetching
    return lane, fetching


def buffered(lane: Lane) -> list[tuple[TP, list[int]]]:
    return [(tp, [r.offset for r in batch]) for tp, batch in lane._batches]


def test_the_committable_offset_waits_for_every_record_below_it() -> None:
    progress = _Progress()
    progress.started.extend([5, 6, 7])
    progress.finish(6)  # finished out of order: 5 is still running
    assert progress.committable is None and progress.next_offset == 8
    progress.finish(5)
    assert progress.committable == 7
    progress.finish(7)
    assert progress.committable == 8 and progress.next_offset == 8


def test_the_committable_offset_never_goes_back_after_a_seek() -> None:
    progress = _Progress()
    progress.started.append(9)
    progress.finish(9)
    progress.started.append(3)  # records below it came again after a seek back
    progress.finish(3)
    assert progress.committable == 10


async def test_records_already_taken_are_skipped_when_a_fetch_overlaps() -> None:
    lane_, _ = lane()
    lane_.deliver(TP0, records(0, 1, 2))
    lane_.deliver(TP0, records(1, 2, 3))
    lane_.deliver(TP1, records(0))
    assert buffered(lane_) == [(TP0, [0, 1, 2]), (TP0, [3]), (TP1, [0])]


async def test_a_full_buffer_pauses_the_partition_once_and_a_drop_resumes_it() -> None:
    lane_, fetching = lane(max_buffered=3)
    lane_.deliver(TP0, records(0, 1, 2))
    lane_.deliver(TP0, records(3))
    assert fetching.paused == [TP0] and lane_.paused
    lane_.hold()
    assert fetching.resumed == [TP0] and not lane_.paused


async def test_held_records_are_refused_from_their_first_offset_and_taken_after_the_seek() -> None:
    lane_, _ = lane()
    lane_.deliver(TP0, records(4, 5))
    lane_.hold()
    assert buffered(lane_) == []
    lane_.deliver(TP0, records(6, 7))  # fetched while held
    assert lane_.refused() == {TP0: 4}  # the seek must go back to 4
    lane_.on_seek()
    assert lane_.refused() == {}
    lane_.deliver(TP0, records(4, 5, 6, 7))
    assert buffered(lane_) == [(TP0, [4, 5, 6, 7])]


async def test_after_a_seek_records_already_started_are_not_taken_again() -> None:
    lane_, _ = lane()
    lane_._progress[TP0] = progress = _Progress()
    progress.started.extend([10, 11])
    progress.finish(10)  # 11 is still being handled
    lane_.hold()
    lane_.on_seek()
    lane_.deliver(TP0, records(10, 11, 12))  # the consumer sought back to the commit, 11
    assert buffered(lane_) == [(TP0, [12])]
    assert lane_.committable(TP0) == 11


async def test_a_partition_whose_state_is_not_ready_is_refused() -> None:
    lane_, _ = lane(ready=lambda partition: partition == 1)
    lane_.deliver(TP0, records(0, 1))
    lane_.deliver(TP1, records(0))
    assert buffered(lane_) == [(TP1, [0])] and lane_.refused() == {TP0: 0}


async def test_a_new_assignment_forgets_refusals_and_revoked_partitions() -> None:
    lane_, _ = lane()
    for tp in (TP0, TP1):
        lane_._progress[tp] = progress = _Progress()
        progress.started.append(0)
        progress.finish(0)
    lane_.refuse(TP0, records(3))
    lane_.on_assign({TP1})
    assert lane_.refused() == {} and lane_.partitions() == [TP1]
    assert lane_.committable(TP0) is None and lane_.committable(TP1) == 1
