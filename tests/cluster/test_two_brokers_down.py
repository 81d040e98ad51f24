"""Two of three brokers down: ``publish`` reports no success it does not have.

With one broker of three left, every partition has one in-sync replica, below
``min.insync.replicas=2``, so the broker refuses every ``acks=all`` write
(``NotEnoughReplicas``). The bus of an app built with ``create_app`` (as a web
app or a script publishes) must then return ``None`` and keep the message in
its spool, never a receipt, and deliver the spool once a broker is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from pathlib import Path

import pytest

from dawning_streams import Settings, create_app
from dawning_streams.core.settings import SpoolSettings

from ..faults.fault_app import SHARED_DIR_VAR, ordered_topic
from ..faults.ledger import Ledger, by_message, order_violations, ordered_calls
from ..handler_helpers import eventually
from ..workers import workers
from .conftest import BOOTSTRAP, Row, leader_of, services
from .load import handled_to_the_end, keyed_stream

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, pytest.mark.faults]

APP = "tests.faults.fault_app"
NODES = (1, 2, 3)
RATE_PER_S = 100
KEYS = 50
#: How long the publisher goes on with two brokers down.
DOWN_S = 25.0


@pytest.mark.deadline(300)
@pytest.mark.timeout(360)
async def test_with_two_of_three_brokers_down_publish_spools_and_delivers_once_one_is_back(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    topic = ordered_topic(settings)
    shared = tmp_path / "shared"
    shared.mkdir()
    publisher = dataclasses.replace(
        settings,
        instance_name=f"{settings.instance_name}-publisher",
        kafka=dataclasses.replace(
            settings.kafka, spool=SpoolSettings(path=str(tmp_path / "spool.sqlite3"))
        ),
    )
    # Only a record: the messages go through the app's bus.
    ledger = Ledger(BOOTSTRAP)
    #: Message id -> when ``publish`` returned None for it (spooled).
    spooled: dict[str, float] = {}
    publish_s: list[float] = []
    stream = keyed_stream(random.Random(17), KEYS)
    stop_publishing = asyncio.Event()
    down: list[int] = []

    async def publish_until_stopped() -> None:
        started = time.monotonic()
        n = 0
        while not stop_publishing.is_set():
            message = next(stream)
            message_id = str(message.message_id)
            ledger.sent_at[message_id] = time.time()
            began = time.monotonic()
            receipt = await bus.publish(message, topic=topic)
            publish_s.append(time.monotonic() - began)
            if receipt is None:
                spooled[message_id] = time.time()
            else:
                ledger.acknowledged(message_id, receipt)
            n += 1
            ahead_s = n / RATE_PER_S - (time.monotonic() - started)
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)

    try:
        async with workers(
            settings, 2, tmp_path, app=APP, env={SHARED_DIR_VAR: str(shared)}
        ) as group:
            async with create_app(publisher).bus as bus:
                publishing = asyncio.create_task(publish_until_stopped())
                try:
                    await eventually(lambda: len(ledger.acked) >= 500, what="500 published")
                    survivor = await leader_of(topic, 0)
                    for node in NODES:
                        if node != survivor:
                            down.append(node)
                            await services("stop-kafka", str(node))
                    down_at = time.time()
                    await asyncio.sleep(DOWN_S)
                    spooled_while_down = bus.spool.count
                    handled_while_down = by_message(ordered_calls(w.folder for w in group))
                    back_at = time.time()
                    returning = down.pop()
                    await services("start-kafka", str(returning))
                    await eventually(
                        lambda: bus.spool.count == 0, timeout_s=120, what="the spool delivered"
                    )
                    drained_s = time.time() - back_at
                    await asyncio.sleep(3)
                finally:
                    stop_publishing.set()
                    await publishing
            # The bus is closed: everything it took is acknowledged or spooled.
            assert bus.spool.count == 0
            published = set(ledger.acked) | set(spooled)
            journal = await handled_to_the_end(
                group, published, topic, settings.kafka.consumer_group_id
            )
            handled_all_s = (
                max(made[0][1] for m, made in by_message(journal).items() if m in published)
                - back_at
            )
            running = [w.name for w in group if w.process.poll() is None]
    finally:
        for node in down:
            await services("start-kafka", str(node))

    calls = by_message(journal)
    lost = sum(1 for m in published if m not in calls)
    duplicated = sum(len(made) - 1 for m, made in calls.items() if m in published)
    violations = order_violations(journal)
    sent_while_down = {m for m, at in ledger.sent_at.items() if down_at <= at < back_at}
    # Acknowledged while only one broker held the partition: what must not be.
    acked_while_down = [
        m for m in sent_while_down if m in ledger.acked and ledger.acked_at[m] < back_at
    ]
    visible_while_down = [m for m in sent_while_down if m in handled_while_down]
    report.append(
        Row(
            "2 of 3 brokers down",
            len(published),
            len(calls),
            lost,
            duplicated,
            round(drained_s, 1),
            {
                "published_while_down": len(sent_while_down),
                "acked_while_down": len(acked_while_down),
                "handled_while_down": len(visible_while_down),
                "spooled": len(spooled),
                "in_spool_while_down": spooled_while_down,
                "longest_publish_call_s": round(max(publish_s), 1),
                "spool_delivered_after_restart_s": round(drained_s, 1),
                "all_handled_after_restart_s": round(handled_all_s, 1),
                "order_violations": len(violations),
                "workers_running": len(running),
            },
        )
    )
    assert sent_while_down, "nothing was published while two brokers were down"
    assert not acked_while_down, f"{len(acked_while_down)} acknowledged with one broker up"
    assert not visible_while_down, f"{len(visible_while_down)} handled with one broker up"
    assert sent_while_down <= spooled.keys(), "each went to the spool"
    assert lost == 0
    assert not violations, violations[:10]
    assert len(running) == 2
