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

from dawning_streams.kafka import watches
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
    with caplog.at_level(logging.INFO, logger="dawning_streams.kafka.watches"):
        watch.check()
        watch.check()  # said once, asked once per interval
        await asyncio.sleep(0.2)
    assert watch.missing == {"orders", "payments"}
    assert client.refreshed == 1
    assert [r.getMessage() for r in caplog.records] == [
        "subscribed topics missing from the cluster's metadata, asked again every 0.05 s "
        "(their partitions are not assigned until they show): orders, payments"
    ]


async def test_topics_still_missing_after_a_while_are_said_once_at_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watches, "MISSING_WARN_S", 0.1)
    topics = {f"t{n}" for n in range(7)}
    consumer = SimpleNamespace(_client=Client(), subscription=lambda: topics)
    watch = MissingTopicsWatch(consumer, every_s=0.02)
    with caplog.at_level(logging.INFO, logger="dawning_streams.kafka.watches"):
        for _ in range(15):
            watch.check()
            await asyncio.sleep(0.02)
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said[0][0] == logging.INFO
    warned = [m for level, m in said if level == logging.WARNING]
    assert len(warned) == 1, said
    assert warned[0].startswith("subscribed topics still missing from the cluster's metadata after")
    assert warned[0].endswith(": t0, t1, t2, t3, t4 and 2 more")
