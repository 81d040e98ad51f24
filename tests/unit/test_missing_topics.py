"""The consumer's watch for subscribed topics missing from its metadata, when no
metadata update ever came: Kafka went down as the consumer subscribed, its
update failed (which calls no listener), and a group leader holding that
metadata assigns nothing, rebalance after rebalance."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from aiokafka.cluster import ClusterMetadata

from dawning_streams.kafka.watches import MissingTopicsWatch


class Client:
    """Where aiokafka keeps a consumer's metadata, and its one call asked of it here."""

    def __init__(self) -> None:
        self.cluster = ClusterMetadata()  # what a consumer holds before any update
        self.refreshed = 0

    def force_metadata_update(self) -> None:
        self.refreshed += 1


async def test_a_periodic_look_finds_the_topics_no_update_brought_and_asks_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = Client()
    consumer = SimpleNamespace(_client=client, subscription=lambda: {"orders", "payments"})
    watch = MissingTopicsWatch(consumer, every_s=0.05)
    with caplog.at_level(logging.WARNING, logger="dawning_streams.kafka.watches"):
        watch.check()
        watch.check()  # said once, asked once per interval
        await asyncio.sleep(0.2)
    assert watch.missing == {"orders", "payments"}
    assert client.refreshed == 1
    assert [r.getMessage() for r in caplog.records] == [
        "subscribed topics missing from the cluster's metadata, asked again every 0.05 s "
        "(their partitions are not assigned until they show): orders, payments"
    ]
