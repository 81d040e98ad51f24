"""Poison on every topic a real worker reads: it goes on, and dead-letters each with its reason."""

from __future__ import annotations

import functools
import mailbox
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from dawning_streams import (
    AlertNotificationMessage,
    AuditLogMessage,
    CacheInvalidationMessage,
    ConfigChangedMessage,
    EmailMessage,
    MessageBase,
    Settings,
    SystemEventMessage,
    UserEventMessage,
    encode,
)
from dawning_streams.core.names import Header, dead_letter_topic

from ..handler_helpers import eventually
from ..kafka_helpers import read_to_end
from ..workers import Worker, workers
from .conftest import Row
from .fault_app import flow_topic
from .ledger import Ledger, committed_to_end, handled

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

APP = "tests.faults.fault_app"
TWO_MB = 2 * 1024 * 1024


def poison(good: MessageBase) -> list[tuple[bytes, str]]:
    """Bad records for ``good``'s topic, each with the reason the worker must give."""
    wire = orjson.loads(encode(good))
    return [
        (b"\x00\xff not json at all", "not JSON"),
        (orjson.dumps({**wire, "MessageId": 12345}), "field MessageId: expected a GUID string"),
        (orjson.dumps({**wire, "MessageType": "NoSuchMessage"}), "unknown MessageType"),
        (
            orjson.dumps({**wire, "MessageId": "x" * TWO_MB}),
            "field MessageId: badly formed hexadecimal UUID string",
        ),
    ]


Check = Callable[[Worker], Awaitable[bool]]


def good_messages(
    settings: Settings, run: str, maildir: mailbox.Maildir
) -> dict[str, tuple[MessageBase, Check]]:
    """For each topic, a good message to send after the poison, and how to see it was handled."""
    topics = settings.kafka.topics
    user, rule = uuid.uuid4(), uuid.uuid4()
    subject = f"{run} after the poison"

    async def view(worker: Worker, path: str) -> bool:
        status, _ = await worker.get_json(path)
        return status == 200

    async def audited(worker: Worker) -> bool:
        _, body = await worker.get_json(f"/audit?user_id={user}")
        return bool(body.get("entries"))

    async def mailed(worker: Worker) -> bool:
        return any(message["Subject"] == subject for message in maildir)

    async def invalidated(worker: Worker) -> bool:
        _, body = await worker.get_json("/cache/invalidations")
        return f"{run}:after" in body.get("invalidations", {})

    async def reported(worker: Worker) -> bool:
        _, body = await worker.get_json("/instances")
        return any(row.get("instance") == f"{run}-after" for row in body.get("instances", []))

    async def counted(worker: Worker) -> bool:
        return any(m == str(flow_message.message_id) for m in handled([worker.folder]))

    flow_message = AuditLogMessage(user_id=uuid.uuid4(), action="after", entity_type="Fault")
    return {
        topics.audit_log: (
            AuditLogMessage(user_id=user, action="after", entity_type="User"),
            audited,
        ),
        topics.alert_notification: (
            AlertNotificationMessage(
                alert_rule_id=rule,
                rule_name="after",
                metric_type="cpu",
                severity="info",
                current_value=1.0,
                threshold=0.5,
            ),
            lambda worker: view(worker, f"/alerts/{rule}"),
        ),
        topics.email_queue: (
            EmailMessage(to="after@dawning.local", subject=subject, body="handled"),
            mailed,
        ),
        topics.config_changed: (
            ConfigChangedMessage(config_group=run, config_key="after", new_value="1"),
            lambda worker: view(worker, f"/config/{run}/after"),
        ),
        topics.cache_invalidation: (
            CacheInvalidationMessage(cache_key=f"{run}:after", reason="after"),
            invalidated,
        ),
        topics.user_event: (
            UserEventMessage(user_id=user, event_type="user.login"),
            lambda worker: view(worker, f"/users/{user}"),
        ),
        topics.system_event: (
            SystemEventMessage(event_type="after", source_instance=f"{run}-after"),
            reported,
        ),
        flow_topic(settings): (flow_message, counted),
    }


@pytest.mark.deadline(300)
@pytest.mark.timeout(360)
async def test_poison_on_every_topic_is_dead_lettered_and_the_worker_goes_on(
    settings: Settings, tmp_path: Path, report: list[Row], maildir: mailbox.Maildir
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    run = settings.instance_name
    goods = good_messages(settings, run, maildir)
    async with workers(settings, 1, tmp_path, app=APP) as group, Ledger(bootstrap) as ledger:
        [worker] = group
        sent_at = time.time()
        for topic, (good, _) in goods.items():
            key = good.partition_key().encode()
            for value, _ in poison(good):
                await ledger.publish_raw(topic, value, key=key)
            await ledger.publish_raw(topic, encode(good), key=key)
        for topic, (_, check) in goods.items():
            await eventually(
                functools.partial(check, worker), timeout_s=60, what=f"the good message on {topic}"
            )
        handled_at = time.time()
        # Every record of the sources handled (committed to the end), then every
        # dead letter read, however many there are.
        await eventually(
            lambda: committed_to_end(bootstrap, settings.kafka.consumer_group_id, *goods),
            timeout_s=60,
            what="every source topic committed to the end",
        )
        letters = {topic: await read_to_end(bootstrap, dead_letter_topic(topic)) for topic in goods}
        alive = worker.process.poll() is None

    dead_lettered = sum(len(found) for found in letters.values())
    report.append(
        Row(
            "poison on every topic",
            len(goods) * 5,
            len(goods),
            len(goods) * 5 - len(goods) - dead_lettered,
            dead_lettered - len(goods) * 4,
            None,
            {
                "topics": len(goods),
                "dead_lettered": dead_lettered,
                "good_handled_after_s": round(handled_at - sent_at, 1),
                "largest_dead_letter_bytes": max(len(r.value) for f in letters.values() for r in f),
            },
        )
    )
    assert alive, worker.log.read_text()
    for topic, found in letters.items():
        good, _ = goods[topic]
        expected = poison(good)
        assert [r.value for r in found] == [value for value, _ in expected], topic
        for record, (_, reason) in zip(found, expected, strict=True):
            headers = {k: v.decode() for k, v in record.headers}
            assert (
                headers[Header.EXCEPTION_TYPE] == "dawning_streams.core.errors.MessageDecodeError"
            )
            assert headers[Header.EXCEPTION_MESSAGE].startswith(reason), (topic, headers)
            assert headers[Header.ORIGINAL_TOPIC] == topic
