"""The start-up check of replication against the cluster: what refuses, what warns."""

from __future__ import annotations

import pytest

from dawning_streams.core.settings import KafkaSettings
from dawning_streams.kafka.replication import ReplicationError, TopicLayout, judge

THREE = KafkaSettings(bootstrap_servers=("k1:9092", "k2:9092", "k3:9092"), replication_factor=3)
TOPICS = ["dawning.audit-log", "dawning.audit-log.dlq", "group-audit-timers-changelog"]


def laid_out(replication_factor: int = 3, min_insync: int | None = 2) -> dict[str, TopicLayout]:
    return {name: TopicLayout(replication_factor, min_insync) for name in TOPICS}


def test_a_cluster_with_enough_brokers_and_matching_topics_says_nothing() -> None:
    assert judge(THREE, live_brokers=3, wanted=TOPICS, existing=laid_out()) == []
    assert judge(THREE, live_brokers=5, wanted=TOPICS, existing={}) == []


def test_a_replication_factor_above_the_live_brokers_is_refused_naming_the_key() -> None:
    with pytest.raises(ReplicationError) as caught:
        judge(THREE, live_brokers=1, wanted=TOPICS, existing=laid_out())
    message = str(caught.value)
    assert "Kafka:ReplicationFactor is 3" in message
    assert "only 1 broker(s)" in message
    assert "k1:9092,k2:9092,k3:9092" in message
    assert "\n" not in message


def test_one_broker_down_is_refused_while_topics_are_missing() -> None:
    existing = laid_out()
    del existing[TOPICS[0]]
    with pytest.raises(ReplicationError, match="1 of the app's topics do not exist yet"):
        judge(THREE, live_brokers=2, wanted=TOPICS, existing=existing)


def test_one_broker_down_with_every_topic_in_place_only_warns() -> None:
    [warning] = judge(THREE, live_brokers=2, wanted=TOPICS, existing=laid_out())
    assert "only 2 broker(s)" in warning and "Kafka:ReplicationFactor is 3" in warning


def test_a_topic_replicated_otherwise_is_named_and_left_alone() -> None:
    existing = laid_out()
    existing["dawning.audit-log.dlq"] = TopicLayout(1, 1)
    warnings = judge(THREE, live_brokers=3, wanted=TOPICS, existing=existing)
    assert warnings == [
        "topic dawning.audit-log.dlq has 1 replica(s), Kafka:ReplicationFactor is 3: "
        "left as it is (kafka-reassign-partitions changes it)",
        "topic dawning.audit-log.dlq has min.insync.replicas=1, Kafka:MinInsyncReplicas "
        "is 2: left as it is (kafka-configs --alter --add-config min.insync.replicas=N "
        "changes it)",
    ]


def test_an_unreadable_min_insync_is_not_reported() -> None:
    assert judge(THREE, live_brokers=3, wanted=TOPICS, existing=laid_out(min_insync=None)) == []


def test_a_single_broker_default_checks_out_on_a_single_broker() -> None:
    single = KafkaSettings()
    assert judge(single, live_brokers=1, wanted=TOPICS, existing=laid_out(1, 1)) == []
