"""``/health`` and ``/ready`` of a real worker, and how stuck recovery is told apart."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from dawning_streams import Settings, UserEventMessage, create_app
from dawning_streams.health import RecoveryState, assess_recovery

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


def test_recovery_is_done_only_after_the_first_assignment_was_recovered() -> None:
    before = assess_recovery(state(completed_once=False, in_recovery=False), stall_s=120)
    assert before == {"ok": False, "state": "waiting", "stuck": False}
    after = assess_recovery(state(in_recovery=False), stall_s=120)
    assert after == {"ok": True, "state": "done", "stuck": False}
