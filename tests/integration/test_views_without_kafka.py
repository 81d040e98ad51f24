"""A worker whose Kafka does not answer: the views and commands that read the
topics say so (503, or one line and an exit code), never a 500 or a traceback."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest

from dawning_streams import Settings
from dawning_streams.core.names import dead_letter_topic

from ..conftest import ROOT, free_port
from ..handler_helpers import eventually
from ..workers import FAUST, spawn

pytestmark = pytest.mark.kafka

TOKEN = "s3cret-token"


async def test_views_and_commands_that_read_topics_answer_503_or_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    kafka = dataclasses.replace(settings.kafka, bootstrap_servers=(unreachable,))
    settings = dataclasses.replace(settings, kafka=kafka)
    worker = spawn(settings, "no-kafka", tmp_path, env={"DAWNING_WEB__ADMINTOKEN": TOKEN})
    base = f"http://127.0.0.1:{worker.port}"
    dead_letters = dead_letter_topic(settings.kafka.topics.audit_log)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:

            async def health() -> bool:
                try:
                    async with http.get(f"{base}/health") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await eventually(health, 60, "the worker serving /health while it waits for Kafka")
            for method, path, body in [
                ("GET", "/api/messages?key=user-1", None),
                ("GET", "/messages?key=user-1", None),
                ("GET", f"/dead-letters/{dead_letters}", None),
                (
                    "POST",
                    "/api/dead-letters/replay",
                    {"topic": dead_letters, "partition": 0, "offset": 0},
                ),
            ]:
                async with http.request(
                    method, base + path, json=body, headers={"Authorization": f"Bearer {TOKEN}"}
                ) as response:
                    text = await response.text()
                    assert response.status == 503, (path, response.status, text)
                    assert f"Kafka ({unreachable}) did not answer" in text, (path, text)

        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            **settings.to_environ(),
        }
        for command, code in [("timers", 1), ("dlq-list", 1)]:
            done = await asyncio.to_thread(
                subprocess.run,
                [str(FAUST), "-A", "dawning_streams.app", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == code, (command, done.stderr)
            # One line, and no client's own ERROR before it.
            [said] = done.stderr.strip().splitlines()
            assert said.startswith(f"Error: Kafka ({unreachable}) did not answer"), (command, said)
            assert "Traceback" not in done.stderr, (command, done.stderr)
    finally:
        worker.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(worker.process.wait, 60)
    assert exit_code == 0, worker.tail()
    assert "Unclosed AIOKafkaConsumer" not in worker.log.read_text(), worker.tail()
