"""The web port: loopback by default, a bearer token for anything that changes state,
and secrets masked wherever settings are shown."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

import dawning_streams.agents
from dawning_streams import AuditLogMessage, Reject, Settings, SettingsError, create_app
from dawning_streams.core.settings import (
    AlertSettings,
    Secret,
    SmtpSettings,
    TelemetrySettings,
    WebSettings,
    shown,
)

from ..handler_helpers import Calls, running
from ..kafka_helpers import read_topic

pytestmark = pytest.mark.kafka

TOKEN = "correct-horse-battery-staple"


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (Linux's /proc/net)."""
    found = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                if len(address) == 8:
                    found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
                else:
                    found.add(address)
    return found


async def end_offset(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(3)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


def test_the_web_port_binds_to_loopback_by_default() -> None:
    assert WebSettings().host == "127.0.0.1"
    assert Settings.load({}).web.host == "127.0.0.1"


async def test_the_worker_listens_on_loopback_only(settings: Settings) -> None:
    app = create_app(settings)
    async with running(app):
        assert listening_addresses(settings.web.port) == {"127.0.0.1"}


async def test_replay_needs_the_bearer_token_and_does_nothing_without_it(
    settings: Settings,
) -> None:
    settings = dataclasses.replace(
        settings, web=dataclasses.replace(settings.web, admin_token=Secret(TOKEN))
    )
    app = create_app(settings)
    calls = Calls()
    topic = settings.kafka.topics.audit_log
    bootstrap = settings.kafka.bootstrap_servers[0]

    @app.handler
    async def audit(message: AuditLogMessage) -> None:
        calls.add(message.action)
        raise Reject("not today")

    url = f"http://127.0.0.1:{settings.web.port}/api/dead-letters/replay"
    body = {"topic": f"{topic}.dlq", "all": True}
    async with running(app), aiohttp.ClientSession() as http:
        await app.bus.publish(AuditLogMessage(user_id=uuid.uuid4(), action="a", entity_type="U"))
        await read_topic(bootstrap, f"{topic}.dlq", 1)
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": "Bearer "},
        ):
            async with http.post(url, json=body, headers=headers) as response:
                assert response.status == 401, headers
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert "Web:AdminToken" in (await response.json())["error"]
        assert await end_offset(bootstrap, topic) == 1  # nothing was replayed
        assert calls.items == ["a"]

        authorized = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(url, json=body, headers=authorized) as response:
            assert response.status == 200
            assert await response.json() == {"replayed": 1}
        await calls.wait_until(lambda items: items == ["a", "a"])
        assert await end_offset(bootstrap, topic) == 2

        async with http.post(url, json={"topic": "nope"}, headers=authorized) as response:
            assert response.status == 400
            assert "'nope' is not a dead-letter topic" in (await response.json())["error"]
        # JSON's true is not partition 1, nor a float an offset: refused, nothing replayed.
        for bad, problem in (
            ({"partition": True, "offset": 0}, "must be integers"),
            ({"partition": 0, "offset": 0.0}, "must be integers"),
            ({"all": "yes"}, "\"all\" must be true or false, got 'yes'"),
            ({"all": True, "partition": 0, "offset": 0}, '"all": true, not both'),
            ({"partition": 0, "offset": 0, "ofset": 1}, "unknown field 'ofset'"),
        ):
            request = {"topic": f"{topic}.dlq", **bad}
            async with http.post(url, json=request, headers=authorized) as response:
                assert response.status == 400
                assert problem in (await response.json())["error"], bad
        assert await end_offset(bootstrap, topic) == 2


async def test_without_a_configured_token_every_admin_request_is_401(settings: Settings) -> None:
    assert settings.web.admin_token is None
    app = create_app(settings)
    url = f"http://127.0.0.1:{settings.web.port}/api/dead-letters/replay"
    async with running(app), aiohttp.ClientSession() as http:
        topic = f"{settings.kafka.topics.audit_log}.dlq"
        for headers in ({}, {"Authorization": "Bearer anything"}):
            async with http.post(url, json={"topic": topic, "all": True}, headers=headers) as r:
                assert r.status == 401
                assert "disabled" in (await r.json())["error"]


SECRETS = {
    "DAWNING_WEB__ADMINTOKEN": TOKEN,
    "DAWNING_SMTP__PASSWORD": "smtp-hunter2",
    "DAWNING_KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
    "DAWNING_KAFKA__SECURITY__SASLUSERNAME": "alice",
    "DAWNING_KAFKA__SECURITY__SASLPASSWORD": "sasl-hunter2",
    "DAWNING_KAFKA__SECURITY__KEYPASSWORD": "key-hunter2",
    "DAWNING_TELEMETRY__OTLPHEADERS": "authorization=Bearer otlp-hunter2",
    "DAWNING_REDIS__URL": "redis://:redis-hunter2@cache:6379/0",
    "DAWNING_ALERTS__WEBHOOKURL": "https://hooks.example.com/services/webhook-hunter2",
}


def test_settings_show_every_secret_masked(tmp_cwd: Path) -> None:
    settings = Settings.load(SECRETS)
    text = repr(settings) + str(shown(settings))
    for secret in ("hunter2", TOKEN):
        assert secret not in text
    listed = shown(settings)
    assert listed["Kafka:Security:SaslPassword"] == "**********"
    assert listed["Web:AdminToken"] == "**********"
    assert listed["Redis:Url"] == "redis://:**********@cache:6379/0"
    assert listed["Alerts:WebhookUrl"] == "https://hooks.example.com/**********"
    assert listed["Kafka:Security:SaslUsername"] == "alice"


def test_a_bad_secret_value_is_named_but_not_shown(tmp_cwd: Path) -> None:
    appsettings = tmp_cwd / "appsettings.json"
    appsettings.write_text('{"Kafka": {"Security": {"SaslPassword": 123456789}}}')
    with pytest.raises(SettingsError) as caught:
        Settings.load({})
    assert "Kafka:Security:SaslPassword" in str(caught.value)
    assert "123456789" not in str(caught.value)
    appsettings.unlink()
    with pytest.raises(SettingsError) as caught:
        Settings.load({"DAWNING_REDIS__URL": "http://:redis-hunter2@cache/0"})
    assert "redis-hunter2" not in str(caught.value) and "Redis:Url" in str(caught.value)


async def test_the_log_and_the_dashboard_show_settings_masked(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dataclasses.replace(
        settings,
        web=dataclasses.replace(settings.web, admin_token=Secret(TOKEN)),
        smtp=dataclasses.replace(settings.smtp, password=Secret("smtp-hunter2")),
        alerts=AlertSettings(webhook_url="https://hooks.example.com/webhook-hunter2"),
        telemetry=TelemetrySettings(otlp_headers=Secret("authorization=Bearer otlp-hunter2")),
    )
    assert isinstance(settings.smtp, SmtpSettings)
    app = create_app(settings)
    base = f"http://127.0.0.1:{settings.web.port}"
    with caplog.at_level(logging.INFO, logger="dawning_streams"):
        async with running(app), aiohttp.ClientSession() as http:
            async with http.get(f"{base}/") as response:
                page = await response.text()
            async with http.get(f"{base}/api/overview") as response:
                data = await response.text()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "Web:AdminToken=**********" in logged
    assert "Smtp:Password" in page and "Smtp:Password" in data
    for shown_text in (logged, page, data):
        assert "hunter2" not in shown_text and TOKEN not in shown_text
        assert "**********" in shown_text


async def test_no_route_changes_anything_without_the_token(settings: Settings) -> None:
    """Every write method on every route of the worker (Faust's included) is refused."""
    settings = dataclasses.replace(
        settings, web=dataclasses.replace(settings.web, admin_token=Secret(TOKEN))
    )
    app = create_app(settings)
    dawning_streams.agents.install(app)
    base = f"http://127.0.0.1:{settings.web.port}"
    async with running(app), aiohttp.ClientSession() as http:
        paths = {
            re.sub(r"\{[^}]+\}", "x", resource.canonical)
            for resource in app.web.web_app.router.resources()  # type: ignore[attr-defined]
        }
        assert {"/", "/metrics", "/ready", "/api/dead-letters/replay"} <= paths
        answers = {}
        for path in sorted(paths):
            for method in ("POST", "PUT", "PATCH", "DELETE"):
                async with http.request(method, base + path, json={"all": True}) as response:
                    answers[(method, path)] = response.status
    assert answers.pop(("POST", "/api/dead-letters/replay")) == 401
    refused = {key: status for key, status in answers.items() if status not in (404, 405)}
    assert refused == {}, refused


async def test_a_request_too_long_to_parse_is_a_400_and_one_warning_line(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)
    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        async with running(app):
            reader, writer = await asyncio.open_connection("127.0.0.1", settings.web.port)
            writer.write(b"GET /health?x=" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            status = await reader.readline()
            writer.close()
            url = f"http://127.0.0.1:{settings.web.port}/health"
            async with aiohttp.ClientSession() as http, http.get(url) as health:
                assert health.status == 200  # the worker goes on serving
    assert status.split()[1] == b"400", status
    [record] = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert record.levelname == "WARNING" and record.exc_info is None
    assert "LineTooLong" in record.getMessage() and "answered 400" in record.getMessage()
