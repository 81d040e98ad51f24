"""Running an app with handlers against the real broker, and watching what they do."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from dawning_streams import App
from dawning_streams.core.partitioners import consistent_random


@dataclass
class Calls:
    """What a test handler was called with, and when (``time.time()``)."""

    seen: list[tuple[float, object]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, item: object) -> None:
        self.seen.append((time.time(), item))
        self.changed.set()

    @property
    def items(self) -> list[object]:
        return [item for _, item in self.seen]

    async def wait_until(self, done: Callable[[list[object]], bool], timeout_s: float = 30) -> None:
        async with asyncio.timeout(timeout_s):
            while not done(self.items):
                self.changed.clear()
                await self.changed.wait()


async def eventually(
    check: Callable[[], object],
    timeout_s: float = 90,
    what: str = "",
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll ``check`` (plain or async) until it gives something true, and return
    that; fail after ``timeout_s``, saying ``what`` was awaited (and what
    ``explain`` then says)."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return result
                await asyncio.sleep(0.2)
    except TimeoutError:
        said = f"\n{explain()}" if explain is not None else ""
        raise AssertionError(f"not within {timeout_s} s: {what or check!r}{said}") from None


def consumer_state(app: App) -> str:
    """Where ``app``'s consumer and table recovery stand, for a test that waited in vain."""
    consumer: Any = app.consumer
    recovery: Any = app.tables.recovery
    client = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    lines = [
        f"{app.conf.id} ({app.conf.broker_client_id}): flow_active={consumer.flow_active}"
        f" in_recovery={recovery.in_recovery} assignment={sorted(consumer.assignment())}",
        f"  Faust paused={sorted(consumer._paused_partitions)}"
        f" active={sorted(consumer._active_partitions or ())}",
        f"  aiokafka paused={sorted(client.paused()) if client is not None else '?'}",
        f"  recovery active_tps={sorted(recovery.active_tps)}"
        f" offsets={dict(recovery.active_offsets)} highwaters={dict(recovery.active_highwaters)}",
        # Faust drops a fetched record below the offset it last read.
        f"  Faust read offsets={dict(consumer._read_offset)}",
    ]
    if client is not None:
        subscription = client._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
        if assignment is not None:
            for tp in sorted(assignment.tps):
                state = assignment.state_value(tp)
                lines.append(
                    f"  {tp.topic}[{tp.partition}] position={state._position}"
                    f" paused={state.paused} awaiting_reset={state.awaiting_reset}"
                )
    return "\n".join(lines)


@asynccontextmanager
async def running(app: App) -> AsyncIterator[App]:
    """The app started as a worker (no web server), stopped afterwards."""
    await app.start()
    try:
        async with asyncio.timeout(60):
            while not app.consumer.assignment():
                await asyncio.sleep(0.1)
        yield app
    finally:
        await app.stop()


def same_partition_users(count: int, partitions: int = 3) -> list[uuid.UUID]:
    """``count`` user ids whose messages the default partitioner puts on one partition."""
    users: list[uuid.UUID] = []
    while len(users) < count:
        user = uuid.uuid4()
        if consistent_random(str(user).encode(), list(range(partitions)), []) == 0:
            users.append(user)
    return users
