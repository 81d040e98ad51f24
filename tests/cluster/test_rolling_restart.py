"""A rolling restart of the three brokers under load: nothing lost, no worker restarted."""

from __future__ import annotations

import asyncio
import random
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
from .conftest import BOOTSTRAP, Row, services
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
NODES = (1, 2, 3)


@pytest.mark.deadline(300)
@pytest.mark.timeout(360)
async def test_a_rolling_restart_of_every_broker_loses_nothing_and_needs_no_worker_restart(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    topic = ordered_topic(settings)
    shared = tmp_path / "shared"
    shared.mkdir()
    stop_publishing = asyncio.Event()
    messages = until(stop_publishing, keyed_stream(random.Random(17), KEYS))
    #: node -> seconds from its stop until it was back in every ISR.
    restart_s: dict[int, float] = {}
    down: int | None = None
    try:
        async with (
            workers(settings, 2, tmp_path, app=APP, env={SHARED_DIR_VAR: str(shared)}) as group,
            Ledger(BOOTSTRAP) as ledger,
        ):
            assignments = sum(assigned(w) for w in group)
            publishing = asyncio.create_task(ledger.publish(topic, messages, rate_per_s=RATE_PER_S))
            try:
                rolling_began = time.monotonic()
                for node in NODES:
                    # The next node goes only once this one is back in every ISR
                    # (the brokers' own topics included): two down at once would
                    # leave partitions below min.insync.replicas.
                    began = time.monotonic()
                    down = node
                    await services("stop-kafka", str(node))
                    await services("start-kafka", str(node))
                    down = None
                    await eventually(
                        every_replica_in_sync, timeout_s=120, what=f"node {node} back in every ISR"
                    )
                    restart_s[node] = time.monotonic() - began
                rolling_s = time.monotonic() - rolling_began
                # Some load on the restarted cluster, then the publisher stops.
                await asyncio.sleep(5)
            finally:
                stop_publishing.set()
                await publishing
            journal = await handled_to_the_end(
                group, ledger.acked, topic, settings.kafka.consumer_group_id
            )
            running = [w.name for w in group if w.process.poll() is None]
            new_assignments = sum(assigned(w) for w in group) - assignments
    finally:
        if down is not None:
            await services("start-kafka", str(down))

    calls = by_message(journal)
    lost, duplicated = lost_and_duplicated(ledger, calls)
    write_duplicates(tmp_path / "duplicates.txt", ledger, calls)
    violations = order_violations(journal)
    figures = publish_figures(ledger)
    report.append(
        Row(
            "rolling restart, 3 brokers",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            figures["longest_publish_stall_s"],  # type: ignore[arg-type]
            {
                **figures,
                "order_violations": len(violations),
                "publish_failed": len(ledger.failed),
                "node_back_in_every_isr_s": {n: round(s, 1) for n, s in restart_s.items()},
                "rolling_restart_s": round(rolling_s, 1),
                "workers_running": len(running),
                "new_assignments": new_assignments,
            },
        )
    )
    assert not ledger.failed
    assert lost == 0
    assert not violations, violations[:10]
    # Neither worker needed a restart; leaving ``workers`` checks that each
    # still stops with exit code 0 on SIGTERM.
    assert len(running) == 2
