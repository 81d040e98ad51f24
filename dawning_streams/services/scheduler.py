"""Periodic tasks that run on one instance at a time, once per period.

Every instance ticks; a task that is due is run by whichever instance takes
its lock first. The time of the last run is kept in Redis, next to the lock,
so after a failover the next instance neither repeats a run that finished nor
skips one that is due: a run that died half-way leaves the last-run time alone
and is tried again on the next tick, and one that raised is tried again after
1 s, then 2, 4 and so on, up to a period or five minutes. Tasks must be
idempotent, as handlers are. With Redis unreachable no task runs.

A task is a coroutine function, or a plain function, which runs in a thread
(as a plain handler does), so it cannot stall the event loop.

    @app.scheduled(every_s=3600)
    async def purge_old_audit_entries() -> None: ...
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mode import Service

from dawning_streams.core.names import scheduled_key, valid_name
from dawning_streams.services.lock import DistributedLock, LockUnavailable
from dawning_streams.services.redis_pool import RedisPool, unreachable

__all__ = ["ScheduledTask", "Scheduler"]

logger = logging.getLogger(__name__)

TICK_S = 1.0
#: The longest wait before a failed run is tried again (or a period, if shorter).
MAX_RETRY_S = 300.0


@dataclass(frozen=True, slots=True)
class ScheduledTask:
    """A function to run every ``every_s`` seconds somewhere in the group."""

    name: str
    every_s: float
    fn: Callable[[], Awaitable[Any]]
    lock_ttl_s: float


class Scheduler(Service):
    """Checks each task every second and runs the due ones under their locks,
    each on its own: a long run neither delays the others nor the next check.

    ``group`` (the consumer group) names the locks and last-run times: apps of
    other consumer groups may share the Redis, and their tasks are theirs.
    """

    def __init__(
        self, redis: RedisPool, lock: DistributedLock, *, group: str, **kwargs: Any
    ) -> None:
        self.redis = redis
        self.lock = lock
        self.tasks: dict[str, ScheduledTask] = {}
        #: Failed runs in a row, by task: how long until the next try.
        self._failures: dict[str, int] = {}
        #: The tasks being checked or run here, by name: one at a time each.
        self._running: dict[str, asyncio.Future[bool]] = {}
        self._group = group
        super().__init__(**kwargs)

    def add(
        self,
        fn: Callable[[], Any],
        *,
        every_s: float,
        name: str | None = None,
        lock_ttl_s: float | None = None,
    ) -> ScheduledTask:
        """Schedule ``fn``; a bad name or period fails here, at import."""
        name = name or fn.__name__
        if not valid_name(name):
            raise ValueError(f"scheduled task name {name!r} may use only letters, digits, _ and -")
        if name in self.tasks:
            raise ValueError(f"a scheduled task named {name!r} already exists")
        if isinstance(every_s, bool) or not isinstance(every_s, int | float):
            raise TypeError(f"scheduled task {name!r}: every_s must be seconds, got {every_s!r}")
        if not every_s >= TICK_S:
            # Checked once a tick: a shorter period would silently be a tick.
            raise ValueError(
                f"scheduled task {name!r}: every_s must be at least {TICK_S:g} s (tasks are"
                f" checked once a second), got {every_s!r}"
            )
        if lock_ttl_s is not None and not (
            isinstance(lock_ttl_s, int | float)
            and not isinstance(lock_ttl_s, bool)
            and lock_ttl_s > 0
        ):
            raise ValueError(
                f"scheduled task {name!r}: lock_ttl_s must be positive seconds, got {lock_ttl_s!r}"
            )
        run = fn if inspect.iscoroutinefunction(fn) else functools.partial(asyncio.to_thread, fn)
        task = ScheduledTask(name, every_s, run, lock_ttl_s or max(30.0, every_s))
        self.tasks[name] = task
        return task

    @Service.task
    async def _tick(self) -> None:
        while not self.should_stop:
            for task in list(self.tasks.values()):
                if task.name not in self._running:
                    running = self._running[task.name] = self.add_future(self.run_if_due(task))
                    running.add_done_callback(
                        lambda _, name=task.name: self._running.pop(name, None)  # type: ignore[misc]
                    )
            await self.sleep(TICK_S)

    async def run_if_due(self, task: ScheduledTask) -> bool:
        """Run ``task`` here if it is due and no other instance is running it."""
        try:
            due = await self._due(task)
            self.redis.reachability.up()
            if not due:
                return False
            lock_name = f"{self._group}:scheduled:{task.name}"
            async with self.lock.try_acquire(lock_name, ttl_s=task.lock_ttl_s) as handle:
                if handle is None or not await self._due(task):
                    return False
                started = time.time()
                key = scheduled_key(self._group, task.name)
                try:
                    await task.fn()
                except Exception:
                    failures = self._failures[task.name] = self._failures.get(task.name, 0) + 1
                    retry_s = min(2.0 ** (failures - 1), task.every_s, MAX_RETRY_S)
                    logger.exception(
                        "scheduled task %s failed (%d in a row); it runs again in %g s",
                        task.name,
                        failures,
                        retry_s,
                    )
                    # Due again ``retry_s`` from now, on whichever instance.
                    await self.redis.client.set(key, repr(time.time() - task.every_s + retry_s))
                    return False
                self._failures.pop(task.name, None)
                await self.redis.client.set(key, repr(started))
                return True
        except unreachable(LockUnavailable) as exc:
            # Logged once per outage (and a line a minute), not once per tick.
            self.redis.reachability.down(exc)
            logger.debug("scheduled task %s skipped this tick: %s", task.name, exc)
            return False

    async def _due(self, task: ScheduledTask) -> bool:
        last = await self.redis.client.get(scheduled_key(self._group, task.name))
        return last is None or float(last) + task.every_s <= time.time()
