"""The fault suite's worker: the Dawning app, plus what lets a test count from outside.

``faust -A tests.faults.fault_app worker`` runs every Dawning agent, and adds:

* ``record_handled``, an ordinary ``@app.handler`` of :class:`AuditLogMessage`
  on the flow topic (``<audit topic>.flow``). It appends each handled
  ``MessageId`` to ``handled.log`` in the worker's directory, one line per
  call, written straight through to the kernel, so the line survives a
  ``kill -9`` that comes after it. An ``Action`` of ``slow:<s>`` sleeps that
  long first; ``echo`` also republishes the id through the worker's own bus to
  ``<flow>.echo``, which shows the worker's producer working;
* with ``FAULT_TIMERS`` set to a directory every worker of the test sees,
  ``record_delayed`` and ``record_ordered``, for the durable timers'
  scenarios (:func:`install_timer_handlers`; the other scenarios' workers go
  without them): the first journals each countdown it runs, with the due time
  the message carries, to ``delayed.log``; the second is ordered, retries 3
  times after 1, 2 and 4 s, journals each message it handles (key and
  sequence number) to ``ordered.log``, and fails a message marked
  ``fail_once`` exactly once, remembered in ``failed.log`` of the
  ``FAULT_TIMERS`` directory;
* with ``FAULT_KINDS`` set to a directory every worker of the test sees, one
  handler of every kind (:func:`install_kind_handlers`): ordered, batched,
  concurrent, and two sharing one topic. Each journals every message it
  handles (handler, key, sequence number, attempt) to ``kinds.log``; the
  ordered and concurrent ones fail a message marked ``fail_once`` exactly
  once, so retries are in flight when the fault comes;
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
from dawning_streams import (
    App,
    AuditLogMessage,
    Retry,
    Settings,
    UserEventMessage,
    create_app,
    current_delivery,
)

settings = Settings.load()
app = create_app(settings)
dawning_streams.agents.install(app)


def flow_topic(settings: Settings) -> str:
    """The topic ``record_handled`` consumes."""
    return f"{settings.kafka.topics.audit_log}.flow"


def echo_topic(settings: Settings) -> str:
    """Where ``record_handled`` republishes the ids of ``echo`` messages."""
    return f"{flow_topic(settings)}.echo"


def delayed_topic(settings: Settings) -> str:
    """The topic of ``record_delayed``; its countdowns go through its timers."""
    return f"{settings.kafka.topics.audit_log}.delayed"


def ordered_topic(settings: Settings) -> str:
    """The topic ``record_ordered`` consumes."""
    return f"{settings.kafka.topics.user_event}.ordered"


#: The ordered handler's retries: 1, 2 and 4 s, then the dead-letter topic.
ORDERED_RETRY = Retry(max_retries=3, backoff_s=1)


@functools.cache
def _journal(name: str) -> int:
    """The journal in the worker's directory, opened on its first line (the tests
    import this module for its topic names, and must not create journals)."""
    return os.open(Path.cwd() / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


#: Set by the timer scenarios: a directory all their workers see.
SHARED_DIR_VAR = "FAULT_TIMERS"


def _shared(name: str) -> Path:
    """A journal every worker of the test sees."""
    return Path(os.environ[SHARED_DIR_VAR]) / name


def install_timer_handlers(app: App, settings: Settings) -> None:
    """Declare ``record_delayed`` and ``record_ordered`` on ``app``: the workers'
    app, or a test's twin of it that publishes and reads the timer tables."""

    @app.handler(AuditLogMessage, topic=delayed_topic(settings), name="record_delayed")
    async def record_delayed(message: AuditLogMessage) -> None:
        """Note that the countdown of ``message`` ran, by this process, now, and
        when the publisher wanted it run (epoch seconds, in ``Description``)."""
        line = f"{message.message_id} {os.getpid()} {time.time():.6f} {message.description}\n"
        os.write(_journal("delayed.log"), line.encode())

    @app.handler(
        UserEventMessage,
        topic=ordered_topic(settings),
        name="record_ordered",
        ordered=True,
        retry=ORDERED_RETRY,
    )
    async def record_ordered(message: UserEventMessage) -> None:
        """Note ``message`` (its key and ``EventData.seq``), or fail it if it is
        marked ``fail_once`` and has never failed before, on any worker."""
        data = message.event_data or {}
        if data.get("fail_once"):
            failed = _shared("failed.log")
            marker = f"{message.message_id} ".encode()
            if not (failed.exists() and marker in failed.read_bytes()):
                line = f"{message.message_id} {os.getpid()} {time.time():.6f}\n"
                fd = os.open(failed, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
                raise ConnectionError(f"{message.message_id} fails once")
        attempt = current_delivery().attempt
        line = (
            f"{message.message_id} {os.getpid()} {time.time():.6f} "
            f"{message.user_id} {data['seq']} {attempt}\n"
        )
        os.write(_journal("ordered.log"), line.encode())


#: The kinds' handlers and the topic each consumes (the shared ones share one).
KINDS = {
    "kind_ordered": "ordered",
    "kind_batched": "batched",
    "kind_concurrent": "concurrent",
    "kind_shared_a": "shared",
    "kind_shared_b": "shared",
}
KINDS_DIR_VAR = "FAULT_KINDS"
#: Retries of the kinds that fail a message once: after 1, 2 and 4 s.
KIND_RETRY = Retry(max_retries=3, backoff_s=1)


def kind_topic(settings: Settings, kind: str) -> str:
    return f"{settings.kafka.topics.user_event}.kinds.{kind}"


def _fails_once(message: UserEventMessage, shared: Path) -> None:
    """Raise the first time ``message`` (marked ``fail_once``) is seen by any worker."""
    failed = shared / "failed.log"
    marker = f"{message.message_id} ".encode()
    if failed.exists() and marker in failed.read_bytes():
        return
    fd = os.open(failed, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{message.message_id} {os.getpid()} {time.time():.6f}\n".encode())
    finally:
        os.close(fd)
    raise ConnectionError(f"{message.message_id} fails once")


def install_kind_handlers(app: App, settings: Settings, shared: Path) -> None:
    """Declare one handler of every kind on ``app``."""

    def journal(handler: str, message: UserEventMessage) -> None:
        data = message.event_data or {}
        line = (
            f"{handler} {message.message_id} {os.getpid()} {time.time():.6f} "
            f"{message.user_id} {data['seq']} {current_delivery().attempt}\n"
        )
        os.write(_journal("kinds.log"), line.encode())

    @app.handler(
        UserEventMessage,
        topic=kind_topic(settings, "ordered"),
        name="kind_ordered",
        ordered=True,
        retry=KIND_RETRY,
    )
    async def kind_ordered(message: UserEventMessage) -> None:
        if (message.event_data or {}).get("fail_once"):
            _fails_once(message, shared)
        journal("kind_ordered", message)

    @app.handler(
        UserEventMessage,
        topic=kind_topic(settings, "batched"),
        name="kind_batched",
        batch_size=50,
        batch_within_s=0.2,
    )
    async def kind_batched(messages: list[UserEventMessage]) -> None:
        for message in messages:
            journal("kind_batched", message)

    @app.handler(
        UserEventMessage,
        topic=kind_topic(settings, "concurrent"),
        name="kind_concurrent",
        concurrency=8,
        retry=KIND_RETRY,
    )
    async def kind_concurrent(message: UserEventMessage) -> None:
        await asyncio.sleep(0.002)  # so the eight overlap
        if (message.event_data or {}).get("fail_once"):
            _fails_once(message, shared)
        journal("kind_concurrent", message)

    @app.handler(UserEventMessage, topic=kind_topic(settings, "shared"), name="kind_shared_a")
    async def kind_shared_a(message: UserEventMessage) -> None:
        journal("kind_shared_a", message)

    @app.handler(UserEventMessage, topic=kind_topic(settings, "shared"), name="kind_shared_b")
    async def kind_shared_b(message: UserEventMessage) -> None:
        journal("kind_shared_b", message)


if os.environ.get(KINDS_DIR_VAR):
    install_kind_handlers(app, settings, Path(os.environ[KINDS_DIR_VAR]))


@app.handler(AuditLogMessage, topic=flow_topic(settings), name="record_handled")
async def record_handled(message: AuditLogMessage) -> None:
    """Note that ``message`` was handled, by this process, now."""
    if message.action.startswith("slow:"):
        await asyncio.sleep(float(message.action.removeprefix("slow:")))
    if message.action == "echo":
        await app.bus.forward(echo_topic(settings), None, str(message.message_id).encode())
    line = f"{message.message_id} {os.getpid()} {time.time():.3f}\n"
    os.write(_journal("handled.log"), line.encode())


if os.environ.get(SHARED_DIR_VAR):
    install_timer_handlers(app, settings)


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
