"""The fault suite's worker: the Dawning app, plus what lets a test count from outside.

``faust -A tests.faults.fault_app worker`` runs every Dawning agent, and adds:

* ``record_handled``, an ordinary ``@app.handler`` of :class:`AuditLogMessage`
  on the flow topic (``<audit topic>.flow``). It appends each handled
  ``MessageId`` to ``handled.log`` in the worker's directory, one line per
  call, written straight through to the kernel, so the line survives a
  ``kill -9`` that comes after it. An ``Action`` of ``slow:<s>`` sleeps that
  long first; ``echo`` also republishes the id through the worker's own bus to
  ``<flow>.echo``, which shows the worker's producer working;
* ``fault-tick``, a scheduled task (every second, under the Redis lock) that
  appends to ``scheduled.log`` each time it runs;
* ``/faults/cache/{key}``: GET reads ``app.distributed_cache``, POST stores the
  body in it for a minute.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from pathlib import Path

from faust.web import Request, Response, View

import dawning_streams.agents
from dawning_streams import AuditLogMessage, Settings, create_app

settings = Settings.load()
app = create_app(settings)
dawning_streams.agents.install(app)


def flow_topic(settings: Settings) -> str:
    """The topic ``record_handled`` consumes."""
    return f"{settings.kafka.topics.audit_log}.flow"


def echo_topic(settings: Settings) -> str:
    """Where ``record_handled`` republishes the ids of ``echo`` messages."""
    return f"{flow_topic(settings)}.echo"


@functools.cache
def _journal(name: str) -> int:
    """The journal in the worker's directory, opened on its first line (the tests
    import this module for its topic names, and must not create journals)."""
    return os.open(Path.cwd() / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@app.handler(AuditLogMessage, topic=flow_topic(settings), name="record_handled")
async def record_handled(message: AuditLogMessage) -> None:
    """Note that ``message`` was handled, by this process, now."""
    if message.action.startswith("slow:"):
        await asyncio.sleep(float(message.action.removeprefix("slow:")))
    if message.action == "echo":
        await app.bus.forward(echo_topic(settings), None, str(message.message_id).encode())
    line = f"{message.message_id} {os.getpid()} {time.time():.3f}\n"
    os.write(_journal("handled.log"), line.encode())


@app.scheduled(every_s=1.0, name="fault-tick", lock_ttl_s=5.0)
async def fault_tick() -> None:
    """Note each run, so a test can count runs while Redis is down."""
    os.write(_journal("scheduled.log"), f"{os.getpid()} {time.time():.3f}\n".encode())


@app.page("/faults/cache/{key}")
class CacheView(View):
    """The distributed cache, as this worker sees it."""

    async def get(self, request: Request, key: str) -> Response:
        value = await app.distributed_cache.get(key, region="faults")
        return self.json({"key": key, "value": value.decode() if value is not None else None})

    async def post(self, request: Request, key: str) -> Response:
        await app.distributed_cache.set(key, await request.read(), ttl_s=60, region="faults")
        return self.json({"key": key, "stored": True})
