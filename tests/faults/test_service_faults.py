"""Kafka, Redis and SMTP going away under running workers, and coming back."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from dawning_streams import AuditLogMessage, Settings

from ..handler_helpers import eventually
from ..kafka_helpers import read_topic
from ..workers import workers
from .conftest import Row, services
from .fault_app import echo_topic, flow_topic
from .ledger import Ledger, handled, lost_and_duplicated, write_duplicates

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

APP = "tests.faults.fault_app"


def flow(count: int, echo_every: int = 0) -> list[AuditLogMessage]:
    return [
        AuditLogMessage(
            user_id=uuid.uuid4(),
            action="echo" if echo_every and n % echo_every == 0 else "flow",
            entity_type="Fault",
        )
        for n in range(count)
    ]


@pytest.mark.deadline(360)
@pytest.mark.timeout(420)
async def test_kafka_stopped_and_restarted_mid_stream_loses_nothing(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    topic = flow_topic(settings)
    messages = flow(6_000, echo_every=10)
    echoed = {str(m.message_id) for m in messages if m.action == "echo"}
    async with workers(settings, 2, tmp_path, app=APP) as group, Ledger(bootstrap) as ledger:
        publishing = asyncio.create_task(ledger.publish(topic, messages, rate_per_s=300))
        await eventually(lambda: len(ledger.acked) >= 1_500, what="a quarter published")
        down_at = time.time()
        await services("stop-kafka")
        await asyncio.sleep(5)
        await services("start-kafka")
        up_at = time.time()
        await publishing

        def all_handled() -> bool:
            calls = handled(w.folder for w in group)
            return all(message_id in calls for message_id in ledger.acked)

        await eventually(all_handled, timeout_s=200, what="every acknowledged message handled")
        caught_up_at = time.time()
        await asyncio.sleep(3)
        calls = handled(w.folder for w in group)
        alive = [w.process.poll() is None for w in group]
        wanted_echoes = [m for m in echoed if m in ledger.acked]
        echoes = await read_topic(bootstrap, echo_topic(settings), len(wanted_echoes), 60)

    lost, duplicated = lost_and_duplicated(ledger, calls)
    write_duplicates(tmp_path / "duplicates.txt", ledger, calls)
    latency = {m: c[0][1] - ledger.acked_at[m] for m, c in calls.items() if m in ledger.acked_at}
    worst = max(latency, key=latency.__getitem__)
    after_up = [at for c in calls.values() for _, at in c if at > up_at]
    report.append(
        Row(
            "Kafka stopped and restarted",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            min(after_up) - up_at if after_up else None,
            {
                "down_s": round(up_at - down_at, 1),
                "publish_failed": len(ledger.failed),
                "caught_up_after_restart_s": round(caught_up_at - up_at, 1),
                "worst_ack_to_handled_s": round(latency[worst], 1),
                "echoes": f"{len(echoes)}/{len(wanted_echoes)}",
            },
        )
    )
    assert all(alive), "a worker exited"
    assert lost == 0
    assert {e.value.decode() for e in echoes} >= set(wanted_echoes)
