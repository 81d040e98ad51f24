"""Which members of a described group run other modules, and the line a worker stops with."""

from __future__ import annotations

from typing import Any

from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from dawning_streams.kafka.membership import ForeignMember, foreign, refusal

OURS = {"dawning.audit-log", "dawning.audit-log.store_audit_log.timers", "g-audit-changelog"}


def group(*subscriptions: set[str] | None, protocol_type: str = "consumer") -> dict[str, Any]:
    return {
        "error_code": 0,
        "protocol_type": protocol_type,
        "members": [
            {
                "client_id": "faust-0.15.3",
                "client_host": f"/10.0.0.{n}",
                "member_metadata": b""
                if topics is None
                else ConsumerProtocolMemberMetadata(0, sorted(topics), b"{}").encode(),
            }
            for n, topics in enumerate(subscriptions)
        ],
    }


def test_members_subscribing_to_the_same_topics_are_not_foreign() -> None:
    assert foreign([group(OURS, OURS)], OURS) == []


def test_a_member_with_other_topics_is_named_with_its_topics() -> None:
    theirs = {"billing.invoice-paid", "g-book_invoice-timers-changelog"}
    assert foreign([group(OURS, theirs)], OURS) == [
        ForeignMember("a worker on 10.0.0.1", frozenset(theirs))
    ]


def test_a_member_not_yet_synced_or_not_a_consumer_is_not_compared() -> None:
    assert foreign([group(None)], OURS) == []
    assert foreign([group({"x"}, protocol_type="connect")], OURS) == []
    assert foreign([{**group({"x"}), "error_code": 16}], OURS) == []


def test_the_refusal_names_the_group_the_topics_on_each_side_and_the_setting() -> None:
    theirs = frozenset({"billing.invoice-paid", "g-book_invoice-timers-changelog"})
    line = refusal("g", set(OURS), [ForeignMember("a worker on 10.0.0.1", theirs)])
    assert line.startswith("Kafka:ConsumerGroupId 'g' is in use by 1 worker(s) running other")
    # Message and timer topics before changelogs.
    assert (
        "(a worker on 10.0.0.1: billing.invoice-paid, g-book_invoice-timers-changelog only "
        "theirs, dawning.audit-log, dawning.audit-log.store_audit_log.timers, "
        "g-audit-changelog only this worker's)"
    ) in line
    assert "DAWNING_KAFKA__CONSUMERGROUPID" in line
