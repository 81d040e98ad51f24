"""The fault suite's own services, and the table of figures it prints.

These scenarios stop, kill and restart Kafka, Redis and the SMTP sink, so they
run against the ``faults`` profile (scripts/faults.env), never the services
``make test`` shares. The suite starts that profile itself and stops it at
the end; before each scenario every service is (re)started, so one scenario's
failure cannot leave the next without a broker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import mailbox
import subprocess
from collections.abc import Iterator

import pytest

from dawning_streams import Settings

from ..conftest import ROOT, _profile
from ..fault_report import HEADER, Row, add_row

FAULTS_ENV = _profile("faults")
DATA_DIR = ROOT / FAULTS_ENV["DATA_DIR"]
MAILDIR = DATA_DIR / "smtp" / "maildir"
SERVICES = ROOT / "scripts" / "services.sh"


@pytest.fixture
def report() -> Iterator[list[Row]]:
    """Rows a scenario adds here are printed at the end and written to the JSON report."""
    rows: list[Row] = []
    yield rows
    for row in rows:
        print(HEADER, row.line(), sep="\n")
        add_row(row)


def _services(action: str) -> None:
    done = subprocess.run(
        [str(SERVICES), action, "faults"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"scripts/services.sh {action} faults:\n{done.stderr}"


async def services(action: str) -> None:
    """``scripts/services.sh <action> faults``, without blocking the event loop."""
    await asyncio.to_thread(_services, action)


@pytest.fixture(scope="session")
def fault_services() -> Iterator[None]:
    """The faults profile, started for the session and stopped after it."""
    _services("start")
    yield
    _services("stop")


@pytest.fixture(autouse=True)
def every_service_up(fault_services: None) -> None:
    """Each scenario starts with Kafka, Redis and SMTP running, whatever the last one did."""
    _services("start")


@pytest.fixture(scope="session")
def kafka_bootstrap(fault_services: None) -> str:
    return f"127.0.0.1:{FAULTS_ENV['KAFKA_PORT']}"


@pytest.fixture(scope="session")
def redis_url(fault_services: None) -> str:
    return f"redis://127.0.0.1:{FAULTS_ENV['REDIS_PORT']}/0"


@pytest.fixture(scope="session")
def smtp_port(fault_services: None) -> int:
    return int(FAULTS_ENV["SMTP_PORT"])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, with the producer allowed what this profile's broker takes."""
    producer = dataclasses.replace(
        settings.kafka.producer, max_request_bytes=int(FAULTS_ENV["KAFKA_MESSAGE_MAX_BYTES"])
    )
    return dataclasses.replace(
        settings, kafka=dataclasses.replace(settings.kafka, producer=producer)
    )


@pytest.fixture
def maildir(smtp_port: int) -> mailbox.Maildir:
    return mailbox.Maildir(MAILDIR, create=False)


__all__ = ["Row", "services"]
