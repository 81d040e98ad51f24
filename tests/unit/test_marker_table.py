"""The email agent's ``email-sent`` table, as declared: no services needed."""

from __future__ import annotations

import orjson
import pytest
from faust.types import TP

from dawning_streams import create_app
from dawning_streams.agents import email_queue
from dawning_streams.kafka.tables import MarkerTable
from dawning_streams.tables import email_sent


@pytest.fixture
def table() -> MarkerTable:
    app = create_app()
    email_queue.install(app)
    declared = app.tables["email-sent"]
    assert isinstance(declared, MarkerTable)
    return declared


def test_the_email_agent_keeps_its_sent_markers_a_week_in_a_compacted_changelog(
    table: MarkerTable,
) -> None:
    topic = table.changelog_topic
    assert topic.get_topic_name() == "dawning-identity-group-email-sent-changelog"
    # As many partitions as the email topic: a marker goes where its mail's record is.
    assert table.partitions == topic.partitions == 3
    assert topic.compacting
    assert topic.config == {"segment.ms": str(24 * 3600 * 1000)}
    assert table.ttl_s == email_sent.SENT_TTL_S == 7 * 24 * 3600


@pytest.mark.parametrize("ttl_s", [0, -1.0])
def test_a_marker_table_refuses_a_ttl_that_is_not_positive(ttl_s: float) -> None:
    app = create_app()
    with pytest.raises(ValueError, match="ttl_s and purge_every_s must be positive"):
        MarkerTable(app, name="markers", ttl_s=ttl_s, help="test")


async def test_after_a_rebalance_a_worker_keeps_the_markers_of_its_partitions_only(
    table: MarkerTable,
) -> None:
    for partition in range(3):
        table.data[f"id-{partition}".encode()] = orjson.dumps({"p": partition, "at": 1})
    changelog = table.changelog_topic.get_topic_name()
    await table.on_rebalance(set(), set(), set())
    assert table.owned == set()  # nothing is purged while the group rebalances
    await table.on_recovery_completed({TP(changelog, 0), TP(changelog, 2)}, set())
    assert table.owned == {0, 2}
    assert [table.marked(f"id-{p}") for p in range(3)] == [True, False, True]
