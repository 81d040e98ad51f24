"""The cluster tier's own services: three Kafka nodes in one KRaft quorum.

Its scenarios kill and restart brokers, so they run against the ``cluster``
profile (scripts/cluster.env: Kafka 49092/49192/49292, Redis 46379, SMTP 41025,
``.local/cluster``), never the single brokers the other tiers share. The tier
starts the profile once and stops it at the end; before each test every node
is (re)started, so a node one test killed is back for the next.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from dawning_streams import Settings

from ..conftest import ROOT, _profile
from ..fault_report import HEADER, Row, add_row

CLUSTER_ENV = _profile("cluster")
DATA_DIR = ROOT / CLUSTER_ENV["DATA_DIR"]
PORTS = [int(port) for port in CLUSTER_ENV["KAFKA_PORTS"].split(",")]
SERVERS = tuple(f"127.0.0.1:{port}" for port in PORTS)
BOOTSTRAP = ",".join(SERVERS)
SERVICES = ROOT / "scripts" / "services.sh"


def _services(*args: str) -> None:
    done = subprocess.run(
        [str(SERVICES), args[0], "cluster", *args[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"scripts/services.sh {' '.join(args)}:\n{done.stderr}"


async def services(*args: str) -> None:
    """``scripts/services.sh <action> cluster [node]``, without blocking the event loop."""
    await asyncio.to_thread(_services, *args)


def pid_of(node: int) -> int:
    """The process id of Kafka node ``node``'s JVM."""
    return int((DATA_DIR / f"kafka-{node}" / "kafka.pid").read_text())


def kill_node(node: int) -> None:
    """``kill -9`` Kafka node ``node``, as a crash would."""
    os.kill(pid_of(node), signal.SIGKILL)


async def partitions_of(topic: str) -> dict[int, dict[str, Any]]:
    """Each partition of ``topic`` as the brokers describe it: leader, replicas, isr."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: p for p in described["partitions"]}


async def controller() -> int:
    """The node id of the active controller."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        return int((await admin.describe_cluster())["controller_id"])
    finally:
        await admin.close()


async def leader_of(topic: str, partition: int = 0) -> int:
    """The node id of the current leader of ``topic``'s ``partition``."""
    return int((await partitions_of(topic))[partition]["leader"])


@pytest.fixture
def report() -> Iterator[list[Row]]:
    """Rows a scenario adds here are printed at the end and written to the JSON report."""
    rows: list[Row] = []
    yield rows
    for row in rows:
        print(HEADER, row.line(), sep="\n")
        add_row(row)


@pytest.fixture(scope="session")
def cluster_services() -> Iterator[None]:
    """The cluster profile, started for the session and stopped after it."""
    _services("start")
    yield
    _services("stop")


@pytest.fixture(autouse=True)
def every_node_up(cluster_services: None) -> None:
    """Each test starts with all three nodes, Redis and SMTP running."""
    _services("start")


@pytest.fixture(scope="session")
def kafka_bootstrap(cluster_services: None) -> str:
    return BOOTSTRAP


@pytest.fixture(scope="session")
def redis_url(cluster_services: None) -> str:
    return f"redis://127.0.0.1:{CLUSTER_ENV['REDIS_PORT']}/0"


@pytest.fixture(scope="session")
def smtp_port(cluster_services: None) -> int:
    return int(CLUSTER_ENV["SMTP_PORT"])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings on all three brokers, with topics replicated on all three."""
    kafka = dataclasses.replace(settings.kafka, bootstrap_servers=SERVERS, replication_factor=3)
    return dataclasses.replace(settings, kafka=kafka)


__all__ = [
    "BOOTSTRAP",
    "Row",
    "controller",
    "kill_node",
    "leader_of",
    "partitions_of",
    "pid_of",
    "services",
]
