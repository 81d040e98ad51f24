"""A worker on three brokers: its topics replicated as the settings say, or a clear refusal."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from dawning_streams import Settings

from ..workers import spawn, workers
from .conftest import BOOTSTRAP

pytestmark = [pytest.mark.kafka, pytest.mark.cluster]


async def layouts(prefix: str) -> dict[str, tuple[set[int], str]]:
    """Each topic under ``prefix``: (the replica counts of its partitions, its
    effective ``min.insync.replicas``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        described = await admin.describe_topics(names)
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    min_insync = {
        resource["resource_name"]: entry["config_value"]
        for response in responses
        for resource in response.to_object()["resources"]
        for entry in resource["config_entries"]
        if entry["config_names"] == "min.insync.replicas"
    }
    return {
        topic["topic"]: (
            {len(p["replicas"]) for p in topic["partitions"]},
            min_insync[topic["topic"]],
        )
        for topic in described
    }


@pytest.mark.deadline(150)
@pytest.mark.timeout(200)
async def test_a_worker_creates_every_topic_with_3_replicas_and_2_in_sync(
    settings: Settings, tmp_path: Path
) -> None:
    prefix = settings.kafka.consumer_group_id.removesuffix("-group")
    # One of its topics made beforehand, by hand, with a single replica.
    audit = settings.kafka.topics.audit_log
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(audit, 3, 1, topic_configs={"min.insync.replicas": "1"})]
        )
    finally:
        await admin.close()

    async with workers(settings, 1, tmp_path) as [worker]:
        found = await layouts(prefix)
        log = worker.log.read_text()

    changelogs = [name for name in found if name.endswith("-changelog")]
    dead_letters = [name for name in found if name.endswith(".dlq")]
    timers = [name for name in found if name.endswith(".timers")]
    assert changelogs and dead_letters and timers, sorted(found)
    assert found.pop(audit) == ({1}, "1")
    wrong = {name: layout for name, layout in found.items() if layout != ({3}, "2")}
    assert not wrong, wrong
    # The topic made otherwise is named, and left as it was.
    assert f"topic {audit} has 1 replica(s), Kafka:ReplicationFactor is 3" in log
    assert f"topic {audit} has min.insync.replicas=1, Kafka:MinInsyncReplicas is 2" in log
    assert log.count("replica(s), Kafka:ReplicationFactor") == 1, log[-3000:]


@pytest.mark.deadline(90)
@pytest.mark.timeout(120)
async def test_a_replication_factor_above_the_live_brokers_stops_the_worker_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    kafka = dataclasses.replace(settings.kafka, replication_factor=4)
    worker = spawn(dataclasses.replace(settings, kafka=kafka), "too-many", tmp_path)
    code = await asyncio.to_thread(worker.process.wait, 60)
    log = worker.log.read_text()
    errors = [line for line in log.splitlines() if "[ERROR]" in line]
    assert code == 1, log[-3000:]
    assert len(errors) == 1, log[-3000:]
    assert "Kafka:ReplicationFactor is 4, but only 3 broker(s)" in errors[0]
    assert "Traceback" not in log
