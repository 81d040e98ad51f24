"""Kafka, Redis and SMTP going away under running workers, and coming back."""

from __future__ import annotations

import asyncio
import mailbox
import os
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
import pytest

from dawning_streams import (
    AuditLogMessage,
    ConfigChangedMessage,
    EmailMessage,
    Settings,
    decode,
    encode,
)
from dawning_streams.core.names import Header, dead_letter_topic

from ..conftest import ROOT
from ..handler_helpers import eventually
from ..kafka_helpers import read_topic
from ..workers import FAUST, Worker, workers
from .conftest import Row, services
from .fault_app import echo_topic, flow_topic
from .ledger import (
    Ledger,
    committed_offsets,
    committed_to_end,
    handled,
    lost_and_duplicated,
    write_duplicates,
)

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

APP = "tests.faults.fault_app"


def flow(count: int, echo_every: int = 0) -> list[AuditLogMessage]:
    return [
        AuditLogMessage(
            user_id=uuid.uuid4(),
            action="echo" if echo_every and n % echo_every == 0 else "flow",
            entity_type="Fault",
        )
        for n in range(count)
    ]


@pytest.mark.deadline(360)
@pytest.mark.timeout(420)
async def test_kafka_stopped_and_restarted_mid_stream_loses_nothing(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    topic = flow_topic(settings)
    messages = flow(6_000, echo_every=10)
    echoed = {str(m.message_id) for m in messages if m.action == "echo"}
    async with workers(settings, 2, tmp_path, app=APP) as group, Ledger(bootstrap) as ledger:
        publishing = asyncio.create_task(ledger.publish(topic, messages, rate_per_s=300))
        await eventually(lambda: len(ledger.acked) >= 1_500, what="a quarter published")
        committed_before = await committed_offsets(
            bootstrap, settings.kafka.consumer_group_id, topic
        )
        down_at = time.time()
        await services("stop-kafka")
        await asyncio.sleep(5)
        await services("start-kafka")
        up_at = time.time()
        await publishing

        def all_handled() -> bool:
            calls = handled(w.folder for w in group)
            return all(message_id in calls for message_id in ledger.acked)

        await eventually(all_handled, timeout_s=200, what="every acknowledged message handled")
        caught_up_at = time.time()
        await eventually(
            lambda: committed_to_end(bootstrap, settings.kafka.consumer_group_id, topic),
            timeout_s=60,
            what="offsets committed to the end",
        )
        calls = handled(w.folder for w in group)
        alive = [w.process.poll() is None for w in group]
        wanted_echoes = [m for m in echoed if m in ledger.acked]
        echoes = await read_topic(bootstrap, echo_topic(settings), len(wanted_echoes), 60)

    lost, duplicated = lost_and_duplicated(ledger, calls)
    write_duplicates(tmp_path / "duplicates.txt", ledger, calls)
    latency = {m: c[0][1] - ledger.acked_at[m] for m, c in calls.items() if m in ledger.acked_at}
    worst = max(latency, key=latency.__getitem__)
    after_up = [at for c in calls.values() for _, at in c if at > up_at]
    report.append(
        Row(
            "Kafka stopped and restarted",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            min(after_up) - up_at if after_up else None,
            {
                "down_s": round(up_at - down_at, 1),
                "publish_failed": len(ledger.failed),
                "caught_up_after_restart_s": round(caught_up_at - up_at, 1),
                "worst_ack_to_handled_s": round(latency[worst], 1),
                "echoes": f"{len(echoes)}/{len(wanted_echoes)}",
            },
        )
    )
    # Repeats only past the offsets committed before the broker went: what was
    # committed is never handled again.
    below = [
        m
        for m, c in calls.items()
        if len(c) > 1
        and ledger.acked[m].offset < committed_before.get(ledger.acked[m].partition, 0)
    ]
    assert all(alive), "a worker exited"
    assert not ledger.failed, f"the publisher's retries outlast a {up_at - down_at:.0f} s outage"
    assert lost == 0
    assert not below, below[:5]
    assert {e.value.decode() for e in echoes} >= set(wanted_echoes)


def scheduled_runs(worker: Worker) -> list[float]:
    """When the fault app's scheduled task ran on ``worker``."""
    journal = worker.folder / "scheduled.log"
    if not journal.exists():
        return []
    return [float(line.split()[1]) for line in journal.read_text().splitlines()]


async def cache_call(worker: Worker, key: str, value: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    """GET (or, with ``value``, POST) ``/faults/cache/{key}`` on ``worker``."""
    url = f"{worker.url}/faults/cache/{key}"
    async with aiohttp.ClientSession() as http:
        request = http.get(url) if value is None else http.post(url, data=value.encode())
        async with request as response:
            return response.status, await response.json()


@pytest.mark.deadline(240)
@pytest.mark.timeout(300)
async def test_with_redis_down_no_locked_task_runs_and_the_rest_goes_on(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    group_name, key = settings.instance_name, "kept"
    async with workers(settings, 1, tmp_path, app=APP) as group, Ledger(bootstrap) as ledger:
        [worker] = group
        await eventually(lambda: scheduled_runs(worker), what="the scheduled task ran once")
        assert (await cache_call(worker, key, "before"))[0] == 200

        await services("stop-redis")
        down_at = time.time()
        # The flow handler and the config agent need no Redis.
        await ledger.publish(flow_topic(settings), flow(500), rate_per_s=250)
        config = ConfigChangedMessage(config_group=group_name, config_key="k", new_value="v")
        await ledger.publish_raw(
            settings.kafka.topics.config_changed,
            encode(config),
            key=config.partition_key().encode(),
        )

        def flow_handled() -> bool:
            calls = handled([worker.folder])
            return all(m in calls for m in ledger.acked)

        await eventually(flow_handled, timeout_s=60, what="the flow handled with Redis down")
        await eventually(
            lambda: _ok(worker.get_json(f"/config/{group_name}/k")),
            what="the config change applied with Redis down",
        )
        kept = await cache_call(worker, key)
        stored = await cache_call(worker, "during", "down")
        read_back = await cache_call(worker, "during")
        missing = await cache_call(worker, "never-set")
        await asyncio.sleep(3)  # ticks that would have run
        up_at = time.time()
        await services("start-redis")
        await eventually(
            lambda: [t for t in scheduled_runs(worker) if t > up_at],
            what="the scheduled task ran again after Redis came back",
        )
        runs = scheduled_runs(worker)
        alive = worker.process.poll() is None
        calls = handled([worker.folder])
        log = worker.log.read_text(errors="replace").splitlines()

    # A tick that had taken the lock just before Redis went may still finish.
    ran_while_down = [t for t in runs if down_at + 1.5 < t < up_at]
    lost, duplicated = lost_and_duplicated(ledger, calls)
    report.append(
        Row(
            "Redis down",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            min(t for t in runs if t > up_at) - up_at,
            {
                "down_s": round(up_at - down_at, 1),
                "locked_runs_while_down": len(ran_while_down),
                "cache_local_hit": kept[1].get("value"),
                "cache_set_while_down": read_back[1].get("value"),
                "redis_log_lines": len([line for line in log if "Redis" in line]),
            },
        )
    )
    assert alive, worker.log.read_text()
    # One line when Redis went, one when it came back: not one per tick or call.
    assert len([line for line in log if "Redis is unreachable at " in line]) == 1, log[-40:]
    assert len([line for line in log if "Redis is reachable again at " in line]) == 1, log[-40:]
    assert not [line for line in log if "skipped this tick" in line or "cache: Redis" in line]
    assert lost == 0
    assert ran_while_down == []
    assert kept == (200, {"key": key, "value": "before"})
    assert stored[0] == 200
    assert read_back == (200, {"key": "during", "value": "down"})
    assert missing == (200, {"key": "never-set", "value": None})


async def _ok(pending: Awaitable[tuple[int, dict]]) -> tuple[int, dict] | None:  # type: ignore[type-arg]
    status, body = await pending
    return (status, body) if status == 200 else None


@pytest.mark.deadline(300)
@pytest.mark.timeout(360)
async def test_with_smtp_down_emails_are_dead_lettered_then_replayed_and_all_delivered(
    settings: Settings, tmp_path: Path, report: list[Row], maildir: mailbox.Maildir
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    topic = settings.kafka.topics.email_queue
    subjects = [f"{settings.instance_name} mail {n}" for n in range(20)]
    emails = [
        EmailMessage(to=f"user{n}@dawning.local", subject=s, body="hi")
        for n, s in enumerate(subjects)
    ]
    async with workers(settings, 1, tmp_path, app=APP) as group, Ledger(bootstrap) as ledger:
        [worker] = group
        await services("stop-smtp")
        down_at = time.time()
        await ledger.publish(topic, emails, rate_per_s=50)
        letters = await read_topic(bootstrap, dead_letter_topic(topic), len(emails), 90)
        await services("start-smtp")
        up_at = time.time()
        replay = await asyncio.create_subprocess_exec(
            str(FAUST),
            "-A",
            APP,
            "dlq-replay",
            "--all",
            "--topic",
            topic,
            cwd=worker.folder,
            env={**os.environ, "PYTHONPATH": str(ROOT), **settings.to_environ()},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await replay.communicate()

        def delivered() -> list[str]:
            return [m["Subject"] for m in maildir if m["Subject"] in subjects]

        await eventually(lambda: len(delivered()) >= len(subjects), timeout_s=60, what="all mail")
        delivered_at = time.time()
        # Every replayed email was handled: a second copy would be in the mailbox.
        await eventually(
            lambda: committed_to_end(bootstrap, settings.kafka.consumer_group_id, topic),
            timeout_s=60,
            what="the email topic committed to the end",
        )
        got = delivered()
        alive = worker.process.poll() is None
        log = worker.log.read_text(errors="replace").splitlines()

    report.append(
        Row(
            "SMTP down past the retries",
            len(ledger.acked),
            len(set(got)),
            len(set(subjects) - set(got)),
            len(got) - len(set(got)),
            delivered_at - up_at,
            {
                "down_s": round(up_at - down_at, 1),
                "dead_lettered": len(letters),
                "replayed": output.decode().strip().splitlines()[-1],
            },
        )
    )
    assert alive, worker.log.read_text()
    assert replay.returncode == 0, output.decode()
    # The outage is one line when it began and one when it ended, not one per mail.
    assert len([line for line in log if "SMTP is unreachable at " in line]) == 1, log[-40:]
    assert len([line for line in log if "SMTP is reachable again at " in line]) == 1, log[-40:]
    assert len(ledger.acked) == len(emails)
    assert sorted(decode(r.value, EmailMessage).subject for r in letters) == sorted(subjects)
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers[Header.ATTEMPT] == "4"
        assert headers[Header.EXCEPTION_TYPE] == "dawning_streams.services.mail.MailError"
        assert "could not reach SMTP" in headers[Header.EXCEPTION_MESSAGE]
    assert sorted(got) == sorted(subjects)


@pytest.mark.deadline(420)
@pytest.mark.timeout(480)
async def test_kafka_restarted_while_a_worker_dies_loses_nothing(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    """The partition of a worker that died while the broker was down moves to a
    new owner as the broker returns, which handles all of it without a restart."""
    bootstrap = settings.kafka.bootstrap_servers[0]
    topic = flow_topic(settings)
    async with workers(settings, 3, tmp_path, app=APP) as group, Ledger(bootstrap) as ledger:
        publishing = asyncio.create_task(ledger.publish(topic, flow(9_000), rate_per_s=300))
        await eventually(lambda: len(ledger.acked) >= 1_500, what="a sixth published")
        await services("stop-kafka")
        group[1].process.kill()
        await asyncio.sleep(3)
        await services("start-kafka")
        up_at = time.time()
        await publishing

        def unhandled() -> list[str]:
            calls = handled(w.folder for w in group)
            return [m for m in ledger.acked if m not in calls]

        # No restart of the group to rescue a stall: the workers that are up
        # must handle everything themselves.
        await eventually(lambda: not unhandled(), timeout_s=120, what="all handled, no restart")
        calls = handled(w.folder for w in group)

    lost, duplicated = lost_and_duplicated(ledger, calls)
    write_duplicates(tmp_path / "duplicates.txt", ledger, calls)
    latency = [c[0][1] - ledger.acked_at[m] for m, c in calls.items() if m in ledger.acked_at]
    after_up = [at for c in calls.values() for _, at in c if at > up_at]
    report.append(
        Row(
            "Kafka restart, worker dies",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            min(after_up) - up_at if after_up else None,
            {
                "worst_ack_to_handled_s": round(max(latency), 1),
                "publish_failed": len(ledger.failed),
            },
        )
    )
    assert lost == 0
