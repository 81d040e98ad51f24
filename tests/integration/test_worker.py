"""`faust worker` starts the real worker, and the packaging shadows nothing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from dawning_streams import Settings

from ..kafka_helpers import partition_count
from ..workers import spawn

pytestmark = pytest.mark.kafka

FAUST = Path(sys.executable).with_name("faust")
ROOT = Path(__file__).resolve().parent.parent.parent


def test_agents_and_tables_ship_inside_the_package_only(tmp_path: Path) -> None:
    assert importlib.util.find_spec("dawning_streams.agents") is not None
    assert importlib.util.find_spec("dawning_streams.tables") is not None
    probe = "import importlib.util as u; print(u.find_spec('agents'), u.find_spec('tables'))"
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True
    ).stdout
    assert found.split() == ["None", "None"]
    # Build from a copy, so setuptools' build/ and egg-info stay out of the tree.
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    for name in ("dawning_streams", "agents", "tables"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
    )
    [wheel] = tmp_path.glob("dawning_streams-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"dawning_streams", wheel.name.rsplit("-", 3)[0] + ".dist-info"}
    assert "dawning_streams/agents/__init__.py" in zipfile.ZipFile(wheel).namelist()


@pytest.mark.parametrize(
    "command",
    [
        [str(FAUST), "-A", "dawning_streams.app", "worker", "-l", "info"],
        [sys.executable, "-m", "dawning_streams", "worker", "-l", "info"],
    ],
    ids=["faust -A", "python -m"],
)
async def test_the_worker_starts_from_the_command_line(
    command: list[str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    topics = settings.kafka.topics
    env = {
        **os.environ,
        "DAWNING_KAFKA__BOOTSTRAPSERVERS": settings.kafka.bootstrap_servers[0],
        "DAWNING_KAFKA__CONSUMERGROUPID": settings.kafka.consumer_group_id,
        "DAWNING_WEB__PORT": str(settings.web.port),
        **{
            f"DAWNING_KAFKA__TOPICS__{name}": getattr(topics, attr)
            for name, attr in [
                ("AUDITLOG", "audit_log"),
                ("ALERTNOTIFICATION", "alert_notification"),
                ("EMAILQUEUE", "email_queue"),
                ("USEREVENT", "user_event"),
                ("SYSTEMEVENT", "system_event"),
                ("CONFIGCHANGED", "config_changed"),
                ("CACHEINVALIDATION", "cache_invalidation"),
            ]
        },
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while b"Ready" not in log.read_bytes():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web.port}/", timeout=5) as r:
            assert r.status == 200
        bootstrap = settings.kafka.bootstrap_servers[0]
        assert [await partition_count(bootstrap, t) for t in topics.all()] == [3] * 7
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    assert code == 0, log.read_text()


#: Points in a worker's start-up, by the log line that marks each.
START_UP = [
    "[^---ProducerBuffer]: Starting...",  # the producer starting, topics not yet declared
    "Creating topic",
    "[^--Consumer]: Starting...",
    "Executing _on_partitions_assigned",
    "[^Worker]: Ready",
]


@pytest.mark.parametrize("point", START_UP)
async def test_sigterm_at_any_point_of_start_up_stops_the_worker_with_exit_code_0(
    point: str, settings: Settings, tmp_path: Path
) -> None:
    worker = spawn(settings, f"{settings.instance_name}-0", tmp_path)
    deadline = time.monotonic() + 60
    while point.encode() not in worker.log.read_bytes():
        assert worker.process.poll() is None, worker.tail()
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.001)
    code = worker.stop(timeout_s=60)
    assert code == 0, worker.tail(60)
    assert "Traceback" not in worker.log.read_text(), worker.tail(60)


async def test_sigint_stops_a_worker_whose_output_pipe_has_lost_its_reader(
    settings: Settings, tmp_path: Path
) -> None:
    # `... worker | tee worker.log`, then Ctrl-C: tee ends too, and the worker
    # is left writing to a pipe nobody reads.
    mine = settings.to_environ()
    worker = subprocess.Popen(
        [sys.executable, "-m", "dawning_streams", "worker", "-l", "info"],
        cwd=tmp_path,
        env={**os.environ, **mine},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert worker.stdout is not None
    seen: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while not seen or b"Ready" not in seen[-1]:
            assert time.monotonic() < deadline and worker.poll() is None, b"".join(seen[-40:])
            seen.append(worker.stdout.readline())
        worker.stdout.close()
        worker.send_signal(signal.SIGINT)
        code = worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        raise AssertionError("the worker ran on after SIGINT with its reader gone") from None
    assert code == 0
