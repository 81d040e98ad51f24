"""``/health`` and ``/ready`` of a real worker, and how stuck recovery is told apart."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from dawning_streams import Settings, UserEventMessage, create_app
from dawning_streams.core.settings import HealthSettings
from dawning_streams.observability.health import RecoveryState, assess_recovery

from ..conftest import ROOT, _profile

pytestmark = pytest.mark.kafka


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with http.get(url) as response:
        return response.status, await response.json()


async def test_ready_stays_503_until_partitions_are_assigned_and_recovered(
    settings: Settings,
) -> None:
    # Faust waits this long after an assignment before it recovers the tables,
    # which holds the worker in "assigned, not recovered" long enough to see it.
    app = create_app(settings, stream_recovery_delay=3.0)
    counts = app.Table("event-counts", default=int, partitions=settings.kafka.partitions)

    @app.handler
    async def count(message: UserEventMessage) -> None:
        counts[message.event_type] += 1

    base = f"http://127.0.0.1:{settings.web.port}"
    answers: list[tuple[int, dict]] = []  # type: ignore[type-arg]

    async def watch() -> None:
        """Ask /ready from the moment the web port opens until it answers 200."""
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    status, body = await get(http, f"{base}/ready")
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
                    continue
                answers.append((status, body))
                health_status, health = await get(http, f"{base}/health")
                assert (health_status, health["status"]) == (200, "alive")
                if status == 200:
                    return
                await asyncio.sleep(0.1)

    watcher = asyncio.create_task(watch())
    try:
        await app.start()
        async with asyncio.timeout(60):
            await watcher
    finally:
        watcher.cancel()
        await app.stop()

    for status, body in answers[:-1]:
        assert status == 503 and body["ready"] is False
    waiting = [
        body["checks"]
        for _, body in answers
        if body["checks"]["assignment"]["partitions"] > 0
        and body["checks"]["recovery"]["state"] == "waiting"
    ]
    assert waiting, answers  # assigned, but the tables not yet recovered: not ready
    assert all(not checks["recovery"]["ok"] for checks in waiting)
    status, final = answers[-1]
    assert final["ready"] is True
    assert final["checks"]["broker"]["ok"] is True
    assert final["checks"]["assignment"] == {
        "ok": True,
        "partitions": final["checks"]["assignment"]["partitions"],
        "rebalancing": False,
    }
    # Three source partitions, their delay and retry tiers, and the changelog.
    assert final["checks"]["assignment"]["partitions"] >= 3
    assert final["checks"]["recovery"] == {"ok": True, "state": "done", "stuck": False}


def state(**changes: object) -> RecoveryState:
    fields: dict[str, object] = {
        "completed_once": True,
        "in_recovery": True,
        "remaining": 1200,
        "running_s": 30.0,
        "idle_s": 2.0,
    }
    return RecoveryState(**{**fields, **changes})  # type: ignore[arg-type]


def test_recovery_that_reads_nothing_for_the_stall_time_is_reported_stuck() -> None:
    progressing = assess_recovery(state(idle_s=2.0), stall_s=120)
    assert progressing["ok"] is False and progressing["stuck"] is False
    assert progressing["remaining"] == 1200 and progressing["state"] == "recovering"
    stalled = assess_recovery(state(idle_s=121.0), stall_s=120)
    assert stalled["ok"] is False and stalled["stuck"] is True
    # Nothing read since recovery started: stuck once it has run that long.
    silent = assess_recovery(state(idle_s=None, running_s=200.0), stall_s=120)
    assert silent["stuck"] is True
    young = assess_recovery(state(idle_s=None, running_s=5.0), stall_s=120)
    assert young["stuck"] is False


def test_a_rebalance_that_does_not_reach_recovery_is_reported_stuck() -> None:
    waiting = state(in_recovery=False, completed_once=False, rebalancing_s=3.0)
    assert assess_recovery(waiting, stall_s=120) == {
        "ok": False,
        "state": "waiting",
        "rebalancing_s": 3.0,
        "stuck": False,
    }
    hung = state(in_recovery=False, rebalancing_s=150.0)
    assert assess_recovery(hung, stall_s=120)["stuck"] is True


def test_recovery_is_done_only_after_the_first_assignment_was_recovered() -> None:
    before = assess_recovery(state(completed_once=False, in_recovery=False), stall_s=120)
    assert before == {"ok": False, "state": "waiting", "stuck": False}
    after = assess_recovery(state(in_recovery=False), stall_s=120)
    assert after == {"ok": True, "state": "done", "stuck": False}


@pytest.fixture
async def own_broker(settings: Settings) -> AsyncIterator[tuple[Settings, int]]:
    """The test settings on the broker of ``scripts/sasl.env`` (its plain listener), which
    only these tests use, so one may pause it; and that broker's process id."""
    profile = _profile("sasl")
    bootstrap = f"127.0.0.1:{profile['KAFKA_PORT']}"
    pid_file = ROOT / profile["DATA_DIR"] / "kafka" / "kafka.pid"
    if not pid_file.exists():
        pytest.fail(
            "the second test broker is not running; start it with "
            "`scripts/services.sh start sasl` (make test does)",
            pytrace=False,
        )
    kafka = dataclasses.replace(settings.kafka, bootstrap_servers=(bootstrap,))
    yield dataclasses.replace(settings, kafka=kafka), int(pid_file.read_text())
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        prefix = settings.kafka.consumer_group_id.removesuffix("-group")
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def test_ready_reports_recovery_that_reads_nothing_as_stuck(
    own_broker: tuple[Settings, int],
) -> None:
    settings, broker_pid = own_broker
    settings = dataclasses.replace(settings, health=HealthSettings(recovery_stall_s=1))
    app = create_app(settings, stream_recovery_delay=2.0)
    counts = app.Table("event-counts", default=int, partitions=settings.kafka.partitions)

    @app.handler
    async def count(message: UserEventMessage) -> None:
        counts[message.event_type] += 1

    url = f"http://127.0.0.1:{settings.web.port}/ready"
    seen: list[dict] = []  # type: ignore[type-arg]

    async def ready_until(done: Callable[[int, dict], bool]) -> None:  # type: ignore[type-arg]
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    status, body = await get(http, url)
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
                    continue
                seen.append(body)
                if done(status, body):
                    return
                await asyncio.sleep(0.1)

    def assigned_not_recovered(status: int, body: dict) -> bool:  # type: ignore[type-arg]
        checks = body["checks"]
        return checks["assignment"]["partitions"] > 0 and checks["recovery"]["state"] == "waiting"

    paused = False
    # Starting returns once the worker has recovered, so it runs beside the checks.
    starting = asyncio.create_task(app.start())
    try:
        async with asyncio.timeout(60):
            await ready_until(assigned_not_recovered)
            # Recovery starts after its delay, and cannot read from a paused broker.
            os.kill(broker_pid, signal.SIGSTOP)
            paused = True
            await ready_until(lambda status, body: body["checks"]["recovery"]["stuck"])
            stuck = seen[-1]
            os.kill(broker_pid, signal.SIGCONT)
            paused = False
            await starting
            await ready_until(lambda status, body: status == 200)
    finally:
        if paused:
            os.kill(broker_pid, signal.SIGCONT)
        if not starting.done():
            starting.cancel()
        await app.stop()
    assert stuck["ready"] is False
    # Paused before recovery began, the rebalance hangs; paused after, recovery does.
    recovery = stuck["checks"]["recovery"]
    assert recovery["state"] in ("waiting", "recovering"), recovery
    assert recovery.get("idle_s", recovery.get("rebalancing_s", 0)) >= 1, recovery
    assert seen[-1]["ready"] is True
    assert seen[-1]["checks"]["recovery"] == {"ok": True, "state": "done", "stuck": False}
