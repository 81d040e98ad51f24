"""Scheduled tasks: once per period across instances, through failover; audit retention."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from dawning_streams import AuditLogMessage, Settings, create_app
from dawning_streams.agents import audit_log
from dawning_streams.core.names import scheduled_key
from dawning_streams.core.settings import AuditSettings
from dawning_streams.services.audit_store import AuditQuery

from ..handler_helpers import eventually, running


class Run:
    """One run of the task: who, when it started, when it finished (None if cut off)."""

    def __init__(self, name: str) -> None:
        self.name, self.started, self.ended = name, time.time(), None


def instance(settings: Settings, runs: list[Run], name: str, task: str):  # type: ignore[no-untyped-def]
    app = create_app(dataclasses.replace(settings, instance_name=name), web_enabled=False)

    @app.scheduled(every_s=1.0, name=task)
    async def tick() -> None:
        run = Run(name)
        runs.append(run)
        await asyncio.sleep(0.3)
        run.ended = time.time()  # type: ignore[assignment]

    return app


async def test_two_instances_run_a_task_once_per_period_and_survive_failover(
    settings: Settings,
) -> None:
    task = f"t{uuid.uuid4().hex[:8]}"
    runs: list[Run] = []
    first, second = (instance(settings, runs, n, task) for n in ("a", "b"))
    for app in (first, second):
        await app.redis.start()
        await app.scheduler.start()
    # Events, not time: however slow the machine, these counts come in the end.
    await eventually(lambda: len([r for r in runs if r.ended]) >= 4, what="four runs finished")
    await first.scheduler.stop()  # the instance that may be running it goes away
    failover = time.time()
    await eventually(
        lambda: len([r for r in runs if r.started > failover and r.ended]) >= 2,
        what="two runs after the failover",
    )
    for app in (first, second):
        await app.scheduler.stop()
        await app.redis.stop()
    shown = [(r.name, r.started, r.ended) for r in runs]
    for before, after in itertools.pairwise(runs):
        # Never two at once; a finished run is not repeated within its period
        # (never earlier), and one cut off by the failover is picked up, not skipped.
        assert before.ended is None or after.started >= before.ended, shown
        assert before.ended is None or after.started - before.started >= 0.95, shown
    after_failover = {r.name for r in runs if r.started > failover}
    assert after_failover == {"b"}, shown


async def test_a_failed_run_is_tried_again_after_a_growing_pause_not_skipped(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    name = f"t{uuid.uuid4().hex[:8]}"
    key = scheduled_key(settings.kafka.consumer_group_id, name)
    # Each attempt: when it started, and when Redis said it was due then.
    attempts: list[tuple[float, float | None]] = []

    @app.scheduled(every_s=60.0, name=name)
    async def flaky() -> None:
        stored = await app.redis.client.get(key)
        attempts.append((time.time(), None if stored is None else float(stored) + 60.0))
        if len(attempts) <= 2:
            raise RuntimeError(f"run {len(attempts)} fails")

    await app.redis.start()
    await app.scheduler.start()
    try:
        await eventually(lambda: len(attempts) == 3, what="two failed runs tried again")
        # Done now: not due again within its 60 s, whoever asks.
        assert await app.scheduler.run_if_due(app.scheduler.tasks[name]) is False
        last = await app.redis.client.get(key)
    finally:
        await app.scheduler.stop()
        await app.redis.stop()
    assert len(attempts) == 3
    (first, never), (second, due_second), (third, due_third) = attempts
    assert never is None
    # Due 1 s after the first failure, 2 s after the second; never run early.
    assert due_second == pytest.approx(first + 1, abs=0.5) and second >= due_second
    assert due_third == pytest.approx(second + 2, abs=0.5) and third >= due_third
    assert last is not None and float(last) == pytest.approx(third, abs=0.01)


async def test_a_plain_function_runs_in_a_thread_once_per_period(settings: Settings) -> None:
    app = create_app(settings, web_enabled=False)
    runs: list[tuple[float, int]] = []

    @app.scheduled(every_s=2.0, name=f"t{uuid.uuid4().hex[:8]}")
    def plain() -> None:
        runs.append((time.time(), threading.get_ident()))

    await app.redis.start()
    await app.scheduler.start()
    try:
        await eventually(lambda: len(runs) >= 3, what="three runs")
    finally:
        await app.scheduler.stop()
        await app.redis.stop()
    assert threading.get_ident() not in {ident for _, ident in runs}
    assert all(b - a >= 1.95 for (a, _), (b, _) in itertools.pairwise(runs)), runs


@pytest.mark.kafka
async def test_audit_retention_deletes_only_old_entries(settings: Settings) -> None:
    settings = dataclasses.replace(
        settings, audit=AuditSettings(retention_days=30, batch_within_ms=100)
    )
    app = create_app(settings, web_enabled=False)
    audit_log.install(app)
    now = datetime.now(UTC)
    old, recent = (
        AuditLogMessage(user_id=uuid.uuid4(), action=a, entity_type="User", timestamp=t)
        for a, t in (("old", now - timedelta(days=31)), ("recent", now - timedelta(days=29)))
    )
    async with running(app):
        await app.audit_store.write([old, recent])
        await app.purge_old_audit_entries()
        rows = await app.audit_store.query(AuditQuery())
    assert [r["action"] for r in rows] == ["recent"]


async def test_a_long_run_holds_up_neither_the_other_tasks_nor_the_checks(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings, web_enabled=False)
    slow_runs: list[Run] = []
    quick_runs: list[float] = []

    @app.scheduled(every_s=60.0, name=f"slow{uuid.uuid4().hex[:8]}")
    async def slow() -> None:
        run = Run("slow")
        slow_runs.append(run)
        await asyncio.sleep(4)
        run.ended = time.time()  # type: ignore[assignment]

    @app.scheduled(every_s=1.0, name=f"quick{uuid.uuid4().hex[:8]}")
    async def quick() -> None:
        quick_runs.append(time.time())

    await app.redis.start()
    await app.scheduler.start()
    try:
        await eventually(lambda: slow_runs and slow_runs[0].ended, what="the slow run finished")
    finally:
        await app.scheduler.stop()
        await app.redis.stop()
    [run] = slow_runs
    assert any(run.started < at < run.ended for at in quick_runs), (run.started, quick_runs)  # type: ignore[operator]
    assert not [r for r in caplog.records if "overlapping" in r.getMessage()]
