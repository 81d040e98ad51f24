"""Workers that die, stop or stall while messages flow: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
import uuid
from pathlib import Path

import pytest

from dawning_streams import AuditLogMessage, Settings

from ..handler_helpers import eventually
from ..workers import settle, spawn, workers
from .conftest import Row
from .fault_app import flow_topic
from .ledger import (
    Ledger,
    committed_offsets,
    committed_to_end,
    handled,
    log_times,
    lost_and_duplicated,
    write_duplicates,
)

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

APP = "tests.faults.fault_app"
# Faust commits the offsets of handled messages every broker_commit_interval.
COMMIT_INTERVAL_S = 2.8


def flow(count: int, action: str = "flow") -> list[AuditLogMessage]:
    return [
        AuditLogMessage(user_id=uuid.uuid4(), action=action, entity_type="Fault")
        for _ in range(count)
    ]


@pytest.mark.deadline(300)
@pytest.mark.timeout(400)
async def test_kill_9_of_one_of_three_workers_loses_nothing(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    topic = flow_topic(settings)
    total = 20_000
    async with workers(settings, 3, tmp_path, app=APP) as group, Ledger(bootstrap) as ledger:
        victim = group[1]
        publishing = asyncio.create_task(ledger.publish(topic, flow(total), rate_per_s=1000))
        await eventually(lambda: len(ledger.acked) >= total * 0.4, what="40 % published")
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        killed_at = time.time()
        # Nobody can commit the victim's partitions until they are reassigned.
        committed = await committed_offsets(bootstrap, settings.kafka.consumer_group_id, topic)
        await publishing

        def all_handled() -> bool:
            calls = handled(w.folder for w in group)
            return all(message_id in calls for message_id in ledger.acked)

        await eventually(all_handled, timeout_s=180, what="every acknowledged message handled")
        # Late duplicates: none can come once every offset is committed.
        await eventually(
            lambda: committed_to_end(bootstrap, settings.kafka.consumer_group_id, topic),
            timeout_s=60,
            what="offsets committed to the end",
        )
        calls = handled(w.folder for w in group)

    lost, duplicated = lost_and_duplicated(ledger, calls)
    write_duplicates(tmp_path / "duplicates.txt", ledger, calls)
    victim_pid = victim.process.pid
    by_victim = {m for m, c in calls.items() if c[0][0] == victim_pid}
    orphaned = {ledger.acked[m].partition for m in by_victim}
    # Handled by the victim but not committed when it died: all that may come again...
    window = sum(
        1
        for m in by_victim
        if ledger.acked[m].offset >= committed.get(ledger.acked[m].partition, 0)
    )
    # ...and, on the survivors, what they handled from the moment the group began
    # to rebalance until one commit interval after it settled.
    survivors = [w for w in group if w is not victim]
    began = min(t for w in survivors for t in log_times(w.log, "Revoking", after=killed_at))
    settled = max(t for w in survivors for t in log_times(w.log, "Worker ready", after=began))
    rebalance_window = sum(
        1
        for m, c in calls.items()
        if c[0][0] != victim_pid and began <= c[0][1] <= settled + COMMIT_INTERVAL_S
    )
    repeated_of_victim = sum(len(c) - 1 for m, c in calls.items() if m in by_victim)
    taken_over = [
        at
        for m, c in calls.items()
        if ledger.acked[m].partition in orphaned
        for pid, at in c
        if pid != victim_pid and at > killed_at
    ]
    recover_s = min(taken_over) - killed_at if taken_over else None
    report.append(
        Row(
            "kill -9 1 of 3 workers",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            recover_s,
            {
                "victims_repeated": repeated_of_victim,
                "victims_uncommitted_at_kill": window,
                "survivors_repeated": duplicated - repeated_of_victim,
                "survivors_rebalance_window": rebalance_window,
                "commit_interval_s": COMMIT_INTERVAL_S,
                "rebalance_s": round(settled - killed_at, 1),
                "session_timeout_s": settings.kafka.session_timeout_ms / 1000,
                "publish_failed": len(ledger.failed),
                "orphaned_partitions": sorted(orphaned),
            },
        )
    )
    assert not ledger.failed
    assert len(ledger.acked) == total
    assert lost == 0
    assert repeated_of_victim <= window
    # Survivors commit what they handled before giving partitions up, and skip
    # what they had started of the ones they keep: they repeat nothing.
    assert duplicated - repeated_of_victim == 0, (tmp_path / "duplicates.txt").read_text()[:2000]


@pytest.mark.deadline(240)
@pytest.mark.timeout(300)
async def test_sigterm_of_a_worker_mid_stream_loses_nothing_and_repeats_nothing(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    topic = flow_topic(settings)
    total = 6_000
    async with workers(settings, 2, tmp_path, app=APP) as group, Ledger(bootstrap) as ledger:
        leaving = group[0]
        publishing = asyncio.create_task(ledger.publish(topic, flow(total), rate_per_s=1000))
        await eventually(lambda: len(ledger.acked) >= total * 0.4, what="40 % published")
        leaving.process.send_signal(signal.SIGTERM)
        stopped_at = time.time()
        code = await asyncio.to_thread(leaving.process.wait, 60)
        await publishing

        def all_handled() -> bool:
            calls = handled(w.folder for w in group)
            return all(message_id in calls for message_id in ledger.acked)

        await eventually(all_handled, timeout_s=120, what="every acknowledged message handled")
        await eventually(
            lambda: committed_to_end(bootstrap, settings.kafka.consumer_group_id, topic),
            timeout_s=60,
            what="offsets committed to the end",
        )
        calls = handled(w.folder for w in group)

    lost, duplicated = lost_and_duplicated(ledger, calls)
    write_duplicates(tmp_path / "duplicates.txt", ledger, calls)
    leaver = leaving.process.pid
    handed_over = {ledger.acked[m].partition for m, c in calls.items() if c[0][0] == leaver}
    # The stopped worker committed all it handled before leaving, and the survivor
    # committed all it handled before the rebalance; after it, the survivor skips
    # what it had started of the partitions it kept. Nothing comes twice.
    leavers_repeated = sum(len(c) - 1 for c in calls.values() if c[0][0] == leaver)
    taken_over = [
        at
        for m, c in calls.items()
        if ledger.acked[m].partition in handed_over
        for pid, at in c
        if pid != leaver and at > stopped_at
    ]
    report.append(
        Row(
            "SIGTERM 1 of 2 workers",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            min(taken_over) - stopped_at if taken_over else None,
            {
                "exit_code": code,
                "leavers_repeated": leavers_repeated,
                "survivors_repeated": duplicated - leavers_repeated,
                "handed_over_partitions": sorted(handed_over),
            },
        )
    )
    assert code == 0, leaving.log.read_text()
    assert len(ledger.acked) == total
    assert lost == 0
    assert leavers_repeated == 0
    assert duplicated == 0, (tmp_path / "duplicates.txt").read_text()[:2000]


@pytest.mark.deadline(240)
@pytest.mark.timeout(300)
async def test_a_handler_slower_than_max_poll_interval_loses_nothing(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    topic = flow_topic(settings)
    kafka = dataclasses.replace(
        settings.kafka,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_interval_ms=6000,
    )
    settings = dataclasses.replace(settings, kafka=kafka)
    slow_s = 2 * kafka.max_poll_interval_ms / 1000
    messages = flow(300)
    for n in (0, 150):
        messages[n] = flow(1, f"slow:{slow_s:g}")[0]
    async with workers(settings, 1, tmp_path, app=APP) as group, Ledger(bootstrap) as ledger:
        [worker] = group
        started = time.time()
        await ledger.publish(topic, messages, rate_per_s=100)

        def all_handled() -> bool:
            calls = handled([worker.folder])
            return all(message_id in calls for message_id in ledger.acked)

        await eventually(all_handled, timeout_s=150, what="every acknowledged message handled")
        await eventually(
            lambda: committed_to_end(bootstrap, settings.kafka.consumer_group_id, topic),
            timeout_s=60,
            what="offsets committed to the end",
        )
        calls = handled([worker.folder])
        log = worker.log.read_text()

    lost, duplicated = lost_and_duplicated(ledger, calls)
    write_duplicates(tmp_path / "duplicates.txt", ledger, calls)
    report.append(
        Row(
            "handler 2x max.poll.interval",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            max(at for c in calls.values() for _, at in c) - started,
            {
                "slow_s": slow_s,
                "max_poll_interval_s": kafka.max_poll_interval_ms / 1000,
                "rebalances": log.count("Revoking previously assigned partitions") - 1,
            },
        )
    )
    assert len(ledger.acked) == len(messages)
    assert lost == 0
    # The slow handler keeps its partitions: the consumer polls on while it runs,
    # so the group never rebalances and nothing is handed out again.
    assert log.count("Revoking previously assigned partitions") == 1, log[-3000:]
    assert duplicated == 0, (tmp_path / "duplicates.txt").read_text()[:2000]


@pytest.mark.deadline(240)
@pytest.mark.timeout(300)
async def test_a_rebalance_that_waits_for_a_killed_member_says_why(
    settings: Settings, tmp_path: Path
) -> None:
    # The killed worker never leaves the group: Kafka waits for its session
    # to time out before the next one gets any partition, and that worker
    # must not sit there in silence.
    kafka = dataclasses.replace(settings.kafka, session_timeout_ms=30_000)
    settings = dataclasses.replace(settings, kafka=kafka)
    async with workers(settings, 1, tmp_path, app=APP) as group:
        [killed] = group
        killed.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(killed.process.wait, 30)
        waiting = spawn(settings, f"{settings.instance_name}-next", tmp_path, app=APP)
        group.append(waiting)
        said = "the group has been rebalancing for "
        await eventually(
            lambda: said in waiting.log.read_text(errors="replace"),
            timeout_s=60,
            what="the slow rebalance explained",
        )
        await settle([waiting], timeout_s=90)
    [line] = [line for line in waiting.log.read_text().splitlines() if said in line]
    assert "Kafka:SessionTimeoutMs (30000 ms)" in line, line
    assert "killed, or stopped while Kafka was unreachable" in line, line
