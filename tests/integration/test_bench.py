"""`make bench` at its smoke size, against the test services: every row ran and saw
every message. The figures themselves decide nothing here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import MAILDIR, ROOT

pytestmark = pytest.mark.kafka

SMALL = {"publish": 300, "consume": 300, "audit": 300, "email": 20}


def test_the_smoke_benchmark_measures_every_pair_and_writes_its_result(
    tmp_path: Path,
    kafka_bootstrap: str,
    redis_url: str,
    smtp_port: int,
    postgres_server: str,
    mariadb_server: str,
) -> None:
    out = tmp_path / "result.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--profile=test",
            "--size=small",
            f"--maildir={MAILDIR}",
            f"--out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())

    rows: dict[str, list[dict[str, object]]] = {}
    for row in result["rows"]:
        rows.setdefault(row["name"], []).append(row)
        assert row["seconds"] > 0 and row["per_second"] > 0, row
    assert set(rows) == {
        "publish.raw_aiokafka",
        "publish.librdkafka",
        "publish.librdkafka_x64",
        "publish.bus_publish_many",
        "publish.raw_send_and_wait_x64",
        "publish.bus_publish_x64",
        "consume.raw_aiokafka",
        "consume.raw_aiokafka_json_only",
        "consume.librdkafka",
        "consume.handler",
        "e2e.publish_to_handled",
        "audit.sqlite",
        "audit.postgresql",
        "audit.mariadb",
        "email.smtp_concurrency_1",
        "email.smtp_concurrency_8",
        "timers.lateness",
        "timers.capacity",
        "timers.schedule_fire_delete",
        "sender.first_receipt",
        "sender.raw_aiokafka_first_receipt",
    }
    for name, measured in rows.items():
        part = name.split(".")[0]
        for row in measured:
            if part in ("publish", "audit", "email"):
                assert row["messages"] == SMALL[part], row
            if part == "consume":
                assert row["messages"] == row["committed"] == SMALL["consume"], row
            if name == "timers.lateness":
                assert row["messages"] == 200 and row["source_load_sent"] > 0, row
                assert row["min_ms"] >= 0, row  # none fired before it was due
                assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"], row  # type: ignore[operator]
            if name == "timers.capacity":
                assert row["messages"] == 2_000 and row["rss_mb_per_10k_timers"] is not None, row
            if part == "sender":  # three fresh processes, each sent one record
                assert len(measured) == 3 and row["messages"] == 1 and row["rss_mb"] > 0, row
            if part == "e2e":
                assert row["messages"] == row["sent"] > 0, row
                # At 20% of the maximum this process measured first.
                assert row["max_rate"] > 0, row
                assert abs(row["target_rate"] - max(1.0, 0.2 * row["max_rate"])) < 1, row
                assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"], row  # type: ignore[operator]

    # As the bus's live librdkafka producer has them.
    assert result["producer"] == {
        "client": "librdkafka",
        "acks": "all",
        "enable.idempotence": True,
        "max.in.flight.requests.per.connection": 1,
        "linger.ms": 5,
        "batch.size": 16384,
        "compression.type": "snappy",
        "partitioner": "consistent_random",
    }
    assert set(result["ratios"]) == {
        "publish_many",
        "publish",
        "handler_consume",
        "publish_many_vs_librdkafka",
        "publish_vs_librdkafka",
        "handler_consume_vs_librdkafka",
        "e2e_p99_ms",
        "timer_lateness_p99_ms",
        "sender_first_receipt_ms",
        "sender_rss_mb",
    }
    for pair in (
        "publish_many",
        "publish",
        "handler_consume",
        "publish_many_vs_librdkafka",
        "publish_vs_librdkafka",
        "handler_consume_vs_librdkafka",
    ):
        figures = result["ratios"][pair]
        assert figures["ratio"] > 0 and figures["cpu_ratio"] > 0, figures
        assert isinstance(figures["cpu_us_added"], float), figures
    assert "handler_consume" in run.stdout and "rate ratio" in run.stdout
