"""``dedupe=`` as declared: the policy, its table, and the mistakes refused."""

from __future__ import annotations

import uuid

import pytest

from dawning_streams import AuditLogMessage, Dedupe, HandlerError, UserEventMessage, create_app
from dawning_streams.agents import install
from dawning_streams.kafka.tables import MarkerTable


def test_dedupe_true_keeps_the_handlers_ids_a_day_in_a_compacted_changelog() -> None:
    app = create_app()

    @app.handler(dedupe=True)
    async def tracked(message: UserEventMessage) -> None: ...

    table = app.tables["tracked-seen"]
    assert isinstance(table, MarkerTable)
    assert tracked.dedupe is not None and tracked.dedupe.seen is table
    assert table.ttl_s == 24 * 3600
    assert table.purge_every_s == 3600
    assert table.changelog_topic.get_topic_name() == "dawning-identity-group-tracked-seen-changelog"
    assert table.changelog_topic.compacting
    assert table.partitions == 3


def test_a_short_window_is_purged_more_often_and_the_table_may_be_named() -> None:
    app = create_app()

    @app.handler(dedupe=Dedupe(window_s=60, table="recent"))
    async def quick(message: UserEventMessage) -> None: ...

    table = app.tables["recent"]
    assert isinstance(table, MarkerTable)
    assert (table.ttl_s, table.purge_every_s) == (60, 15)


def test_without_dedupe_a_handler_has_no_table() -> None:
    app = create_app()

    @app.handler
    async def plain(message: UserEventMessage) -> None: ...

    assert plain.dedupe is None
    assert "plain-seen" not in app.tables


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        ({"window_s": 0}, "window_s must be a positive number, got 0"),
        ({"window_s": True}, "window_s must be a positive number, got True"),
        ({"wait": "yes"}, "wait must be True or False, got 'yes'"),
        ({"table": "a table"}, "table must be a name of letters, digits, _ and -, got 'a table'"),
    ],
)
def test_a_bad_dedupe_policy_is_refused_by_name(policy: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Dedupe(**policy)  # type: ignore[arg-type]


def test_a_dedupe_that_cannot_work_is_refused_at_declaration() -> None:
    app = create_app()
    with pytest.raises(HandlerError, match=r"dedupe must be True or a Dedupe\(...\), got 'yes'"):

        @app.handler(UserEventMessage, dedupe="yes")
        async def unclear(message: UserEventMessage) -> None: ...

    with pytest.raises(HandlerError, match="a batch handler de-duplicates where it stores"):

        @app.handler(dedupe=True, batch_size=10)
        async def batch(messages: list[AuditLogMessage]) -> None: ...

    with pytest.raises(HandlerError, match="takes bytes, which carry no MessageId"):

        @app.handler(bytes, topic="raw", dedupe=True)
        async def raw(value: bytes) -> None: ...


async def test_calling_a_handler_directly_skips_nothing() -> None:
    app = create_app()
    seen: list[str] = []

    @app.handler(dedupe=True)
    async def direct(message: UserEventMessage) -> None:
        seen.append(message.event_type)

    message = UserEventMessage(user_id=uuid.uuid4(), event_type="again")
    await direct(message)
    await direct(message)
    assert seen == ["again", "again"]


def test_every_dawning_agent_of_one_message_dedupes_through_the_framework() -> None:
    app = create_app()
    install(app)
    by_name = {name: handler.dedupe for name, handler in app.handlers.items()}
    # The audit log handles batches; its store keeps one row per MessageId.
    assert by_name.pop("store_audit_log") is None
    assert by_name and all(dedupe is not None for dedupe in by_name.values()), by_name
    assert app.handlers["send_email"].dedupe.seen.name == "email-sent"  # type: ignore[union-attr]
    assert app.handlers["send_email"].options.dedupe_policy.wait  # type: ignore[union-attr]
