"""Publishing through the bus to the real broker, read back with a plain consumer."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from dawning_streams import (
    AuditLogMessage,
    NullMessageBus,
    PublishError,
    Settings,
    UserEventMessage,
    create_app,
    create_bus,
    decode,
)
from dawning_streams.bus import publisher
from dawning_streams.bus.rdkafka import RdkafkaPort
from dawning_streams.core.partitioners import consistent_random, murmur2
from dawning_streams.core.settings import KafkaSettings, SpoolSettings

from ..handler_helpers import eventually, running
from ..kafka_helpers import committed, partition_count, read_to_end, read_topic
from ..unit.test_codec import SAMPLES

pytestmark = pytest.mark.kafka

# More than the broker takes (message.max.bytes counts the compressed batch).
INCOMPRESSIBLE_2MB = base64.b64encode(os.urandom(1_600_000)).decode()

EXPECTED_KEYS = {
    "AuditLogMessage": lambda m: str(m.user_id),
    "AlertNotificationMessage": lambda m: str(m.alert_rule_id),
    "EmailMessage": lambda m: m.to,
    "ConfigChangedMessage": lambda m: f"{m.config_group}:{m.config_key}",
    "CacheInvalidationMessage": lambda m: m.pattern,
    "UserEventMessage": lambda m: str(m.user_id),
    "SystemEventMessage": lambda m: m.source_instance,
}


async def test_each_message_type_lands_on_its_topic_with_its_key(settings: Settings) -> None:
    app = create_app(settings)
    async with app.bus as bus:
        acks = await bus.publish_many(SAMPLES)
    for message, ack in zip(SAMPLES, acks, strict=True):
        topic = getattr(settings.kafka.topics, message.topic_setting)
        [record] = await read_topic(settings.kafka.bootstrap_servers[0], topic, 1)
        key = EXPECTED_KEYS[type(message).__name__](message)
        assert (record.topic, record.partition, record.offset) == (
            ack.topic,
            ack.partition,
            ack.offset,
        )
        assert record.key == key.encode()
        assert record.partition == consistent_random(record.key, [0, 1, 2], [0, 1, 2])
        assert record.timestamp == int(message.timestamp.timestamp() * 1000)
        decoded = decode(record.value, type(message))
        assert decoded == message
        assert decoded.source_instance == (message.source_instance or settings.instance_name)


async def test_every_topic_is_declared_with_the_configured_partitions(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(
        settings, kafka=dataclasses.replace(settings.kafka, partitions=5)
    )
    async with create_app(settings).bus:
        pass
    bootstrap = settings.kafka.bootstrap_servers[0]
    counts = [await partition_count(bootstrap, topic) for topic in settings.kafka.topics.all()]
    assert counts == [5] * 7


async def test_one_users_events_stay_in_order_on_one_partition(settings: Settings) -> None:
    user = uuid.uuid4()
    events = [UserEventMessage(user_id=user, event_type=f"step.{n}") for n in range(50)]
    async with create_app(settings).bus as bus:
        await bus.publish_many(events)
    records = await read_topic(
        settings.kafka.bootstrap_servers[0], settings.kafka.topics.user_event, 50
    )
    assert {r.partition for r in records} == {consistent_random(str(user).encode(), [0, 1, 2], [])}
    assert [decode(r.value, UserEventMessage).event_type for r in records] == [
        f"step.{n}" for n in range(50)
    ]


async def test_a_batch_of_several_ack_windows_gets_every_receipt_of_its_own_record(
    settings: Settings,
) -> None:
    users = [uuid.uuid4() for _ in range(5)]
    count = int(2.5 * publisher._WINDOW)
    events = [UserEventMessage(user_id=users[n % 5], event_type=f"step.{n}") for n in range(count)]
    async with create_app(settings).bus as bus:
        acks = await bus.publish_many(events)
    records = await read_topic(
        settings.kafka.bootstrap_servers[0], settings.kafka.topics.user_event, count
    )
    on_topic = {(r.partition, r.offset): decode(r.value, UserEventMessage) for r in records}
    assert len(acks) == count
    assert [on_topic[(ack.partition, ack.offset)].message_id for ack in acks] == [
        m.message_id for m in events
    ]
    for user in users:
        steps = [int(m.event_type[5:]) for m in on_topic.values() if m.user_id == user]
        assert steps == sorted(steps) and len(steps) == count // 5


async def test_murmur2_stays_selectable_and_places_keys_as_the_java_client(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(
        settings, kafka=dataclasses.replace(settings.kafka, partitioner="murmur2")
    )
    users = [uuid.uuid4() for _ in range(12)]
    async with create_app(settings).bus as bus:
        await bus.publish_many(
            AuditLogMessage(user_id=u, action="login", entity_type="User") for u in users
        )
    records = await read_topic(
        settings.kafka.bootstrap_servers[0], settings.kafka.topics.audit_log, 12
    )
    for record in records:
        assert record.partition == murmur2(record.key, [0, 1, 2], [])
    assert len({r.partition for r in records}) > 1


async def test_a_disabled_kafka_gets_the_null_bus_which_counts_drops() -> None:
    bus = create_bus(Settings(kafka=KafkaSettings(enabled=False)))
    assert isinstance(bus, NullMessageBus)
    async with bus:
        await bus.publish(SAMPLES[0])
        await bus.publish_many(SAMPLES[:2])
    assert bus.dropped == {"AuditLogMessage": 2, "AlertNotificationMessage": 1}


async def test_publishing_something_that_is_not_a_message_type_is_refused(
    settings: Settings,
) -> None:
    class NotRegistered:
        pass

    app = create_app(settings)
    with pytest.raises(TypeError, match="NotRegistered is not a dawning message type"):
        app.topic_for(NotRegistered)  # type: ignore[arg-type]


async def test_a_key_that_is_not_a_string_is_refused_naming_where_it_came_from(
    settings: Settings,
) -> None:
    class NumberKeyed(UserEventMessage):
        def partition_key(self) -> str:
            return 123  # type: ignore[return-value]

    async with create_app(settings).bus as bus:
        with pytest.raises(
            TypeError, match=r"partition_key\(\) must return a str or None, got int"
        ):
            await bus.publish(NumberKeyed(user_id=uuid.uuid4(), event_type="x"))
        with pytest.raises(TypeError, match="key= must be a str, got int 5"):
            await bus.publish(UserEventMessage(user_id=uuid.uuid4(), event_type="x"), key=5)  # type: ignore[arg-type]
        assert bus.spool.count == 0
    assert (
        await read_to_end(settings.kafka.bootstrap_servers[0], settings.kafka.topics.user_event)
        == []
    )


async def test_a_message_the_broker_refuses_for_good_raises_and_is_not_spooled(
    settings: Settings,
) -> None:
    huge = UserEventMessage(user_id=uuid.uuid4(), event_type="huge", user_name=INCOMPRESSIBLE_2MB)
    async with create_app(settings).bus as bus:
        with pytest.raises(
            PublishError, match=r"MSG_SIZE_TOO_LARGE.*Kafka:Producer:MaxRequestBytes"
        ):
            await bus.publish(huge)
        assert bus.spool.count == 0
        assert await bus.publish(UserEventMessage(user_id=uuid.uuid4(), event_type="ok"))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"user_name": INCOMPRESSIBLE_2MB}, "refused"),  # by the broker, for its size
        ({"event_data": {"at": object()}}, "cannot encode"),
    ],
    ids=["refused", "not encodable"],
)
async def test_a_bad_message_in_a_batch_is_named_and_the_rest_are_published(
    settings: Settings, bad: dict[str, Any], reason: str
) -> None:
    user = uuid.uuid4()
    before, odd, after = (
        UserEventMessage(user_id=user, event_type="before"),
        UserEventMessage(user_id=user, event_type="odd", **bad),
        UserEventMessage(user_id=user, event_type="after"),
    )
    async with create_app(settings).bus as bus:
        with pytest.raises(PublishError, match=f"{reason} UserEventMessage {odd.message_id}"):
            await bus.publish_many([before, odd, after])
        assert bus.spool.count == 0
    records = await read_topic(
        settings.kafka.bootstrap_servers[0], settings.kafka.topics.user_event, 2
    )
    assert [decode(r.value, UserEventMessage).event_type for r in records] == ["before", "after"]


async def test_with_kafka_disabled_every_path_of_the_apps_bus_drops_and_counts(
    tmp_path: Path,
) -> None:
    settings = Settings(
        kafka=KafkaSettings(enabled=False, spool=SpoolSettings(path=str(tmp_path / "s.sqlite3")))
    )
    app = create_app(settings)
    await app.bus.publish(SAMPLES[0])
    await app.bus.publish_many(SAMPLES[:2])
    await app.bus.forward("raw.topic", None, b"{}")
    assert await asyncio.to_thread(app.bus.publish_blocking, SAMPLES[1]) is None
    async with app.bus as bus:
        await bus.publish(SAMPLES[0])
    assert app.bus.dropped == {
        "AuditLogMessage": 3,
        "AlertNotificationMessage": 2,
        "raw.topic": 1,
    }
    assert not list(tmp_path.iterdir()), "no spool file"


def lingering(settings: Settings, linger_ms: int) -> Settings:
    """``settings`` with producers that hold each record ``linger_ms`` before sending it."""
    producer = dataclasses.replace(settings.kafka.producer, linger_ms=linger_ms)
    return dataclasses.replace(
        settings, kafka=dataclasses.replace(settings.kafka, producer=producer)
    )


async def test_a_handlers_unawaited_send_is_on_its_topic_before_its_offset_is_committed(
    settings: Settings,
) -> None:
    # The bus's producer holds the sent message 3 s; the worker commits every 0.2 s.
    settings = lingering(settings, 3000)
    app = create_app(settings, web_enabled=False, broker_commit_interval=0.2)
    follow_up = UserEventMessage(user_id=uuid.uuid4(), event_type="follow-up")

    @app.handler(AuditLogMessage)
    async def sends_without_waiting(message: AuditLogMessage) -> None:
        await app.bus.send(follow_up)  # handed to the producer; the ack is not awaited

    bootstrap = settings.kafka.bootstrap_servers[0]
    async with running(app):
        ack = await app.bus.publish(
            AuditLogMessage(user_id=uuid.uuid4(), action="login", entity_type="User")
        )
        assert ack is not None
        tp = TopicPartition(ack.topic, ack.partition)
        await eventually(
            lambda: _is(committed(settings, tp), ack.offset + 1), what="the commit", timeout_s=30
        )
        sent = await read_to_end(bootstrap, settings.kafka.topics.user_event)
    assert [decode(r.value, UserEventMessage) for r in sent] == [follow_up]


async def test_a_stopping_worker_delivers_what_its_bus_sent(settings: Settings) -> None:
    settings = lingering(settings, 2000)
    app = create_app(settings, web_enabled=False)
    sent = [UserEventMessage(user_id=uuid.uuid4(), event_type=f"n{n}") for n in range(20)]
    async with running(app):
        for message in sent:
            await app.bus.send(message)  # not awaited: the stop must deliver them
    records = await read_to_end(
        settings.kafka.bootstrap_servers[0], settings.kafka.topics.user_event
    )
    assert sorted(decode(r.value, UserEventMessage).event_type for r in records) == sorted(
        m.event_type for m in sent
    )


async def test_the_workers_bus_producer_has_every_setting(settings: Settings) -> None:
    app = create_app(settings, web_enabled=False)
    async with running(app):
        assert app.bus._worker is not None
        port = app.bus._worker.port
        assert isinstance(port, RdkafkaPort)
        config = port.config
        receipt = await app.bus.publish(
            AuditLogMessage(user_id=uuid.uuid4(), action="login", entity_type="User")
        )
    assert receipt is not None
    assert {k: config[k] for k in EXPECTED_PRODUCER_CONFIG} == EXPECTED_PRODUCER_CONFIG


#: librdkafka's names and values for the default ``Kafka:Producer`` settings.
EXPECTED_PRODUCER_CONFIG = {
    "acks": "all",
    "enable.idempotence": True,
    "max.in.flight.requests.per.connection": 1,
    "linger.ms": 5,
    "batch.size": 16384,
    "compression.type": "snappy",
    "message.max.bytes": 1048576,
    "partitioner": "consistent_random",
}


async def _is(pending: Any, expected: object) -> bool:
    return await pending == expected
