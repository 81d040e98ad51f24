"""The fault scenarios' figures: a row per scenario, printed at the end of the run
and written to ``.local/faults/report.json`` (``make fault-table`` reads it).

A scenario may run in an xdist worker process (``make test`` runs two), while
the summary is printed by the main one; the rows go through a file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pytest

from .conftest import ROOT, _profile

DATA_DIR = ROOT / _profile("faults")["DATA_DIR"]
REPORT = DATA_DIR / "report.json"
#: Rows of the run under way, one JSON object a line.
ROWS = DATA_DIR / "report.rows.jsonl"

HEADER = (
    f"{'scenario':<28} {'sent':>7} {'handled':>8} {'lost':>5} {'dup':>6} {'recover_s':>10}  notes"
)


@dataclass
class Row:
    """One scenario's figures."""

    scenario: str
    sent: int
    handled: int
    lost: int
    duplicated: int
    recover_s: float | None
    notes: dict[str, object] = field(default_factory=dict)

    def line(self) -> str:
        recover = f"{self.recover_s:.1f}" if self.recover_s is not None else "-"
        notes = ", ".join(f"{k}={v}" for k, v in self.notes.items())
        return (
            f"{self.scenario:<28} {self.sent:>7} {self.handled:>8} {self.lost:>5} "
            f"{self.duplicated:>6} {recover:>10}  {notes}"
        )


def add_row(row: Row) -> None:
    """Keep ``row`` for the summary."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with ROWS.open("a") as out:
        out.write(json.dumps(asdict(row)) + "\n")


def start(config: pytest.Config) -> None:
    """A new run (in the main process): no rows yet."""
    if not hasattr(config, "workerinput"):
        ROWS.unlink(missing_ok=True)


def summarize(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Print the run's rows and write them to the report (in the main process)."""
    if hasattr(config, "workerinput") or not ROWS.exists():
        return
    rows = [Row(**json.loads(line)) for line in ROWS.read_text().splitlines() if line]
    if not rows:
        return
    terminalreporter.section("fault scenarios")
    terminalreporter.write_line(HEADER)
    for row in rows:
        terminalreporter.write_line(row.line())
    REPORT.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    terminalreporter.write_line(f"written to {REPORT.relative_to(ROOT)}")
