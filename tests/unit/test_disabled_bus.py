"""The bus with ``Kafka:Enabled=false``: it drops, counts, and says so where a script shows it."""

from __future__ import annotations

import logging
import uuid

import pytest

from dawning_streams import AuditLogMessage, NullMessageBus


async def test_the_first_drop_is_a_warning_and_the_rest_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = NullMessageBus()
    caplog.set_level(logging.INFO)
    messages = [AuditLogMessage(user_id=uuid.uuid4(), action="a", entity_type="e") for _ in "ab"]
    await bus.publish_many(messages)
    bus.forwarded("raw.topic")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "WARNING",
            f"Kafka is disabled (Kafka:Enabled=false); dropped AuditLogMessage"
            f" {messages[0].message_id}, and every message sent from now on (counted, at INFO)",
        ),
        (
            "INFO",
            f"Kafka is disabled (Kafka:Enabled=false); dropped AuditLogMessage"
            f" {messages[1].message_id}",
        ),
        ("INFO", "Kafka is disabled (Kafka:Enabled=false); dropped a record for raw.topic"),
    ]
    assert bus.dropped == {"AuditLogMessage": 2, "raw.topic": 1}
