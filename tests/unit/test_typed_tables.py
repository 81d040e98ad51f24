"""The Dawning tables as declared: str keys written as the messages' key bytes,
and typed values written as plain JSON objects."""

from __future__ import annotations

import orjson
import pytest

from dawning_streams import create_app
from dawning_streams.agents import install
from dawning_streams.tables.alert_rules import AlertRuleState
from dawning_streams.tables.cache_invalidations import Invalidation
from dawning_streams.tables.config_values import ConfigValue
from dawning_streams.tables.instances import InstanceState
from dawning_streams.tables.user_state import UserState

VALUES = {
    "user-state": UserState(counts={"user.login": 2}, user_name="alice"),
    "instances": InstanceState(instance="gw-1", events={"instance.started": 1}),
    "alert-rules": AlertRuleState(
        rule_name="cpu",
        severity="critical",
        metric_type="cpu",
        current_value=97.5,
        threshold=90.0,
        last_alert_at="2026-12-01T10:00:00+00:00",
        alerts=1,
        suppressed=0,
    ),
    "config": ConfigValue(
        group="Jwt",
        key="Issuer",
        value="dawning",
        changed_by="admin",
        changed_at="2026-12-01T10:00:00+00:00",
        version=3,
        message_id="00000000-0000-0000-0000-000000000001",
    ),
    "cache-invalidations": Invalidation(
        removed=4, invalidated_at="2026-12-01T10:00:00+00:00", count=1, pattern="user:*"
    ),
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_a_table_writes_its_key_as_the_messages_key_bytes_and_its_value_as_plain_json(
    name: str,
) -> None:
    app = create_app()
    install(app)
    table = app.tables[name]
    topic = table.changelog_topic
    key = "3f1c1a7e-2d4b-4c51-9f0e-6a2b7c8d9e01"
    assert table.key_type is str
    # The bytes the producer partitions a message by, so routing finds the owner.
    assert app.serializers.dumps_key(topic.key_type, key, serializer=topic.key_serializer) == (
        key.encode()
    )
    raw = app.serializers.dumps_value(
        topic.value_type, VALUES[name], serializer=topic.value_serializer
    )
    assert raw is not None
    assert "__faust" not in orjson.loads(raw)
    loaded = app.serializers.loads_value(topic.value_type, raw, serializer=topic.value_serializer)
    assert isinstance(loaded, table.value_type)
    assert loaded == VALUES[name]


def test_a_value_written_before_the_tables_were_typed_still_loads() -> None:
    """Changelogs keep old records: the dicts written before, with fields since dropped."""
    app = create_app()
    install(app)
    topic = app.tables["user-state"].changelog_topic
    old = orjson.dumps({"counts": {"user.login": 1}, "recent_ids": ["a"], "user_name": None})
    loaded = app.serializers.loads_value(topic.value_type, old, serializer=topic.value_serializer)
    assert isinstance(loaded, UserState)
    assert loaded.counts == {"user.login": 1}


def test_a_table_refuses_a_value_type_that_is_not_a_plain_json_record() -> None:
    import faust

    from dawning_streams import message_keyed_table

    class WithMetadata(faust.Record):
        n: int

    app = create_app()
    with pytest.raises(
        TypeError, match=r"value_type must be a faust\.Record type, got <class 'dict'>"
    ):
        message_keyed_table(app, "loose", value_type=dict, help="")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="declare WithMetadata with include_metadata=False"):
        message_keyed_table(app, "tagged", value_type=WithMetadata, help="")


def test_a_tables_changelog_is_not_a_topic_a_stream_must_acknowledge() -> None:
    """Faust's livelock check would log an ERROR every few seconds, from five
    minutes after the start, for each partition of an acking changelog that
    the table writes and no stream reads."""
    import faust

    from dawning_streams import message_keyed_table

    class Entry(faust.Record, include_metadata=False):
        n: int

    app = create_app()
    table = message_keyed_table(app, "entries", value_type=Entry, help="")
    changelog = table.changelog_topic
    assert (changelog.acks, changelog.key_serializer, changelog.internal) == (False, "raw", True)
    assert changelog.compacting and changelog.get_topic_name().endswith("-entries-changelog")
