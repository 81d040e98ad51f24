"""docker-compose.yml agrees with the settings: the variables they read, their ports and topics."""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dawning_streams.core.settings import (
    ENV_PREFIX,
    KafkaSettings,
    RedisSettings,
    Settings,
    SmtpSettings,
    TopicNames,
    WebSettings,
)

from ..conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def setting_variables(node: type = Settings, path: tuple[str, ...] = ()) -> set[str]:
    """Every ``DAWNING_*`` variable the settings read."""
    names = set()
    for f in dataclasses.fields(node):  # type: ignore[arg-type]
        key_path = (*path, f.metadata["key"])
        if "section" in f.metadata:
            names |= setting_variables(f.metadata["section"], key_path)
        else:
            names.add(ENV_PREFIX + "__".join(key_path).upper())
    return names


def interpolated(value: object) -> str:
    """A compose value as the container sees it with no variables set: ``${X:-d}`` is ``d``."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", r"\1", str(value))


def environment(service: str) -> dict[str, str]:
    return {k: interpolated(v) for k, v in SERVICES[service].get("environment", {}).items()}


def published(service: str) -> dict[int, tuple[str, int]]:
    """Container port -> (host address, host port)."""
    ports = {}
    for entry in SERVICES[service].get("ports", []):
        host, host_port, container_port = str(entry).split(":")
        ports[int(container_port)] = (host, int(host_port))
    return ports


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def test_the_services_are_the_seeds_with_kraft_instead_of_zookeeper() -> None:
    assert set(SERVICES) == {"kafka", "redis", "smtp", "worker", "kafka-ui"}
    assert SERVICES["kafka-ui"]["profiles"] == ["debug"]
    assert published("kafka-ui") == {8080: ("127.0.0.1", 8080)}
    kafka = environment("kafka")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    pom = (ROOT / "scripts" / "kafka-pom.xml").read_text()
    version = re.search(r"<kafka.version>(.*)</kafka.version>", pom)
    assert version is not None
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{version[1]}"


def test_the_worker_sets_only_variables_the_settings_read() -> None:
    worker = environment("worker")
    assert set(worker) <= setting_variables()
    settings = Settings.load(worker)  # an unknown DAWNING_ variable would be an error
    assert settings.web.admin_token is None  # unset DAWNING_ADMIN_TOKEN: replay disabled


def test_the_worker_command_is_the_procfiles() -> None:
    procfile = (ROOT / "Procfile").read_text().split(":", 1)[1].strip()
    assert procfile in SERVICES["worker"]["command"]


def test_ports_agree_with_the_settings_defaults() -> None:
    worker = Settings.load(environment("worker"))
    kafka = environment("kafka")
    default_kafka_port = port_of(KafkaSettings().bootstrap_servers[0])
    listeners = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert listeners["EXTERNAL"] == f"localhost:{default_kafka_port}"
    assert published("kafka")[default_kafka_port] == ("127.0.0.1", default_kafka_port)
    assert worker.kafka.bootstrap_servers == (listeners["INTERNAL"],)

    redis_port = urlsplit(RedisSettings().url).port
    assert published("redis") == {redis_port: ("127.0.0.1", redis_port)}
    assert urlsplit(worker.redis.url).port == redis_port

    smtp_port = SmtpSettings().port
    assert published("smtp")[smtp_port] == ("127.0.0.1", smtp_port)
    assert worker.smtp.port == smtp_port and worker.smtp.host == "smtp"

    web_port = WebSettings().port
    assert worker.web.port == web_port
    assert published("worker") == {web_port: ("127.0.0.1", web_port)}
    assert str(web_port) in str(SERVICES["worker"]["healthcheck"]["test"])


def test_every_published_port_is_on_loopback() -> None:
    for name in SERVICES:
        for host, _ in published(name).values():
            assert host == "127.0.0.1", name


def test_topics_partitions_and_group_agree_with_the_defaults() -> None:
    worker = Settings.load(environment("worker"))
    assert worker.kafka.topics == TopicNames()
    assert worker.kafka.consumer_group_id == KafkaSettings().consumer_group_id
    assert worker.kafka.partitions == KafkaSettings().partitions
    assert int(environment("kafka")["KAFKA_NUM_PARTITIONS"]) == KafkaSettings().partitions


@pytest.mark.parametrize("variable", ["KAFKA_PORT", "REDIS_PORT", "SMTP_PORT"])
def test_make_runs_services_on_the_same_ports(variable: str) -> None:
    dev = dict(
        line.split("=", 1)
        for line in (ROOT / "scripts" / "dev.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    defaults = {
        "KAFKA_PORT": port_of(KafkaSettings().bootstrap_servers[0]),
        "REDIS_PORT": urlsplit(RedisSettings().url).port,
        "SMTP_PORT": SmtpSettings().port,
    }
    assert int(dev[variable]) == defaults[variable]
