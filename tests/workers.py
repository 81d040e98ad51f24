"""Real worker processes in one consumer group, for broadcast and fault tests."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from dawning_streams import Settings
from dawning_streams.core.settings import WebSettings

from .conftest import ROOT, free_port

SETTLE_S = 3.0
#: Seconds the workers of a group get to stop after SIGTERM, all together.
STOP_S = 60.0
FAUST = Path(sys.executable).with_name("faust")


@dataclass
class Worker:
    """One worker process: ``python -m dawning_streams worker`` or ``faust -A <app> worker``."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    terminated: bool = field(default=False, init=False)

    def settled(self) -> bool:
        """Ready, and the last assignment it was given has finished recovering (a
        recovery that a new rebalance interrupts never says so)."""
        log = self.log.read_bytes()
        return b"[^Worker]: Ready" in log and log.rfind(
            b"[^---Recovery]: Worker ready"
        ) > log.rfind(b"Executing _on_partitions_assigned")

    @property
    def folder(self) -> Path:
        return self.log.parent

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get_json(self, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        """Status and JSON body of ``GET path``.

        Any status comes back for the test to judge, but a worker that cannot
        be reached, answers 500, or answers with something other than a JSON
        object fails the test, naming the worker, the path and what it said.
        """
        try:
            async with aiohttp.ClientSession() as http, http.get(self.url + path) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientError as exc:
            raise AssertionError(f"{self.name}: GET {path} failed: {exc!r}") from exc
        if status == 500:
            raise AssertionError(f"{self.name}: GET {path} answered 500: {text[:2000]}")
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise AssertionError(
                f"{self.name}: GET {path} ({status}) is not a JSON object: {text[:500]!r}"
            )
        return status, body

    async def poll_json(self, path: str) -> tuple[int, dict] | None:  # type: ignore[type-arg]
        """:meth:`get_json`, or None while nothing listens on the worker's port yet
        (it is starting); for polling with ``eventually``."""
        try:
            return await self.get_json(path)
        except AssertionError as exc:
            if isinstance(exc.__context__, aiohttp.ClientConnectorError):
                return None
            raise

    def terminate(self) -> None:
        """SIGTERM, once: a second one that lands while the worker closes its event
        loop (its signal handlers gone) would end it with -15 instead of 0."""
        if self.process.poll() is None and not self.terminated:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, then wait. A worker still running after ``timeout_s`` is killed,
        and fails the test with its last log lines."""
        self.terminate()
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{self.name} did not stop within {timeout_s:.0f} s of SIGTERM:\n{self.tail()}"
            ) from None

    def tail(self, lines: int = 40) -> str:
        """The last lines of its log."""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    settings: Settings,
    name: str,
    folder: Path,
    *,
    app: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Worker:
    """Start a worker of ``settings`` called ``name``, with its own web port and directory.

    ``app`` is a Faust app module (``faust -A app worker``); by default the
    Dawning worker, ``python -m dawning_streams worker``.
    """
    mine = dataclasses.replace(settings, instance_name=name, web=WebSettings(port=free_port()))
    workdir = folder / name
    workdir.mkdir()
    log = workdir / "worker.log"
    command = (
        [str(FAUST), "-A", app, "worker", "-l", "info"]
        if app
        else [sys.executable, "-m", "dawning_streams", "worker", "-l", "info"]
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": str(ROOT), **mine.to_environ(), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Worker(name, mine.web.port, process, log)


async def settle(workers: list[Worker], timeout_s: float = 120) -> None:
    """Wait until every worker is ready and the group has stopped rebalancing.

    After ``timeout_s`` the test fails, naming each worker that had not
    settled, with the last lines of its log.
    """
    try:
        async with asyncio.timeout(timeout_s):
            while not all(worker.settled() for worker in workers):
                for worker in workers:
                    assert worker.process.poll() is None, worker.log.read_text()
                await asyncio.sleep(0.5)
            # Settled means: no member has rebalanced for a while.
            await asyncio.sleep(SETTLE_S)
            while not all(worker.settled() for worker in workers):
                await asyncio.sleep(0.5)
    except TimeoutError:
        waiting = [worker for worker in workers if not worker.settled()]
        raise AssertionError(
            f"{len(waiting)} of {len(workers)} workers had not settled after {timeout_s:.0f} s:\n"
            + "\n".join(f"--- {worker.name}:\n{worker.tail(60)}" for worker in waiting)
        ) from None


@asynccontextmanager
async def workers(
    settings: Settings,
    count: int,
    folder: Path,
    *,
    app: str | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[list[Worker]]:
    """``count`` settled workers of ``settings``, stopped with SIGTERM afterwards.

    ``env`` is added to their environment. A worker the test appends to the
    list (one it started in place of a killed one) is stopped with the others.
    """
    started: list[Worker] = []
    failed = False
    try:
        for n in range(count):
            started.append(
                spawn(settings, f"{settings.instance_name}-{n}", folder, app=app, env=env)
            )
        await settle(started)
        yield started
    except BaseException:
        failed = True
        raise
    finally:
        # Workers the test killed or stopped itself are its business; the rest
        # get SIGTERM together, and each must exit 0 within one shared deadline.
        # One still starting is let finish first: before its signal handlers
        # exist, SIGTERM ends any process with -15.
        running = [worker for worker in started if worker.process.poll() is None]
        deadline = time.monotonic() + STOP_S
        for worker in running:
            while (
                worker.process.poll() is None
                and b"[^Worker]: Ready" not in worker.log.read_bytes()
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.2)
        for worker in running:
            worker.terminate()
        deadline = time.monotonic() + STOP_S
        problems = []
        for worker in running:
            try:
                code = worker.stop(timeout_s=max(deadline - time.monotonic(), 1.0))
            except AssertionError as exc:
                problems.append(str(exc))
            else:
                if code != 0:
                    problems.append(f"{worker.name} exited {code} after SIGTERM:\n{worker.tail()}")
        if problems and not failed:
            raise AssertionError("\n\n".join(problems))
