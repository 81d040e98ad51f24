"""Dead-letter tooling on the real broker: list, filter, replay, never truncate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from dawning_streams import AuditLogMessage, Settings, create_app
from dawning_streams.core.names import Header, dead_letter_topic
from dawning_streams.core.retry import Reject, Retry
from dawning_streams.ops.dlq import read_dead_letters, replay, select

from ..handler_helpers import Calls, eventually, running
from ..kafka_helpers import read_to_end, read_topic

pytestmark = pytest.mark.kafka


def audit(action: str, user: uuid.UUID | None = None) -> AuditLogMessage:
    return AuditLogMessage(user_id=user or uuid.uuid4(), action=action, entity_type="User")


async def test_replay_brings_a_message_back_and_it_succeeds_once_fixed(
    settings: Settings,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()
    broken = True

    @app.handler(retry=Retry(max_retries=1, backoff_s=0.2))
    async def store(message: AuditLogMessage) -> None:
        if broken:
            calls.add(("failed", message.message_id))
            raise ConnectionError("database is down")
        calls.add(("stored", message.message_id))

    message = audit("login")
    async with running(app):
        await store.delay(message)
        await calls.wait_until(lambda items: len(items) == 2)
        letters = []
        while not letters:
            letters = await read_dead_letters(app)
        broken = False
        assert await replay(app, letters) == 1
        await calls.wait_until(lambda items: ("stored", message.message_id) in items)
        # The dead letter stays; the replayed copy says where it came from.
        assert len(await read_dead_letters(app)) == 1
        records = await read_topic(
            settings.kafka.bootstrap_servers[0], settings.kafka.topics.audit_log, 2
        )
    assert dict(records[1].headers)[Header.REPLAYED_FROM] == (
        f"{letters[0].topic}/{letters[0].partition}/{letters[0].offset}".encode()
    )
    assert records[1].value == records[0].value


async def test_a_replay_runs_again_only_in_the_handler_that_dead_lettered_it(
    settings: Settings,
) -> None:
    # Two handlers of one topic each see every message; only one of them failed.
    app = create_app(settings, web_enabled=False)
    calls = Calls()
    broken = True

    @app.handler(AuditLogMessage, name="picky")
    async def picky(message: AuditLogMessage) -> None:
        calls.add(("picky", message.action))
        if broken:
            raise Reject("not today")

    @app.handler(AuditLogMessage, name="counter")
    async def counter(message: AuditLogMessage) -> None:
        calls.add(("counter", message.action))

    user = uuid.uuid4()
    async with running(app):
        first = audit("first", user)
        await app.bus.publish(first)
        letters = []
        while not letters:
            letters = await read_dead_letters(app, [settings.kafka.topics.audit_log])
        [letter] = letters
        assert letter.summary()["group"] == app.conf.id
        assert letter.summary()["handler"] == "picky"
        assert letter.summary()["message_id"] == str(first.message_id)
        broken = False
        assert await replay(app, letters) == 1
        # Then a message of the same key: the counter has handled the replayed
        # copy (or skipped it) before this one.
        await app.bus.publish(audit("second", user))
        await calls.wait_until(
            lambda items: {("picky", "second"), ("counter", "second")} <= set(items)
        )
    assert calls.items.count(("picky", "first")) == 2
    assert calls.items.count(("counter", "first")) == 1
    records = await read_topic(
        settings.kafka.bootstrap_servers[0], settings.kafka.topics.audit_log, 3
    )
    assert dict(records[1].headers)[Header.REPLAY_FOR] == f"{app.conf.id}/picky".encode()


async def test_dead_letters_are_selected_by_key_time_and_exception(settings: Settings) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()
    user = uuid.uuid4()

    @app.handler(retry=Retry(max_retries=0))
    async def picky(message: AuditLogMessage) -> None:
        calls.add(message.action)
        if message.action == "reject":
            raise Reject("not allowed")
        raise KeyError(message.action)

    async with running(app):
        started = datetime.now(UTC)
        for action in ("reject", "missing", "reject"):
            await picky.delay(audit(action, user if action == "missing" else None))
        await calls.wait_until(lambda items: len(items) == 3)
        letters: list = []
        while len(letters) < 3:
            letters = await read_dead_letters(app, [settings.kafka.topics.audit_log])
    assert len(select(letters, exception="Reject")) == 2
    assert len(select(letters, exception="dawning_streams.core.retry.Reject")) == 2
    assert [x.header(Header.EXCEPTION_MESSAGE) for x in select(letters, exception="KeyError")] == [
        "'missing'"
    ]
    assert [x.key for x in select(letters, key=str(user))] == [str(user).encode()]
    assert len(select(letters, since=started - timedelta(seconds=1))) == 3
    assert select(letters, until=started - timedelta(seconds=1)) == []


async def test_dead_letter_topics_are_kept_forever(settings: Settings) -> None:
    app = create_app(settings, web_enabled=False)

    @app.handler
    async def store(message: AuditLogMessage) -> None:
        pass

    async with app.bus:
        pass
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers[0])
    await admin.start()
    name = dead_letter_topic(settings.kafka.topics.audit_log)

    async def described() -> list[tuple[str, str]] | None:
        # A broker may not know a topic the controller has just made (a busy machine).
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        [(error_code, _, _, _, entries)] = response.resources
        return None if error_code else entries

    try:
        entries = await eventually(described, timeout_s=30, what=f"{name}'s configuration")
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for entry in entries}
    assert configs["retention.ms"] == "-1"
    assert configs["retention.bytes"] == "-1"


async def test_the_dlq_commands_filter_by_every_option_and_replay_only_what_they_select(
    settings: Settings,
    tmp_path: Path,
) -> None:
    app = create_app(settings, web_enabled=False)
    calls = Calls()
    user = uuid.uuid4()

    @app.handler(retry=Retry(max_retries=0))
    async def audit_log(message: AuditLogMessage) -> None:
        calls.add(message.action)
        if message.action.startswith("replayed-ok"):
            return
        if message.action == "missing":
            raise KeyError(message.action)
        raise Reject("bad entry")

    async with running(app):
        await audit_log.delay(audit("one"))
        await audit_log.delay(audit("missing", user))
        await calls.wait_until(lambda items: sorted(items) == ["missing", "one"])
        letters: list = []
        while len(letters) < 2:
            letters = await read_dead_letters(app, [settings.kafka.topics.audit_log])
        between = max(x.dead_lettered_at for x in letters) + timedelta(milliseconds=1)
    env = {
        **os.environ,
        "DAWNING_KAFKA__BOOTSTRAPSERVERS": settings.kafka.bootstrap_servers[0],
        "DAWNING_KAFKA__TOPICS__AUDITLOG": settings.kafka.topics.audit_log,
    }
    faust = [str(Path(sys.executable).with_name("faust")), "-A", "dawning_streams.app"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*faust, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    def listed(*filters: str) -> list[str]:
        done = run("dlq-list", "--json", "--topic", settings.kafka.topics.audit_log, *filters)
        assert done.returncode == 0, done.stderr
        return sorted(json.loads(line)["exception"] for line in done.stdout.splitlines())

    reject = "dawning_streams.core.retry.Reject: bad entry"
    missing = "builtins.KeyError: 'missing'"
    assert listed() == [missing, reject]
    assert listed("--key", str(user)) == [missing]
    assert listed("--exception", "Reject") == [reject]
    assert listed("--exception", "builtins.KeyError") == [missing]
    assert listed("--since", between.isoformat()) == []
    assert listed("--until", between.isoformat()) == [missing, reject]
    assert listed("--key", str(user), "--exception", "Reject") == []

    # Without --topic: every handler's dead-letter topic, the audit log's among them.
    everything = run("dlq-list", "--json")
    assert everything.returncode == 0, everything.stderr
    for line in everything.stdout.splitlines():
        letter = json.loads(line)
        # Typed as JSON readers expect, times written as the failure headers are.
        assert isinstance(letter["attempts"], int) and letter["attempts"] >= 1, letter
        assert letter["dead_lettered_at"].endswith("Z"), letter
        assert letter["first_failed_at"].endswith("Z"), letter
    assert sorted(json.loads(line)["exception"] for line in everything.stdout.splitlines()) == [
        missing,
        reject,
    ]
    # It says whose topics it read: a handler of a module it did not import is not among them.
    assert (
        "2 dead letter(s) in the dead-letter topics of the seven message types and of the "
        "handlers of Worker:Modules=dawning_streams.agents (name a topic to read another)"
    ) in everything.stderr
    unknown = run("dlq-list", "--topic", "no.such.topic")
    assert unknown.returncode == 2
    assert "no such dead-letter topic: no.such.topic.dlq" in unknown.stderr

    bad = run("dlq-list", "--since", "yesterday")
    assert bad.returncode == 2
    backwards = run(
        "dlq-list", "--since", "2026-12-02T00:00:00Z", "--until", "2026-12-01T00:00:00Z"
    )
    assert backwards.returncode == 2
    assert "Error: --since 2026-12-02T00:00:00+00:00 is after --until" in backwards.stderr
    assert "--since" in bad.stderr and "'yesterday' is not an ISO-8601 time" in bad.stderr

    refused = run("dlq-replay")
    assert refused.returncode == 2 and "--all" in refused.stderr
    both = run("dlq-replay", "--all", "--key", "x")
    assert both.returncode == 2 and "not both (--all replays every one)" in both.stderr

    replayed = run(
        "dlq-replay", "--topic", settings.kafka.topics.audit_log, "--exception", "KeyError"
    )
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1 dead letter(s)" in replayed.stderr
    # The handler that failed it is this test's, which the command's app does not declare.
    assert (
        "warning: they are for handler(s) audit_log, which Worker:Modules="
        "dawning_streams.agents does not declare: only a handler of that name runs them"
    ) in replayed.stderr
    # On the source topic: the two originals, and the one replay (of the KeyError).
    records = await read_to_end(
        settings.kafka.bootstrap_servers[0], settings.kafka.topics.audit_log
    )
    assert sorted(json.loads(r.value)["Action"] for r in records) == ["missing", "missing", "one"]
