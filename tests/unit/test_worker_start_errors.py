"""A worker that cannot start says why in one line, with exit code 2, both ways
the README starts it (no broker needed: it stops before connecting)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

FAUST = Path(sys.executable).with_name("faust")
COMMANDS = {
    "python -m": [sys.executable, "-m", "dawning_streams", "worker"],
    "faust -A": [str(FAUST), "-A", "dawning_streams.app", "worker"],
}


def start(command: str, folder: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        COMMANDS[command],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(folder), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("env", "said"),
    [
        (
            {"DAWNING_KAFKA__PARTITIONS": "abc"},
            "Error: Kafka:Partitions='abc' (from DAWNING_KAFKA__PARTITIONS): must be an integer",
        ),
        (
            {"DAWNING_WORKER__MODULES": "billing.tasks"},
            "Error: Worker:Modules='billing.tasks': cannot be imported: "
            "ModuleNotFoundError: No module named 'billing'",
        ),
    ],
    ids=["bad setting", "missing module"],
)
def test_a_bad_setting_or_a_missing_module_stops_the_worker_in_one_line(
    command: str, env: dict[str, str], said: str, tmp_path: Path
) -> None:
    run = start(command, tmp_path, **env)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == said, run.stderr


def test_an_error_inside_a_module_comes_with_its_traceback_then_the_line(tmp_path: Path) -> None:
    (tmp_path / "billing.py").write_text("import os\n\nvalue = 1 / 0\n")
    run = start("python -m", tmp_path, DAWNING_WORKER__MODULES="billing")
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines[-1] == (
        "Error: Worker:Modules='billing': cannot be imported: ZeroDivisionError: division by zero"
    ), run.stderr
    assert 'billing.py", line 3, in <module>' in run.stderr, run.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_a_web_port_in_use_stops_the_worker_in_one_line_naming_the_setting(
    command: str, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = start(command, tmp_path, DAWNING_WEB__PORT=str(port))
    assert run.returncode == 2, run.stderr
    errors = [line.rstrip() for line in run.stderr.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, run.stderr
    assert errors[0].endswith(
        f"Web:Port={port}: 127.0.0.1:{port} is already in use (another worker on this "
        "machine?); give each worker its own port (DAWNING_WEB__PORT)"
    ), run.stderr
    assert "Traceback" not in run.stderr, run.stderr


def test_a_program_importing_the_app_gets_the_error_to_handle_not_an_exit(
    tmp_path: Path,
) -> None:
    # A web app importing a tasks module (which imports dawning_streams.app).
    script = (
        "from dawning_streams import SettingsError\n"
        "try:\n"
        "    import dawning_streams.app\n"
        "except SettingsError as exc:\n"
        "    print('handled:', exc)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "DAWNING_KAFKA__PARTITIONS": "abc"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (
        "handled: Kafka:Partitions='abc' (from DAWNING_KAFKA__PARTITIONS): must be an integer"
    )
