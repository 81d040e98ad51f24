"""Which file a spool uses: one per instance and cluster, none left when empty,
and an older version's file (named without its cluster) reported, not delivered."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from dawning_streams import Settings
from dawning_streams.bus.spool import Spool
from dawning_streams.core.settings import KafkaSettings


def settings_for(*servers: str, instance: str = "gw-1") -> Settings:
    return dataclasses.replace(
        Settings(), kafka=KafkaSettings(bootstrap_servers=servers), instance_name=instance
    )


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    return tmp_path / "dawning-streams" / "spool"


def test_each_cluster_has_a_spool_file_of_its_own(state_home: Path) -> None:
    one = Spool.of(settings_for("kafka-a:9092", "kafka-b:9092")).wanted
    same = Spool.of(settings_for("kafka-b:9092", "kafka-a:9092")).wanted
    other = Spool.of(settings_for("staging:9092")).wanted
    assert one == same, "the order of the servers does not matter"
    assert one != other
    assert one.parent == other.parent == state_home
    assert one.name.startswith("gw-1-") and one.suffix == ".sqlite3"


def test_a_path_set_in_the_settings_is_used_as_it_is(tmp_path: Path) -> None:
    settings = settings_for("kafka-a:9092")
    spool = dataclasses.replace(settings.kafka.spool, path=str(tmp_path / "mine.sqlite3"))
    settings = dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, spool=spool))
    assert Spool.of(settings).wanted == tmp_path / "mine.sqlite3"
    assert Spool.of(settings).unnamed is None


async def test_an_empty_spool_leaves_no_file_and_one_with_records_stays() -> None:
    spool = Spool.of(settings_for("kafka-a:9092"))
    await spool.open()
    assert spool.path.exists()
    await spool.close()
    assert not spool.path.exists()

    kept = Spool.of(settings_for("kafka-a:9092"))
    await kept.open()
    await kept.append("t", b"k", b"v", [], None)
    await kept.close()
    assert kept.path.exists()
    again = Spool.of(settings_for("kafka-a:9092"))
    await again.open()
    assert again.count == 1
    await again.close()


async def test_an_older_unnamed_spool_is_named_in_a_warning_and_left_alone(
    state_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unnamed = state_home / "gw-1.sqlite3"
    older = Spool(unnamed, 1 << 20)
    await older.open()
    await older.append("t", b"k", b"for-some-cluster", [], None)
    await older.append("t", b"k", b"for-some-cluster", [], None)
    await older.close()

    spool = Spool.of(settings_for("kafka-a:9092"))
    with caplog.at_level(logging.WARNING, logger="dawning_streams.bus.spool"):
        await spool.open()
    await spool.close()
    assert spool.count == 0, "not taken in"
    assert [r.getMessage() for r in caplog.records] == [
        f"2 messages wait in {unnamed}, a spool from before spool files named their cluster; "
        "they are not delivered from here: to deliver them, run one process for their "
        f"cluster with Kafka:Spool:Path={unnamed}"
    ]
    assert unnamed.exists()


async def test_a_spool_takes_in_what_other_processes_left_for_its_cluster_only() -> None:
    async def left(instance: str, *servers: str, records: int) -> Spool:
        spool = Spool.of(settings_for(*servers, instance=instance))
        await spool.open()
        for n in range(records):
            await spool.append("t", b"k", f"{instance}-{n}".encode(), [], None)
        return spool

    cron = await left("cron", "kafka-a:9092", records=2)
    await cron.close()
    report = await left("report", "kafka-a:9092", records=1)
    await report.close()
    staging = await left("cron", "staging:9092", records=1)
    await staging.close()
    live = await left("live", "kafka-a:9092", records=1)  # still open: its process runs

    worker = Spool.of(settings_for("kafka-a:9092", instance="worker"))
    await worker.open()
    assert await worker.adopt_strays() == 3
    assert worker.count == 3
    values = sorted(r.value for r in await worker.oldest(10))  # type: ignore[type-var]
    assert values == [b"cron-0", b"cron-1", b"report-0"]
    assert not cron.path.exists() and not report.path.exists()
    assert staging.path.exists() and live.path.exists(), "another cluster's, and a live one"
    assert await worker.adopt_strays() == 0
    await worker.close()
    await live.close()
