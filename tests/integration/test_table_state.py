"""The Dawning tables keep their state through a worker restart and a rebalance.

Real worker processes (``python -m dawning_streams worker``), real Kafka: the
state is read back through each agent's web view, and every "nothing counted
twice" is proven by a later message on the same key, never by a sleep.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dawning_streams import (
    AlertNotificationMessage,
    ConfigChangedMessage,
    Settings,
    UserEventMessage,
    create_app,
)

from ..handler_helpers import eventually, same_partition_users
from ..workers import Worker, settle, spawn

pytestmark = [pytest.mark.kafka, pytest.mark.deadline(240)]


def alert(rule: uuid.UUID) -> AlertNotificationMessage:
    return AlertNotificationMessage(
        alert_rule_id=rule,
        rule_name="cpu",
        metric_type="cpu",
        current_value=99.0,
        threshold=90.0,
        severity="Info",
        description="hot",
        timestamp=datetime.now(UTC),
    )


async def served(worker: Worker, path: str, check: Any, what: str) -> dict[str, Any]:
    """The view's JSON once ``check`` accepts it."""

    async def ready() -> dict[str, Any] | None:
        answer = await worker.poll_json(path)
        if answer is None or answer[0] != 200 or not check(answer[1]):
            return None
        return answer[1]

    result: dict[str, Any] = await eventually(ready, timeout_s=90, what=f"{worker.name}: {what}")
    return result


async def test_user_config_and_alert_state_survive_a_restart_and_a_rebalance(
    settings: Settings, tmp_path: Path
) -> None:
    publisher = create_app(settings, web_enabled=False)
    # Users on every partition, so the rebalance below moves some of them.
    users = [same_partition_users(1, settings.kafka.partitions)[0]] + [
        uuid.uuid4() for _ in range(5)
    ]
    rule = uuid.uuid4()
    logins = {user: UserEventMessage(user_id=user, event_type="user.login") for user in users}
    change = ConfigChangedMessage(config_group="g", config_key="k", new_value="2")
    first_alert = alert(rule)
    async with publisher.bus as bus:
        first = spawn(settings, "first", tmp_path)
        await settle([first])
        for message in logins.values():
            await bus.publish(message)
        await bus.publish(ConfigChangedMessage(config_group="g", config_key="k", new_value="1"))
        await bus.publish(change)
        await bus.publish(first_alert)
        for user in users:
            await served(
                first, f"/users/{user}", lambda b: b["counts"] == {"user.login": 1}, "a login"
            )
        await served(first, "/config/g/k", lambda b: b["version"] == 2, "config version 2")
        await served(first, f"/alerts/{rule}", lambda b: b["alerts"] == 1, "the first alert")
        assert first.stop() == 0

        # Restarted: each table is recovered from its changelog.
        second = spawn(settings, "second", tmp_path)
        await settle([second])
        for user in users:
            state = await served(second, f"/users/{user}", lambda b: True, "recovered state")
            assert state["counts"] == {"user.login": 1}, state
        assert (await served(second, "/config/g/k", lambda b: True, "config"))["value"] == "2"
        # Redeliveries of what was handled before the restart change nothing...
        for message in logins.values():
            await bus.publish(message)
        await bus.publish(change)
        await bus.publish(first_alert)
        # ...as the next message on each key shows.
        for user in users:
            await bus.publish(UserEventMessage(user_id=user, event_type="user.logout"))
            state = await served(
                second, f"/users/{user}", lambda b: "user.logout" in b["counts"], "the logout"
            )
            assert state["counts"] == {"user.login": 1, "user.logout": 1}, state
        await bus.publish(ConfigChangedMessage(config_group="g", config_key="k", new_value="3"))
        config = await served(second, "/config/g/k", lambda b: b["value"] == "3", "value 3")
        assert config["version"] == 3, config
        # Within the throttle window (300 s) of the first alert: counted, not notified.
        await bus.publish(alert(rule))
        rule_state = await served(second, f"/alerts/{rule}", lambda b: b["alerts"] == 2, "alert 2")
        assert rule_state["suppressed"] == 1, rule_state

        # A rebalance: a third worker joins and takes over some partitions,
        # with their state.
        third = spawn(settings, "third", tmp_path)
        try:
            await settle([second, third])
            for user in users:
                await bus.publish(UserEventMessage(user_id=user, event_type="user.logout"))
            for worker in (second, third):
                for user in users:
                    state = await served(
                        worker,
                        f"/users/{user}",
                        lambda b: b["counts"].get("user.logout") == 2,
                        f"the second logout of {user}",
                    )
                    assert state["counts"] == {"user.login": 1, "user.logout": 2}, state
            await bus.publish(alert(rule))
            for worker in (second, third):
                rule_state = await served(
                    worker, f"/alerts/{rule}", lambda b: b["alerts"] == 3, "alert 3"
                )
                assert rule_state["suppressed"] == 2, rule_state
            # Every instance sees every instance: the two running, the first stopped.
            for worker in (second, third):
                listed = await served(
                    worker,
                    "/instances",
                    lambda b: {"second", "third"} <= {i["instance"] for i in b["instances"]},
                    "both running instances listed",
                )
                seen = {i["instance"]: i for i in listed["instances"]}
                assert sorted(seen) == ["first", "second", "third"], seen
                assert seen["first"].get("stopped_at") is not None, seen
                for running in ("second", "third"):
                    assert seen[running].get("started_at") is not None, seen
                    assert seen[running].get("stopped_at") is None, seen
        finally:
            codes = [worker.stop() for worker in (second, third)]
        assert codes == [0, 0]
