"""The Kafka clients' log lines as the worker shows them: no services needed."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from aiokafka import errors

from dawning_streams.kafka.outages import quiet_client_logs
from dawning_streams.observability.watchdogs import log_thread_exceptions

COORDINATOR = "aiokafka.consumer.group_coordinator"


def test_a_coordinator_a_new_broker_cannot_name_yet_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_client_logs()
    log = logging.getLogger(COORDINATOR)
    with caplog.at_level(logging.DEBUG, logger=COORDINATOR):
        log.error(
            "Group Coordinator Request failed: %s", errors.GroupCoordinatorNotAvailableError()
        )
        log.error("Group Coordinator Request failed: %s", errors.KafkaConnectionError("down"))
    levels = [(r.levelname, type(r.args[0]).__name__) for r in caplog.records]  # type: ignore[index]
    assert levels == [
        ("INFO", "GroupCoordinatorNotAvailableError"),
        ("ERROR", "KafkaConnectionError"),
    ]


def test_a_producer_id_a_new_broker_cannot_hand_out_yet_is_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_client_logs()
    log = logging.getLogger("confluent_kafka.producer")  # librdkafka, as confluent-kafka logs
    with caplog.at_level(logging.DEBUG, logger="confluent_kafka.producer"):
        log.warning(
            "%s [%s] %s",
            "GETPID",
            "gw-1-sender#producer-1",
            "Failed to acquire idempotence PID from broker TxnCoordinator/1: "
            "Broker: Coordinator load in progress: retrying",
        )
        log.warning("%s [%s] %s", "FAIL", "gw-1-sender#producer-1", "Connect failed")
    assert [(r.levelname, r.args[0]) for r in caplog.records] == [  # type: ignore[index]
        ("INFO", "GETPID"),
        ("WARNING", "FAIL"),
    ]


def test_a_coordinator_lookup_retried_every_100_ms_is_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_client_logs()
    log = logging.getLogger(COORDINATOR)
    with caplog.at_level(logging.DEBUG, logger=COORDINATOR):
        log.info("Revoking previously assigned partitions")  # what came before
        for _ in range(15):  # a broker stopping: aiokafka asks again every 100 ms
            log.error(
                "Group Coordinator Request failed: %s", errors.GroupCoordinatorNotAvailableError()
            )
    assert [(r.levelname, r.getMessage()[:33]) for r in caplog.records] == [
        ("INFO", "Revoking previously assigned part"),
        ("INFO", "Group Coordinator Request failed:"),
    ]


def test_an_info_line_said_again_at_once_is_shown_once(caplog: pytest.LogCaptureFixture) -> None:
    quiet_client_logs()
    log = logging.getLogger(COORDINATOR)
    line = "OffsetCommit failed for group %s due to a coordinator error (%s), will retry"
    with caplog.at_level(logging.DEBUG, logger=COORDINATOR):
        for _ in range(3):  # one per commit waiting on the failed one
            log.info(line, "g", "NotCoordinatorForGroupError")
        log.info(line, "g", "CoordinatorLoadInProgressError")
        log.info("Joined group 'g' (generation 2)")
        log.info("Joined group 'g' (generation 3)")
    assert [r.getMessage() for r in caplog.records] == [
        line % ("g", "NotCoordinatorForGroupError"),
        line % ("g", "CoordinatorLoadInProgressError"),
        "Joined group 'g' (generation 2)",
        "Joined group 'g' (generation 3)",
    ]


def test_what_ends_a_thread_is_one_record_not_stderr_lines(
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored afterwards
    log_thread_exceptions()

    def cancelled() -> None:
        raise asyncio.CancelledError

    def broken() -> None:
        raise ValueError("broken")

    with caplog.at_level(logging.INFO, logger="dawning_streams.observability.watchdogs"):
        for target, name in ((cancelled, "consumer"), (broken, "exporter")):
            thread = threading.Thread(target=target, name=name)
            thread.start()
            thread.join()
    said = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert said == [
        ("INFO", "thread consumer was cancelled", False),
        ("ERROR", "thread exporter ended with an exception", True),
    ]
    assert capsys.readouterr().err == ""
