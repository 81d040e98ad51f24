"""A Kafka broker of a test's own, which the test may stop, kill and restart.

The shared test broker must stay up for every other test, so tests that take
the broker away start a private one with ``scripts/kafka.sh`` on free ports.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer

from .conftest import ROOT, free_port

KAFKA_SH = ROOT / "scripts" / "kafka.sh"


@dataclass
class BrokerProcess:
    """One single-node KRaft broker in ``data_dir``."""

    port: int
    controller_port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _script(self, action: str) -> None:
        env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_DATA_DIR": str(self.data_dir),
        }
        process = await asyncio.create_subprocess_exec(
            str(KAFKA_SH),
            action,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        assert process.returncode == 0, f"kafka.sh {action}: {output.decode()}"

    async def start(self) -> None:
        """Start it (formatting storage the first time) and wait until it answers."""
        await self._script("start")

    async def accepts_idempotent_producers(self, timeout_s: float = 60) -> None:
        """Wait until a new idempotent producer gets its id and an ack: a broker
        that has just started answers metadata before its coordinators have
        loaded, and a producer's first send waits for that meanwhile."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all"
        )
        await producer.start()
        try:
            await asyncio.wait_for(producer.send_and_wait("warm-up", b"{}"), timeout_s)
        finally:
            await producer.stop()

    async def stop(self) -> None:
        """Stop it gracefully."""
        await self._script("stop")

    async def kill(self) -> None:
        """``kill -9`` it, as a crash would."""
        pid_file = self.data_dir / "kafka.pid"
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.05)
        pid_file.unlink()


@asynccontextmanager
async def own_broker(folder: Path) -> AsyncIterator[BrokerProcess]:
    """A private broker's coordinates; not started: the test decides when."""
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    broker = BrokerProcess(port, controller_port, folder / "kafka")
    try:
        yield broker
    finally:
        with suppress(AssertionError):
            await broker.stop()
