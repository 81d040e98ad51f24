"""Which changelog partitions a recovery is stuck on (no services needed)."""

from __future__ import annotations

from faust.types import TP

from dawning_streams.kafka.watches import RECOVERY_STALL_S, stalled_changelogs

STUCK, BUSY, DONE, EMPTY = (TP("t-timers-changelog", p) for p in range(4))
OFFSETS = {STUCK: -1, BUSY: 4, DONE: 17, EMPTY: -1}
HIGHWATERS = {STUCK: 17, BUSY: 17, DONE: 17, EMPTY: -1}


def test_a_partition_that_received_nothing_below_its_highwater_is_read_again() -> None:
    received = {BUSY: 100.0}  # BUSY has records coming in
    now = 100.0 + RECOVERY_STALL_S
    assert stalled_changelogs(100.0, now, OFFSETS, HIGHWATERS, received) == {STUCK: 0}


def test_nothing_is_stalled_before_the_recovery_is_old_enough_or_when_none_runs() -> None:
    assert stalled_changelogs(100.0, 100.0 + RECOVERY_STALL_S - 1, OFFSETS, HIGHWATERS, {}) == {}
    assert stalled_changelogs(None, 1e9, OFFSETS, HIGHWATERS, {}) == {}
