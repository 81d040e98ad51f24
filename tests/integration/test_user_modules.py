"""A user's own tasks in the standard worker, through ``Worker:Modules``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata

from dawning_streams import Settings, UserEventMessage, create_app

from ..conftest import ROOT
from ..handler_helpers import eventually
from ..workers import Worker, spawn, workers

pytestmark = pytest.mark.kafka

OWN_TASKS = textwrap.dedent("""
    import asyncio
    import os
    import time
    from faust.web import Request, Response, View
    from dawning_streams import UserEventMessage
    from dawning_streams.app import app

    handled = []

    @app.handler(UserEventMessage, topic=os.environ["OWN_TOPIC"], name="own_task")
    async def own_task(message: UserEventMessage) -> None:
        handled.append(str(message.user_id))
        if message.event_type == "stall":
            await asyncio.sleep(3600)
        if message.event_type == "block":
            time.sleep(3600)  # blocks the event loop: the mistake the worker must survive

    @app.page("/own")
    class Own(View):
        async def get(self, request: Request) -> Response:
            return self.json({"handled": handled, "handlers": sorted(app.handlers)})
""")


def own_tasks(settings: Settings, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The topic of ``own_tasks`` and the environment of a worker that runs only it."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "own_tasks.py").write_text(OWN_TASKS)
    topic = f"{settings.kafka.topics.user_event}.own"
    return topic, {
        "DAWNING_WORKER__MODULES": "own_tasks",
        "PYTHONPATH": f"{code}:{ROOT}",
        "OWN_TOPIC": topic,
    }


async def test_the_standard_worker_runs_the_modules_it_is_given_and_only_those(
    settings: Settings, tmp_path: Path
) -> None:
    topic, env = own_tasks(settings, tmp_path)
    users = [uuid.uuid4() for _ in range(3)]
    async with workers(settings, 1, tmp_path, env=env) as [worker]:  # python -m dawning_streams
        async with create_app(settings).bus as bus:
            for user in users:
                await bus.publish(UserEventMessage(user_id=user, event_type="own"), topic=topic)

        async def handled() -> dict | None:  # type: ignore[type-arg]
            status, body = await worker.get_json("/own")
            return body if status == 200 and len(body["handled"]) == 3 else None

        body = await eventually(handled, timeout_s=60, what="the own task handled all three")
    assert sorted(body["handled"]) == sorted(str(u) for u in users)
    # Only what it was given: none of the Dawning agents.
    assert body["handlers"] == ["own_task"]


async def test_a_worker_with_other_modules_does_not_join_a_running_group_and_says_why(
    settings: Settings, tmp_path: Path
) -> None:
    topic, env = own_tasks(settings, tmp_path)
    async with workers(settings, 1, tmp_path, env=env) as [running]:
        # The Dawning agents, in the same group: Faust would assign the group's
        # tables as one app, and its assertion would end the running worker.
        other = spawn(settings, "agents", tmp_path)
        assert other.process.wait(60) == 2, other.tail()
        refusal = other.log.read_text()
        assert f"Kafka:ConsumerGroupId '{settings.kafka.consumer_group_id}' is in use" in refusal
        assert f"{topic}, {topic}.own_task.timers, " in refusal  # only theirs
        assert f"{settings.kafka.topics.alert_notification}, " in refusal  # only this one's
        assert "DAWNING_KAFKA__CONSUMERGROUPID" in refusal
        # The running worker goes on handling.
        user = uuid.uuid4()
        async with create_app(settings).bus as bus:
            await bus.publish(UserEventMessage(user_id=user, event_type="own"), topic=topic)

        async def handled() -> dict | None:  # type: ignore[type-arg]
            status, body = await running.get_json("/own")
            return body if status == 200 and str(user) in body["handled"] else None

        await eventually(
            handled, timeout_s=60, what="the running worker handling after the refusal"
        )
        assert running.process.poll() is None


async def test_a_stop_cut_short_by_a_stalled_handler_names_the_record_it_was_on(
    settings: Settings, tmp_path: Path
) -> None:
    topic, env = own_tasks(settings, tmp_path)
    env["DAWNING_WORKER__STOPTIMEOUTS"] = "3"
    async with workers(settings, 1, tmp_path, env=env) as [worker]:
        receipt = await stall(settings, worker, topic)
        assert worker.stop(timeout_s=60) == 0
        members = await group_members(settings)
    log = worker.log.read_text()
    assert "the stop did not finish within 3 s (Worker:StopTimeoutS=3); exiting now, after " in log
    where = f"still handling own_task on {topic}/{receipt.partition}@{receipt.offset}"
    assert where in log, worker.tail()
    # It left: the group's next worker need not wait out the session timeout.
    assert members == [], members


async def test_a_second_signal_during_a_stop_ends_the_worker_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    topic, env = own_tasks(settings, tmp_path)
    # Without the second signal the stop would wait an hour for the stalled handler.
    env["DAWNING_WORKER__STOPTIMEOUTS"] = "3600"
    async with workers(settings, 1, tmp_path, env=env) as [worker]:
        receipt = await stall(settings, worker, topic)
        where = f"still handling own_task on {topic}/{receipt.partition}@{receipt.offset}"
        worker.terminate()

        async def waiting() -> bool:
            return f"stopping: waiting up to 3600 s for the handlers, {where}" in (
                worker.log.read_text()
            )

        await eventually(waiting, timeout_s=60, what="the stop saying what it waits for")
        worker.process.send_signal(signal.SIGINT)
        assert worker.process.wait(timeout=60) == 0, worker.tail()
        members = await group_members(settings)
        committed = await committed_offset(settings, topic, receipt.partition)
    log = worker.log.read_text()
    assert (
        "[WARNING] told to stop again (SIGINT) during the stop; exiting now, after leaving" in log
    )
    assert where in log.split("told to stop again", 1)[1], worker.tail()
    # The stalled record was not committed: the partition's next owner handles it.
    assert committed is None or committed <= receipt.offset, committed
    assert members == [], members


async def test_a_handler_blocking_the_loop_is_named_and_a_stop_still_ends_in_time(
    settings: Settings, tmp_path: Path
) -> None:
    topic, env = own_tasks(settings, tmp_path)
    env["DAWNING_WORKER__STOPTIMEOUTS"] = "5"
    async with workers(settings, 1, tmp_path, env=env) as [worker]:
        async with create_app(settings).bus as bus:
            blocking = UserEventMessage(user_id=uuid.uuid4(), event_type="block")
            receipt = await bus.publish(blocking, topic=topic)
        assert receipt is not None
        where = f"still handling own_task on {topic}/{receipt.partition}@{receipt.offset}"

        async def named() -> bool:
            log = worker.log.read_text()
            return "the event loop has not run for 10 s" in log and where in log

        # Nothing on the loop can say it (no page answers): the watch's thread does.
        await eventually(named, timeout_s=90, what="the blocked loop named in the log")
        # mode's SIGTERM handler waits for the loop; the deadline counts from the signal.
        assert worker.stop(timeout_s=60) == 0
    log = worker.log.read_text()
    assert 'own_tasks.py", line ' in log and "time.sleep(3600)" in log, worker.tail()
    assert "the stop did not finish within 5 s (Worker:StopTimeoutS=5); exiting now" in log


async def stall(settings: Settings, worker: Worker, topic: str) -> RecordMetadata:
    """Publish a message ``own_task`` never finishes, and wait until it started."""
    async with create_app(settings).bus as bus:
        stalled = UserEventMessage(user_id=uuid.uuid4(), event_type="stall")
        receipt = await bus.publish(stalled, topic=topic)
    assert receipt is not None

    async def started() -> bool:
        status, body = await worker.get_json("/own")
        return status == 200 and body["handled"] == [str(stalled.user_id)]

    await eventually(started, timeout_s=60, what="the stalling message started")
    return receipt


async def committed_offset(settings: Settings, topic: str, partition: int) -> int | None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=settings.kafka.consumer_group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, partition))
    finally:
        await consumer.stop()


async def group_members(settings: Settings) -> list[object]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([settings.kafka.consumer_group_id])
    finally:
        await admin.close()
    [group] = response.to_object()["groups"]
    return list(group["members"])


def test_worker_modules_are_read_from_the_environment_and_checked() -> None:
    default = Settings.load({}, file=None)
    assert default.worker.modules == ("dawning_streams.agents",)
    both = Settings.load({"DAWNING_WORKER__MODULES": "dawning_streams.agents, billing.tasks"})
    assert both.worker.modules == ("dawning_streams.agents", "billing.tasks")
    with pytest.raises(ValueError, match="'billing/tasks' is not a dotted module name"):
        Settings.load({"DAWNING_WORKER__MODULES": "billing/tasks"})


OWN_APP = textwrap.dedent("""
    from dawning_streams import UserEventMessage, create_app

    app = create_app()  # the mistake: not dawning_streams.app's

    @app.handler(UserEventMessage, name="lonely")
    async def lonely(message: UserEventMessage) -> None: ...
""")


def test_a_worker_whose_modules_declare_every_handler_on_an_app_of_their_own_refuses_to_start(
    tmp_path: Path,
) -> None:
    (tmp_path / "own_app.py").write_text(OWN_APP)
    env = {
        **os.environ,
        "DAWNING_WORKER__MODULES": "own_app",
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
        # Refused before any service is asked: nothing listens here.
        "DAWNING_KAFKA__BOOTSTRAPSERVERS": "127.0.0.1:9",
    }
    worker = subprocess.run(
        [sys.executable, "-m", "dawning_streams", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode == 2, worker.stderr
    assert (
        "Error: Worker:Modules='own_app': own_app.app is an app of its own (create_app()),"
        " which this worker does not run: its handler(s) lonely never run here"
    ) in worker.stderr
