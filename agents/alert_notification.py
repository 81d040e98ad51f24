"""``dawning.alert-notification``: turn an alert into notifications, throttled per rule.

Each alert becomes one ``EmailMessage`` per address configured for its
severity (``Alerts:Critical``, ``Alerts:Warning``, ``Alerts:Info``), published
to the email queue, and a JSON POST to ``Alerts:WebhookUrl`` when one is set.
Repeats of a rule within ``Alerts:ThrottleS`` (by the alerts' own timestamps)
notify nobody and are counted as suppressed. A redelivered alert is skipped
(``dedupe=True``); its emails have ids derived from the alert's, so the email
handler skips those a retry sends again. The ``alert-rules`` table keeps
each rule's latest state; ``GET /alerts`` and ``GET /alerts/{rule_id}`` serve
it from any worker.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import aiohttp
from faust.web import Request, Response

from dawning_streams import AlertNotificationMessage, App, EmailMessage, Handler, encode
from dawning_streams.core.errors import DawningError
from dawning_streams.kafka.replica import TableReplica
from dawning_streams.ops.web import Page, error
from dawning_streams.tables import alert_rules
from dawning_streams.tables.alert_rules import AlertRuleState

__all__ = ["WebhookError", "install"]

_NOTIFICATIONS = uuid.UUID("0f3e8a52-6c1b-4d0e-b7a3-9d2f41c6e8a7")


class WebhookError(DawningError):
    """The alert webhook did not accept a notification; retried."""


def install(app: App) -> Handler[AlertNotificationMessage]:
    """Declare the alert handler and its views."""
    settings = app.dawning_settings.alerts
    table = alert_rules.create(app)
    rules = TableReplica()
    rules.follow(app, table)

    @app.handler(AlertNotificationMessage, dedupe=True, name="notify_alert")
    async def notify_alert(message: AlertNotificationMessage) -> None:
        """Notify, unless the rule notified within the throttle window."""
        key = str(message.alert_rule_id)
        state = table.get(key)
        assert message.timestamp is not None
        last = state.last_notified_at if state is not None else None
        throttled = (
            last is not None
            and (message.timestamp - datetime.fromisoformat(last)).total_seconds()
            < settings.throttle_s
        )
        if not throttled:
            for address in settings.recipients(message.severity):
                await app.bus.publish(notification(message, address))
            if settings.webhook_url:
                await post_webhook(settings.webhook_url, message)
        table[key] = AlertRuleState(
            rule_name=message.rule_name,
            severity=message.severity,
            metric_type=message.metric_type,
            current_value=message.current_value,
            threshold=message.threshold,
            description=message.description,
            last_alert_at=message.timestamp.isoformat(),
            last_notified_at=last if throttled else message.timestamp.isoformat(),
            alerts=(state.alerts if state is not None else 0) + 1,
            suppressed=(state.suppressed if state is not None else 0) + (1 if throttled else 0),
        )

    @app.page("/alerts")
    class AlertsView(Page):
        """The latest state of every alert rule."""

        async def get(self, request: Request) -> Response:
            return self.json(
                {"rules": [{"rule_id": k, **v.asdict()} for k, v in sorted(rules.values.items())]}
            )

    @app.page("/alerts/{rule_id}")
    class AlertRuleView(Page):
        """The latest state of one alert rule."""

        async def get(self, request: Request, rule_id: str) -> Response:
            try:
                key = str(uuid.UUID(rule_id))
            except ValueError:
                return error(self, 400, f"rule id {rule_id!r} is not a GUID")
            state = rules.values.get(key)
            if state is None:
                return error(self, 404, f"no alerts for rule {key}")
            return self.json({"rule_id": key, **state.asdict()})

    return notify_alert


def notification(alert: AlertNotificationMessage, address: str) -> EmailMessage:
    """The email telling ``address`` of ``alert``; its id is derived, so a retry repeats none."""
    return EmailMessage(
        to=address,
        subject=f"[{alert.severity.upper()}] {alert.rule_name}: {alert.metric_type} "
        f"{alert.current_value:g} (threshold {alert.threshold:g})",
        body=alert.description or f"Alert rule {alert.rule_name} fired.",
        priority=2 if alert.severity.lower() == "critical" else 0,
        message_id=uuid.uuid5(_NOTIFICATIONS, f"{alert.message_id}:{address}"),
        correlation_id=alert.correlation_id or str(alert.message_id),
        tenant_id=alert.tenant_id,
    )


async def post_webhook(url: str, alert: AlertNotificationMessage) -> None:
    """POST the alert's wire JSON; anything but a 2xx is retried."""
    headers = {"Content-Type": "application/json", "X-Dawning-Message-Id": str(alert.message_id)}
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(url, data=encode(alert), headers=headers) as response,
        ):
            if response.status // 100 != 2:
                raise WebhookError(f"webhook {url} answered {response.status}")
    except aiohttp.ClientError as exc:
        raise WebhookError(f"webhook {url}: {exc}") from exc
