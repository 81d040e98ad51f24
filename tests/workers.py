"""Several real worker processes in one consumer group, for broadcast tests."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from dawning_streams import Settings
from dawning_streams.settings import WebSettings

from .conftest import free_port

SETTLE_S = 3.0


@dataclass
class Worker:
    """One ``python -m dawning_streams worker`` process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def settled(self) -> bool:
        """Ready, and every assignment it was given has finished recovering."""
        log = self.log.read_bytes()
        return b"[^Worker]: Ready" in log and log.count(
            b"Executing _on_partitions_assigned"
        ) == log.count(b"[^---Recovery]: Worker ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def get_json(self, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        """Status and JSON body; a worker mid-rebalance may answer otherwise: (0, {})."""
        try:
            async with aiohttp.ClientSession() as http, http.get(self.url + path) as response:
                return response.status, await response.json()
        except (aiohttp.ClientError, ValueError):
            return 0, {}


@asynccontextmanager
async def workers(settings: Settings, count: int, folder: Path) -> AsyncIterator[list[Worker]]:
    """``count`` workers of ``settings``, each with its own web port, name and directory."""
    started: list[Worker] = []
    try:
        for n in range(count):
            name = f"{settings.instance_name}-{n}"
            mine = dataclasses.replace(
                settings, instance_name=name, web=WebSettings(port=free_port())
            )
            workdir = folder / name
            workdir.mkdir()
            log = workdir / "worker.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "dawning_streams", "worker", "-l", "info"],
                    cwd=workdir,
                    env={**os.environ, **mine.to_environ()},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            started.append(Worker(name, mine.web.port, process, log))
        async with asyncio.timeout(120):
            while not all(worker.settled() for worker in started):
                for worker in started:
                    assert worker.process.poll() is None, worker.log.read_text()
                await asyncio.sleep(0.5)
            # Settled means: no member has rebalanced for a while.
            await asyncio.sleep(SETTLE_S)
            while not all(worker.settled() for worker in started):
                await asyncio.sleep(0.5)
        yield started
    finally:
        for worker in started:
            worker.process.send_signal(signal.SIGTERM)
        for worker in started:
            try:
                worker.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.process.kill()
