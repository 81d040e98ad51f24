"""Fixtures: the real services `make test` starts, and per-test settings.

The suite never skips for a missing service: if Kafka, Redis, the SMTP sink,
PostgreSQL or MariaDB is not answering, every test that needs it fails with the
command to run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import mailbox
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from dawning_streams.core.settings import (
    KafkaSettings,
    RedisSettings,
    Settings,
    SmtpSettings,
    TopicNames,
    WebSettings,
)

ROOT = Path(__file__).resolve().parent.parent
# Spools default to $XDG_STATE_HOME; the suite's (its workers' too) stay in the tree.
os.environ["XDG_STATE_HOME"] = str(ROOT / ".local" / "state")


def _profile(name: str) -> dict[str, str]:
    lines = (ROOT / "scripts" / f"{name}.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


TEST_ENV = _profile("test")

# A test body that has not finished after this long is cancelled and fails
# with a TimeoutError at the line it was waiting on. pytest-timeout (thread
# method) stays as the backstop that ends the whole run, with every thread's
# stack, if something still hangs (a signal raised inside an asyncio callback
# is swallowed by the task it lands in, so the signal method cannot be trusted).
TEST_DEADLINE_S = 100.0
TEARDOWN_DEADLINE_S = 30.0
KAFKA_PORT = int(TEST_ENV["KAFKA_PORT"])
REDIS_PORT = int(TEST_ENV["REDIS_PORT"])
SMTP_PORT = int(TEST_ENV["SMTP_PORT"])
POSTGRES_PORT = int(TEST_ENV["POSTGRES_PORT"])
MARIADB_PORT = int(TEST_ENV["MARIADB_PORT"])
# The sink writes under the data directory of the checkout that started it;
# TEST_MAILDIR names it when the services run from another checkout.
MAILDIR = Path(os.environ.get("TEST_MAILDIR") or ROOT / TEST_ENV["DATA_DIR"] / "smtp" / "maildir")
BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"


def _require(port: int, name: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.fail(
            f"{name} is not answering on 127.0.0.1:{port}; "
            f"start it with `scripts/services.sh start test` (make test does)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The test broker's address, after checking it answers."""
    _require(KAFKA_PORT, "Kafka")
    return BOOTSTRAP


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis's URL, after checking it answers."""
    _require(REDIS_PORT, "Redis")
    return f"redis://127.0.0.1:{REDIS_PORT}/0"


@pytest.fixture(scope="session")
def smtp_port() -> int:
    """The SMTP capture server's port, after checking it answers."""
    _require(SMTP_PORT, "the SMTP sink")
    return SMTP_PORT


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The test PostgreSQL's URL without a database, after checking it answers."""
    _require(POSTGRES_PORT, "PostgreSQL")
    return f"postgresql://postgres@127.0.0.1:{POSTGRES_PORT}"


@pytest.fixture(scope="session")
def mariadb_server() -> str:
    """The test MariaDB's URL without a database, after checking it answers.

    Its user may create and drop any database whose name starts with ``dawning``.
    """
    _require(MARIADB_PORT, "MariaDB")
    user, password = TEST_ENV["MARIADB_USER"], TEST_ENV["MARIADB_PASSWORD"]
    return f"mysql://{user}:{password}@127.0.0.1:{MARIADB_PORT}"


@pytest.fixture
def maildir(smtp_port: int) -> mailbox.Maildir:
    """The capture server's mailbox."""
    return mailbox.Maildir(MAILDIR, create=False)


def unique_topics(prefix: str) -> TopicNames:
    """Topic names of the seed, under a prefix no other test uses."""
    return TopicNames(
        **{
            f.name: f"{prefix}.{getattr(TopicNames(), f.name)}"
            for f in dataclasses.fields(TopicNames)
        }
    )


@pytest.fixture
async def settings(kafka_bootstrap: str, redis_url: str, smtp_port: int) -> AsyncIterator[Settings]:
    """Settings for the test services, with topics and a group of this test's own.

    Every topic the test created (they all start with its prefix) is deleted
    afterwards, so the test broker does not grow from run to run.
    """
    run = f"t{uuid.uuid4().hex[:10]}"
    yield Settings(
        kafka=KafkaSettings(
            bootstrap_servers=(kafka_bootstrap,),
            consumer_group_id=f"{run}-group",
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
            topics=unique_topics(run),
        ),
        redis=RedisSettings(url=redis_url),
        smtp=SmtpSettings(port=smtp_port),
        web=WebSettings(port=free_port()),
        instance_name=f"{run}-instance",
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    async with asyncio.timeout(TEARDOWN_DEADLINE_S):
        await admin.start()
        try:
            mine = [topic for topic in await admin.list_topics() if topic.startswith(run)]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)
    leaked = [
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    ]
    for task in leaked:
        task.cancel()
    assert not leaked, f"test leaked tasks: {leaked}"


@pytest.fixture(autouse=True)
def tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run every test in an empty directory: no stray appsettings.json, and
    Faust's data directories land there."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def _with_deadline(
    test: Callable[..., Awaitable[None]], deadline_s: float
) -> Callable[..., Awaitable[None]]:
    @functools.wraps(test)
    async def bounded(*args: object, **kwargs: object) -> None:
        async with asyncio.timeout(deadline_s):
            await test(*args, **kwargs)

    return bounded


#: Tiers whose tests share services they stop and kill: each runs in one xdist worker.
TOGETHER = ("tests/faults", "tests/cluster")


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Under xdist (``make test``), the fault scenarios run one after another in
    one worker, and so do the cluster scenarios: they stop and kill the
    services they share. Every other test is a unit of its own. (xdist's
    ``loadgroup`` would say the same with a mark, but loses its groups under
    pytest 9.2: pytest-xdist issue #1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FaultsTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return next((tier for tier in TOGETHER if nodeid.startswith(tier + "/")), nodeid)

    return FaultsTogether(config, log)


def pytest_sessionstart(session: pytest.Session) -> None:
    from . import fault_report

    fault_report.start(session.config)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    from . import fault_report

    fault_report.summarize(terminalreporter, config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every async test a deadline inside its own event loop:
    ``TEST_DEADLINE_S``, or what its ``@pytest.mark.deadline(seconds)`` says."""
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            marker = item.get_closest_marker("deadline")
            deadline_s = float(marker.args[0]) if marker else TEST_DEADLINE_S
            item.obj = _with_deadline(item.obj, deadline_s)
