"""A broker that hangs (SIGSTOP) under load and comes back (SIGCONT): nothing lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import pytest

from dawning_streams import Settings

from ..faults.fault_app import SHARED_DIR_VAR, ordered_topic
from ..faults.ledger import (
    Ledger,
    by_message,
    lost_and_duplicated,
    order_violations,
    write_duplicates,
)
from ..handler_helpers import eventually
from ..workers import workers
from .conftest import BOOTSTRAP, Row, controller, leader_of, pid_of
from .load import (
    assigned,
    every_replica_in_sync,
    handled_to_the_end,
    keyed_stream,
    publish_figures,
    until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, pytest.mark.faults]

APP = "tests.faults.fault_app"
RATE_PER_S = 500
KEYS = 200
HUNG_S = 30.0
#: How long the load goes on after the broker resumes.
AFTER_S = 20.0
#: A message is "back to normal" once it is acknowledged (or handled) within this of its send.
NORMAL_S = 1.0


def back_to_normal_at(sent_at: dict[str, float], done_at: dict[str, float]) -> float | None:
    """When the last message that took longer than ``NORMAL_S`` from its send to
    ``done_at`` was done: after it, every message took less (None: none was slow)."""
    slow = [done_at[m] for m in done_at if done_at[m] - sent_at[m] > NORMAL_S]
    return max(slow) if slow else None


async def all_in_sync_at() -> float:
    """When every replica on the cluster is in sync again (epoch s)."""
    await eventually(every_replica_in_sync, timeout_s=150, what="the node back in every ISR")
    return time.time()


@pytest.mark.deadline(300)
@pytest.mark.timeout(360)
async def test_a_leader_hung_for_30_s_loses_nothing_and_the_flow_recovers(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    topic = ordered_topic(settings)
    shared = tmp_path / "shared"
    shared.mkdir()
    stop_publishing = asyncio.Event()
    messages = until(stop_publishing, keyed_stream(random.Random(17), KEYS))
    async with (
        workers(settings, 2, tmp_path, app=APP, env={SHARED_DIR_VAR: str(shared)}) as group,
        Ledger(BOOTSTRAP) as ledger,
    ):
        assignments = sum(assigned(w) for w in group)
        publishing = asyncio.create_task(ledger.publish(topic, messages, rate_per_s=RATE_PER_S))
        try:
            await eventually(lambda: len(ledger.acked) >= 3000, what="3,000 published")
            hung = await leader_of(topic, 0)
            was_controller = hung == await controller()
            pid = pid_of(hung)
            # No admin request goes to the cluster while the node hangs: one
            # sent to it would wait for it like any other client's.
            os.kill(pid, signal.SIGSTOP)
            stopped_at = time.time()
            try:
                await asyncio.sleep(HUNG_S)
            finally:
                os.kill(pid, signal.SIGCONT)
                resumed_at = time.time()
            rejoining = asyncio.create_task(all_in_sync_at())
            await asyncio.sleep(AFTER_S)
        finally:
            stop_publishing.set()
            await publishing
        new_leader = await leader_of(topic, 0)
        journal = await handled_to_the_end(
            group, ledger.acked, topic, settings.kafka.consumer_group_id
        )
        running = [w.name for w in group if w.process.poll() is None]
        new_assignments = sum(assigned(w) for w in group) - assignments
        in_sync_after_s = await rejoining - resumed_at

    calls = by_message(journal)
    lost, duplicated = lost_and_duplicated(ledger, calls)
    write_duplicates(tmp_path / "duplicates.txt", ledger, calls)
    violations = order_violations(journal)
    first_handled = {m: made[0][1] for m, made in calls.items() if m in ledger.sent_at}
    published_back = back_to_normal_at(ledger.sent_at, ledger.acked_at)
    handled_back = back_to_normal_at(ledger.sent_at, first_handled)
    # The time to recover: from SIGCONT until every message is again handled
    # within NORMAL_S of its publishing.
    recover_s = max((handled_back or resumed_at) - resumed_at, 0.0)
    report.append(
        Row(
            f"SIGSTOP leader {HUNG_S:.0f} s",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            round(recover_s, 1),
            {
                **publish_figures(ledger),
                "publish_normal_after_sigcont_s": round(
                    max((published_back or resumed_at) - resumed_at, 0.0), 1
                ),
                "handled_normal_after_sigcont_s": round(recover_s, 1),
                "slow_from_sigstop_s": round((handled_back or stopped_at) - stopped_at, 1),
                "order_violations": len(violations),
                "publish_failed": len(ledger.failed),
                "hung_node": hung,
                "hung_the_controller": was_controller,
                "leader_after": new_leader,
                "workers_running": len(running),
                "new_assignments": new_assignments,
                "all_in_sync_after_sigcont_s": round(in_sync_after_s, 1),
            },
        )
    )
    assert not ledger.failed
    assert lost == 0
    assert not violations, violations[:10]
    assert len(running) == 2
