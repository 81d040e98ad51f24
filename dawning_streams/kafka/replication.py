"""The cluster measured against ``Kafka:ReplicationFactor`` and ``Kafka:MinInsyncReplicas``.

A worker checks at start-up, before it declares its topics:

* A replication factor larger than the number of live brokers is refused, in
  one line naming ``Kafka:ReplicationFactor``: the topics it would create
  could not be placed, and Faust would go on failing to create them. One
  exception lets a worker restart while one broker is down for maintenance
  or a crash: when every topic of the app exists already and exactly one
  broker fewer than the replication factor answers, it warns and starts.
* An existing topic whose replication factor or ``min.insync.replicas``
  differs from the settings is reported, one WARNING line naming the topic.
  It is never altered: moving replicas (``kafka-reassign-partitions``) or
  changing what a producer's ``acks=all`` waits for
  (``kafka-configs --alter``) is an operator's decision, not a side effect of
  a worker's start.

:func:`judge` decides from plain values (it is unit tested);
:func:`check_replication` reads the cluster for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from dawning_streams.core.errors import DawningError
from dawning_streams.core.settings import KafkaSettings
from dawning_streams.kafka.security import client_options

__all__ = ["ReplicationError", "TopicLayout", "check_replication", "judge"]

logger = logging.getLogger(__name__)

#: How long reading the cluster for the check may take.
CHECK_TIMEOUT_S = 30.0
MIN_INSYNC = "min.insync.replicas"


class ReplicationError(DawningError):
    """The cluster cannot hold the topics the settings ask for."""


@dataclass(frozen=True, slots=True)
class TopicLayout:
    """How one existing topic is replicated."""

    replication_factor: int
    #: Its effective ``min.insync.replicas``; None when it could not be read.
    min_insync: int | None


def judge(
    kafka: KafkaSettings,
    *,
    live_brokers: int,
    wanted: Iterable[str],
    existing: Mapping[str, TopicLayout],
) -> list[str]:
    """The warnings to log; raises :class:`ReplicationError` when the worker must not start.

    ``wanted`` are the topics the app declares, ``existing`` those of them the
    cluster has, with their layout.
    """
    wanted = sorted(set(wanted))
    factor = kafka.replication_factor
    warnings = []
    if factor > live_brokers:
        missing = [name for name in wanted if name not in existing]
        servers = ",".join(kafka.bootstrap_servers)
        if missing or live_brokers != factor - 1:
            lacking = f"; {len(missing)} of the app's topics do not exist yet" if missing else ""
            raise ReplicationError(
                f"Kafka:ReplicationFactor is {factor}, but only {live_brokers} broker(s) "
                f"of the cluster at {servers} are live{lacking}: topics with {factor} "
                f"replicas cannot be created. Start the brokers, or lower "
                f"Kafka:ReplicationFactor to at most {live_brokers}."
            )
        warnings.append(
            f"only {live_brokers} broker(s) of the cluster at {servers} are live, "
            f"Kafka:ReplicationFactor is {factor}: one broker is down. Every topic of the "
            f"app exists, so the worker starts; its partitions run with one replica fewer "
            f"until the broker is back."
        )
    for name in wanted:
        layout = existing.get(name)
        if layout is None:
            continue
        if layout.replication_factor != factor:
            warnings.append(
                f"topic {name} has {layout.replication_factor} replica(s), "
                f"Kafka:ReplicationFactor is {factor}: left as it is "
                f"(kafka-reassign-partitions changes it)"
            )
        if layout.min_insync is not None and layout.min_insync != kafka.min_insync_replicas:
            warnings.append(
                f"topic {name} has {MIN_INSYNC}={layout.min_insync}, "
                f"Kafka:MinInsyncReplicas is {kafka.min_insync_replicas}: left as it is "
                f"(kafka-configs --alter --add-config {MIN_INSYNC}=N changes it)"
            )
    return warnings


async def read_layouts(
    admin: AIOKafkaAdminClient, topics: list[str]
) -> tuple[int, dict[str, TopicLayout]]:
    """(live brokers, the layout of each of ``topics`` that exists)."""
    cluster = await admin.describe_cluster()
    live = len(cluster["brokers"])
    present = sorted(set(topics) & set(await admin.list_topics()))
    if not present:
        return live, {}
    replicas = {
        described["topic"]: max((len(p["replicas"]) for p in described["partitions"]), default=0)
        for described in await admin.describe_topics(present)
        if described["error_code"] == 0
    }
    min_insync: dict[str, int] = {}
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in replicas]
        )
    except KafkaError as exc:
        # Not allowed to read topic configurations, say: the replicas are still checked.
        logger.warning("could not read the topics' %s (%r); not checked", MIN_INSYNC, exc)
    else:
        for response in responses:
            for resource in response.to_object()["resources"]:
                for entry in resource["config_entries"]:
                    if entry["config_names"] == MIN_INSYNC:
                        min_insync[resource["resource_name"]] = int(entry["config_value"])
    return live, {
        name: TopicLayout(replication_factor, min_insync.get(name))
        for name, replication_factor in replicas.items()
    }


async def check_replication(kafka: KafkaSettings, topics: list[str]) -> None:
    """Log :func:`judge`'s warnings about ``topics`` (every topic the app declares,
    its tables' changelogs included); raise :class:`ReplicationError` to refuse
    the start.

    A failure to read the cluster is logged and the start goes on: the check
    must not be what keeps a worker from a cluster it can use.
    """
    admin = AIOKafkaAdminClient(**client_options(kafka))
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await admin.start()
            live, existing = await read_layouts(admin, topics)
    except (KafkaError, OSError, TimeoutError) as exc:
        logger.warning("could not check the topics' replication (%r); starting anyway", exc)
        return
    finally:
        await admin.close()
    for warning in judge(kafka, live_brokers=live, wanted=topics, existing=existing):
        logger.warning("%s", warning)
