"""Sending tasks from processes that are not workers, as web apps and scripts do.

Each client is a process of its own, importing a tasks module as a user's code
would; every message is then read back from Kafka by its id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import textwrap
import uuid
from pathlib import Path

import aiohttp
import pytest

from dawning_streams import DawningError, Settings, UserEventMessage, create_app, decode, encode
from dawning_streams.bus.spool import Spool

from ..conftest import ROOT, free_port
from ..handler_helpers import running
from ..kafka_helpers import read_to_end, read_topic

pytestmark = pytest.mark.kafka

TASKS = textwrap.dedent("""
    import os
    from dawning_streams import UserEventMessage, create_app

    app = create_app()

    @app.handler(UserEventMessage, topic=os.environ["SEND_TOPIC"], name="sent_task")
    async def sent_task(message: UserEventMessage) -> None:
        pass
""")

ASYNCIO_RUN = textwrap.dedent("""
    import asyncio, json, sys, uuid
    from dawning_streams import UserEventMessage
    from tasks import sent_task

    async def main(count):
        receipts = await asyncio.gather(*(
            sent_task.delay(UserEventMessage(user_id=uuid.uuid4(), event_type="asyncio.run"))
            for _ in range(count)
        ))
        print(json.dumps([r is not None for r in receipts]))

    asyncio.run(main(int(sys.argv[1])))
""")

AIOHTTP_SERVER = textwrap.dedent("""
    import sys, uuid
    from aiohttp import web
    from dawning_streams import UserEventMessage
    from tasks import sent_task

    async def post(request):
        body = await request.json()
        receipt = await sent_task.delay(
            UserEventMessage(user_id=uuid.UUID(body["user"]), event_type="aiohttp")
        )
        return web.json_response({"sent": receipt is not None})

    async def forget(request):
        # Celery style: the send starts whether or not anything awaits it.
        body = await request.json()
        sent_task.delay(UserEventMessage(user_id=uuid.UUID(body["user"]), event_type="forgotten"))
        return web.json_response({"sent": None})

    app = web.Application()
    app.router.add_post("/tasks", post)
    app.router.add_post("/forget", forget)
    def up(*_):
        print("up", flush=True)

    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=up)
""")

THREADS = textwrap.dedent("""
    import json, sys, uuid
    from concurrent.futures import ThreadPoolExecutor
    from dawning_streams import UserEventMessage
    from tasks import sent_task

    def send(_):
        receipt = sent_task.delay_blocking(
            UserEventMessage(user_id=uuid.uuid4(), event_type="threads")
        )
        return receipt is not None

    with ThreadPoolExecutor(4) as pool:
        print(json.dumps(list(pool.map(send, range(int(sys.argv[1]))))))
""")


NO_LOOP = textwrap.dedent("""
    import json, sys, uuid
    from dawning_streams import UserEventMessage
    from tasks import sent_task

    # No event loop and no await: delay() sends before it returns.
    sent = [
        sent_task.delay(UserEventMessage(user_id=uuid.uuid4(), event_type="no-loop"))
        for _ in range(int(sys.argv[1]))
    ]
    print(json.dumps([s.done() and s.result() is not None for s in sent]))
""")


FORKED = textwrap.dedent("""
    import json, os, uuid
    from dawning_streams import UserEventMessage
    from tasks import sent_task

    def send(kind):
        return sent_task.delay(UserEventMessage(user_id=uuid.uuid4(), event_type=kind)).result()

    send("before the fork")  # the parent's sender is running when it forks
    child = os.fork()
    if child == 0:
        send("in the child")
        os._exit(0)
    _, status = os.waitpid(child, 0)
    send("after the fork")
    print(json.dumps(os.waitstatus_to_exitcode(status)))
""")


def client_env(settings: Settings, folder: Path, topic: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}",
        "SEND_TOPIC": topic,
        **settings.to_environ(),
    }


async def run_client(
    script: str, *args: str, env: dict[str, str], cwd: Path, timeout_s: float = 120
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_tasks_sent_from_asyncio_run_an_aiohttp_server_and_threads_all_reach_kafka(
    settings: Settings, tmp_path: Path
) -> None:
    topic = f"{settings.kafka.topics.user_event}.sent"
    (tmp_path / "tasks.py").write_text(TASKS)
    env = client_env(settings, tmp_path, topic)
    work = tmp_path / "cwd"
    work.mkdir()

    code, out, err = await run_client(ASYNCIO_RUN, "50", env=env, cwd=work)
    assert code == 0, err
    assert json.loads(out) == [True] * 50, "every send acknowledged, none spooled"

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        AIOHTTP_SERVER,
        str(port),
        env=env,
        cwd=work,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        assert (await asyncio.wait_for(server.stdout.readline(), 60)).strip() == b"up"
        users = [uuid.uuid4() for _ in range(100)]
        forgotten = [uuid.uuid4() for _ in range(20)]
        async with aiohttp.ClientSession() as http:

            async def post(user: uuid.UUID, path: str = "tasks") -> dict[str, bool]:
                url = f"http://127.0.0.1:{port}/{path}"
                async with http.post(url, json={"user": str(user)}) as response:
                    assert response.status == 200, await response.text()
                    return await response.json()  # type: ignore[no-any-return]

            answers = await asyncio.gather(*(post(user) for user in users))
            assert answers == [{"sent": True}] * 100
            answers = await asyncio.gather(*(post(user, "forget") for user in forgotten))
            assert answers == [{"sent": None}] * 20
    finally:
        server.terminate()
        _, server_err = await asyncio.wait_for(server.communicate(), 60)
    assert server.returncode == 0, server_err.decode()

    code, out, err = await run_client(THREADS, "40", env=env, cwd=work)
    assert code == 0, err
    assert json.loads(out) == [True] * 40

    code, out, err = await run_client(NO_LOOP, "10", env=env, cwd=work)
    assert code == 0, err
    assert json.loads(out) == [True] * 10

    records = await read_to_end(settings.kafka.bootstrap_servers[0], topic)
    kinds = [decode(r.value, UserEventMessage).event_type for r in records]
    assert sorted(kinds) == sorted(
        ["asyncio.run"] * 50
        + ["aiohttp"] * 100
        + ["forgotten"] * 20
        + ["threads"] * 40
        + ["no-loop"] * 10
    )

    def users_of(kind: bytes) -> set[uuid.UUID]:
        return {decode(r.value, UserEventMessage).user_id for r in records if kind in r.value}

    assert users_of(b'"aiohttp"') == set(users)
    assert users_of(b'"forgotten"') == set(forgotten)
    # Nothing was written to the working directory: the spool lives elsewhere.
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("script", [ASYNCIO_RUN, THREADS], ids=["asyncio.run", "threads"])
async def test_a_script_that_ends_with_messages_spooled_says_so_and_the_next_delivers_each_once(
    settings: Settings, tmp_path: Path, script: str
) -> None:
    topic = f"{settings.kafka.topics.user_event}.spooled"
    (tmp_path / "tasks.py").write_text(TASKS)
    spool = tmp_path / "spool" / "script.sqlite3"
    env = {
        **client_env(settings, tmp_path, topic),
        "DAWNING_KAFKA__SPOOL__PATH": str(spool),
        "DAWNING_KAFKA__SPOOL__SENDTIMEOUTMS": "1000",
        "DAWNING_WORKER__STOPTIMEOUTS": "2",
    }
    unreachable = {**env, "DAWNING_KAFKA__BOOTSTRAPSERVERS": f"127.0.0.1:{free_port()}"}
    code, out, err = await run_client(script, "5", env=unreachable, cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out) == [False] * 5, "unreachable: every message spooled"
    assert f"5 messages were not delivered and wait in the spool {spool}" in err, err

    # The next script, with the broker up, delivers the five first, then its
    # own three straight to the broker (receipts, not the spool).
    code, out, err = await run_client(script, "3", env=env, cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out) == [True] * 3, err
    assert "wait in the spool" not in err, err
    bootstrap = settings.kafka.bootstrap_servers[0]
    ids = [
        decode(r.value, UserEventMessage).message_id for r in await read_to_end(bootstrap, topic)
    ]
    assert len(ids) == 8 and len(set(ids)) == 8, ids


async def test_a_blocking_send_on_a_running_loop_is_refused_with_what_to_do(
    settings: Settings,
) -> None:
    app = create_app(settings)
    message = UserEventMessage(user_id=uuid.uuid4(), event_type="misuse")
    with pytest.raises(DawningError, match=r"use `await bus.publish\(...\)`"):
        app.bus.publish_blocking(message)


FORGOTTEN_AT_EXIT = textwrap.dedent("""
    import asyncio, uuid
    from dawning_streams import UserEventMessage
    from tasks import sent_task

    async def main():
        sent_task.delay(UserEventMessage(user_id=uuid.uuid4(), event_type="at-exit"))

    asyncio.run(main())  # returns at once, and cancels the send
""")


async def test_a_send_its_event_loop_ends_before_is_named_not_lost_silently(
    settings: Settings, tmp_path: Path
) -> None:
    topic = f"{settings.kafka.topics.user_event}.at-exit"
    (tmp_path / "tasks.py").write_text(TASKS)
    env = client_env(settings, tmp_path, topic)
    code, _, err = await run_client(FORGOTTEN_AT_EXIT, env=env, cwd=tmp_path)
    assert code == 0, err
    assert f"sent_task.delay(): a send to {topic} was cancelled before its receipt" in err, err


async def test_a_flush_waits_for_the_sends_nobody_awaited(settings: Settings) -> None:
    # A worker's commit flushes the bus first: a delay() a handler did not
    # await is on its topic before the offset of the record that sent it.
    app = create_app(settings)
    topic = f"{settings.kafka.topics.user_event}.flushed"

    @app.handler(UserEventMessage, topic=topic, name="flushed")
    async def flushed(message: UserEventMessage) -> None: ...

    async with app.bus:
        sends = [
            flushed.delay(UserEventMessage(user_id=uuid.uuid4(), event_type="unawaited"))
            for _ in range(3)
        ]
        await app.bus.flush()
        assert all(send.done() for send in sends)
        receipts = [send.result() for send in sends]
    assert all(receipt is not None for receipt in receipts), receipts
    records = await read_to_end(settings.kafka.bootstrap_servers[0], topic)
    assert sorted(r.offset for r in records) == sorted(r.offset for r in receipts)  # type: ignore[union-attr]


async def test_a_send_cancelled_while_its_ack_is_awaited_is_still_delivered_at_close(
    settings: Settings,
) -> None:
    # As when a loop ends under a delay() nobody awaited: the caller gives up
    # on the receipt, but the record is in the producer, and closing delivers it.
    app = create_app(settings)
    topic = f"{settings.kafka.topics.user_event}.cancelled"

    @app.handler(UserEventMessage, topic=topic, name="cancelled")
    async def cancelled(message: UserEventMessage) -> None: ...

    messages = [UserEventMessage(user_id=uuid.uuid4(), event_type="given-up") for _ in range(5)]
    async with app.bus:
        await cancelled.delay(UserEventMessage(user_id=uuid.uuid4(), event_type="first"))
        sends = [cancelled.delay(message) for message in messages]
        await asyncio.sleep(0)  # each task hands its record to the producer, then awaits
        for send in sends:
            send.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        assert all(send.cancelled() for send in sends)
    records = await read_to_end(settings.kafka.bootstrap_servers[0], topic)
    ids = {decode(r.value, UserEventMessage).message_id for r in records}
    assert {m.message_id for m in messages} <= ids, "every record the producer had was delivered"


async def test_a_worker_delivers_what_a_script_of_this_machine_left_spooled(
    settings: Settings,
) -> None:
    # A cron script ended while Kafka was down: its spool (its instance's, for
    # this cluster) waits in the state folder, held by no process.
    topic = f"{settings.kafka.topics.user_event}.left"
    script = dataclasses.replace(settings, instance_name=f"{settings.instance_name}-cron")
    left = [UserEventMessage(user_id=uuid.uuid4(), event_type="left") for _ in range(3)]
    spool = Spool.of(script)
    await spool.open()
    for message in left:
        await spool.append(topic, str(message.user_id).encode(), encode(message), [], None)
    await spool.close()
    assert spool.path.exists()

    app = create_app(settings)
    async with running(app):
        records = await read_topic(settings.kafka.bootstrap_servers[0], topic, 3)
    assert {decode(r.value, UserEventMessage).message_id for r in records} == {
        m.message_id for m in left
    }
    assert not spool.path.exists(), "taken in by the worker's own spool"


async def test_a_child_forked_after_the_parent_sent_sends_with_a_sender_of_its_own(
    settings: Settings, tmp_path: Path
) -> None:
    # As under gunicorn --preload or multiprocessing's fork: the parent's sender
    # thread and librdkafka producer do not come along, and must not be used.
    topic = f"{settings.kafka.topics.user_event}.forked"
    (tmp_path / "tasks.py").write_text(TASKS)
    env = client_env(settings, tmp_path, topic)
    code, out, err = await run_client(FORKED, env=env, cwd=tmp_path)
    assert code == 0, err
    assert json.loads(out) == 0  # the child's exit code
    records = await read_to_end(settings.kafka.bootstrap_servers[0], topic)
    kinds = sorted(decode(r.value, UserEventMessage).event_type for r in records)
    assert kinds == ["after the fork", "before the fork", "in the child"]
