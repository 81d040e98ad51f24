"""Alert and system-event agents on the real broker, SMTP sink and a real webhook."""

from __future__ import annotations

import asyncio
import dataclasses
import mailbox
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from dawning_streams import AlertNotificationMessage, Retry, Settings, create_app
from dawning_streams.agents import alert_notification, email_queue, system_event
from dawning_streams.core.settings import AlertSettings

from ..conftest import free_port
from ..handler_helpers import eventually, running
from ..workers import Worker
from .test_user_and_cache_agents import mail_to

pytestmark = pytest.mark.kafka


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[dict]]]:  # type: ignore[type-arg]
    """A real HTTP server that records what is POSTed to it."""
    received: list[dict] = []  # type: ignore[type-arg]

    async def record(request: web.Request) -> web.Response:
        received.append(
            {"body": await request.json(), "id": request.headers.get("X-Dawning-Message-Id")}
        )
        return web.Response(status=204)

    server = web.Application()
    server.router.add_post("/hook", record)
    runner = web.AppRunner(server)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


def alert(rule: uuid.UUID, at: datetime, severity: str = "Critical") -> AlertNotificationMessage:
    return AlertNotificationMessage(
        alert_rule_id=rule,
        rule_name="cpu-high",
        metric_type="cpu",
        severity=severity,
        current_value=97.5,
        threshold=90,
        timestamp=at,
    )


async def test_an_alert_mails_its_severitys_recipients_posts_the_webhook_and_throttles(
    settings: Settings,
    maildir: mailbox.Maildir,
    webhook: tuple[str, list[dict]],  # type: ignore[type-arg]
) -> None:
    url, posted = webhook
    ops, oncall = (f"{who}-{uuid.uuid4().hex[:6]}@example.com" for who in ("ops", "oncall"))
    settings = dataclasses.replace(
        settings,
        alerts=AlertSettings(
            critical=(ops, oncall), warning=("nobody@example.com",), throttle_s=300, webhook_url=url
        ),
    )
    app = create_app(settings)
    alert_notification.install(app)
    email_queue.install(app, retry=Retry(max_retries=1, backoff_s=0.2))
    rule = uuid.uuid4()
    start = datetime.now(UTC)
    first = alert(rule, start)
    async with running(app):
        await app.bus.publish(first)
        await app.bus.publish(alert(rule, start + timedelta(seconds=60)))  # throttled
        await app.bus.publish(alert(rule, start + timedelta(seconds=400)))  # notifies again
        await eventually(
            lambda: len(mail_to(maildir, ops)) == 2 and len(mail_to(maildir, oncall)) == 2
        )
        worker = Worker("self", settings.web.port, None, None)  # type: ignore[arg-type]

        async def three_alerts():  # type: ignore[no-untyped-def]
            status, body = await worker.get_json(f"/alerts/{rule}")
            return body if status == 200 and body["alerts"] == 3 else None

        state = await eventually(three_alerts)
        _, listing = await worker.get_json("/alerts")
        bad_status, _ = await worker.get_json("/alerts/not-a-guid")
        missing_status, _ = await worker.get_json(f"/alerts/{uuid.uuid4()}")
    assert (state["suppressed"], state["rule_name"]) == (1, "cpu-high")
    assert state["last_notified_at"] == (start + timedelta(seconds=400)).isoformat()
    assert [r["rule_id"] for r in listing["rules"]] == [str(rule)]
    assert (bad_status, missing_status) == (400, 404)
    [mail, _] = mail_to(maildir, ops)
    assert mail["Subject"] == "[CRITICAL] cpu-high: cpu 97.5 (threshold 90)"
    assert mail["X-Priority"] == "1"
    assert mail_to(maildir, "nobody@example.com") == []
    assert posted[0]["id"] == str(first.message_id)
    assert len(posted) == 2
    assert posted[0]["body"]["AlertRuleId"] == str(rule)


async def test_instances_report_their_lifecycle_and_are_listed(settings: Settings) -> None:
    app = create_app(settings)
    system_event.install(app)
    worker = Worker("self", settings.web.port, None, None)  # type: ignore[arg-type]
    async with running(app):

        async def listed():  # type: ignore[no-untyped-def]
            _, body = await worker.get_json("/instances")
            return body["instances"] or None

        [me] = await eventually(listed)
    assert me["instance"] == settings.instance_name
    assert me["last_event"] == "instance.started"
    assert me["started_at"] == me["last_seen"]
    assert me["events"] == {"instance.started": 1}
    stopped = create_app(settings)
    system_event.install(stopped)
    async with running(stopped):

        async def saw_stop():  # type: ignore[no-untyped-def]
            _, body = await worker.get_json("/instances")
            [entry] = body["instances"]
            return entry if entry["events"].get("instance.stopped") else None

        entry = await eventually(saw_stop)
    assert entry["stopped_at"] < entry["last_seen"]
    await asyncio.sleep(0)
