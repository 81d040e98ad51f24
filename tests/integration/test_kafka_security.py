"""Kafka over SASL_SSL, on a real broker with a SASL_SSL listener (``scripts/sasl.env``).

The worker's producer and consumers, topic creation, dead-letter reading and
the dashboard's cluster view all authenticate with ``Kafka:Security``.
"""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

import dawning_streams.agents
from dawning_streams import (
    AuditLogMessage,
    ConfigChangedMessage,
    Reject,
    Settings,
    SettingsError,
    create_app,
)
from dawning_streams.core.settings import KafkaSecuritySettings, Secret
from dawning_streams.kafka.security import client_options
from dawning_streams.ops import dashboard
from dawning_streams.ops.dlq import read_dead_letters

from ..conftest import ROOT, _profile
from ..handler_helpers import Calls, eventually, running

pytestmark = pytest.mark.kafka

SASL = _profile("sasl")
CA_FILE = ROOT / SASL["DATA_DIR"] / "kafka" / "tls" / "ca.pem"


def security(mechanism: str, password: str | None = None) -> KafkaSecuritySettings:
    return KafkaSecuritySettings(
        protocol="SASL_SSL",
        sasl_mechanism=mechanism,  # type: ignore[arg-type]
        sasl_username=SASL["KAFKA_SASL_USER"],
        sasl_password=Secret(password or SASL["KAFKA_SASL_PASSWORD"]),
        ca_file=str(CA_FILE),
    )


@pytest.fixture
async def sasl_settings(settings: Settings) -> AsyncIterator[Settings]:
    """The test settings, pointed at the SASL_SSL listener; its topics deleted afterwards."""
    port = int(SASL["KAFKA_SASL_PORT"])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.fail(
            f"the SASL_SSL broker is not answering on 127.0.0.1:{port}; start it with "
            "`scripts/services.sh start sasl` (make test does)",
            pytrace=False,
        )
    kafka = dataclasses.replace(
        settings.kafka,
        bootstrap_servers=(f"127.0.0.1:{SASL['KAFKA_SASL_PORT']}",),
        security=security("SCRAM-SHA-512"),
    )
    chosen = dataclasses.replace(settings, kafka=kafka)
    yield chosen
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        prefix = kafka.topics.audit_log.split(".", 1)[0]
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_a_worker_runs_over_sasl_ssl(sasl_settings: Settings, mechanism: str) -> None:
    kafka = dataclasses.replace(sasl_settings.kafka, security=security(mechanism))
    settings = dataclasses.replace(sasl_settings, kafka=kafka)
    app = create_app(settings)
    calls = Calls()

    @app.handler
    async def audit(message: AuditLogMessage) -> None:
        calls.add(message.action)
        if message.action == "poison":
            raise Reject("never valid")

    async with running(app):  # producer, consumer group, topic creation
        for action in ("ok", "poison"):
            await app.bus.publish(
                AuditLogMessage(user_id=uuid.uuid4(), action=action, entity_type="U")
            )
        await calls.wait_until(lambda items: sorted(items) == ["ok", "poison"])
        [letter] = await read_dead_letters(app)  # a consumer of its own
        assert letter.header("dawning-handler") == "audit"
        await app.sampler.sample()  # the dashboard's admin client and consumer
        overview = await dashboard.overview(app)
    assert overview["cluster_error"] is None
    assert len(overview["group"]["members"]) == 1
    assert {"topic": f"{kafka.topics.audit_log}.dlq", "count": 1} in overview["dead_letters"]


async def test_every_dawning_agent_runs_over_sasl_ssl(sasl_settings: Settings) -> None:
    # The worker's own clients beside Faust's: the changelog and topic
    # broadcasts every instance follows, the audit store's batches, the views.
    app = create_app(sasl_settings)
    dawning_streams.agents.install(app)
    async with running(app):
        await app.bus.publish(
            ConfigChangedMessage(config_group="security", config_key="lockout", new_value="5")
        )
        entry = await eventually(
            lambda: app.shared_config.get("security", "lockout"), what="the replicated change"
        )
        url = f"http://127.0.0.1:{sasl_settings.web.port}/ready"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200
    assert entry.value == "5" and entry.version == 1


async def test_a_wrong_password_is_refused_by_the_broker(sasl_settings: Settings) -> None:
    kafka = dataclasses.replace(
        sasl_settings.kafka, security=security("SCRAM-SHA-512", password="not-the-password")
    )
    consumer = AIOKafkaConsumer(**client_options(kafka))
    with pytest.raises(KafkaError):
        await consumer.start()
    await consumer.stop()


async def test_the_broker_certificate_must_chain_to_the_configured_ca(
    sasl_settings: Settings,
) -> None:
    # Without Kafka:Security:CaFile the system CAs are used, which did not sign it.
    kafka = dataclasses.replace(
        sasl_settings.kafka,
        security=dataclasses.replace(sasl_settings.kafka.security, ca_file=None),
    )
    consumer = AIOKafkaConsumer(**client_options(kafka))
    with pytest.raises(KafkaError):
        await consumer.start()
    await consumer.stop()


def test_sasl_needs_a_username_and_password() -> None:
    with pytest.raises(SettingsError, match="SaslUsername and Kafka:Security:SaslPassword"):
        KafkaSecuritySettings(protocol="SASL_SSL", sasl_username="alice")
    with pytest.raises(SettingsError, match="not SSL or SASL_SSL"):
        KafkaSecuritySettings(protocol="PLAINTEXT", ca_file=str(CA_FILE))


def test_protocols_and_mechanisms_read_both_spellings(tmp_cwd: object) -> None:
    loaded = Settings.load(
        {
            "DAWNING_KAFKA__SECURITY__PROTOCOL": "SaslSsl",
            "DAWNING_KAFKA__SECURITY__SASLMECHANISM": "ScramSha256",
            "DAWNING_KAFKA__SECURITY__SASLUSERNAME": "alice",
            "DAWNING_KAFKA__SECURITY__SASLPASSWORD": "pw",
        }
    )
    assert (loaded.kafka.security.protocol, loaded.kafka.security.sasl_mechanism) == (
        "SASL_SSL",
        "SCRAM-SHA-256",
    )
    with pytest.raises(SettingsError, match="must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"):
        Settings.load({"DAWNING_KAFKA__SECURITY__SASLMECHANISM": "GSSAPI"})
    with pytest.raises(SettingsError, match="no such file"):
        Settings.load({"DAWNING_KAFKA__SECURITY__CAFILE": "/nonexistent/ca.pem"})
