"""Write the README's fault table from the fault suite's report.

    python scripts/fault_table.py [--report .local/faults/report.json] [--check]

The table sits between the ``fault-table`` markers in README.md. Each row is one
scenario of the run that wrote the report (``make test-faults`` or ``make
test``), with its figures as the scenario measured them; the scenarios
themselves assert what each row requires. ``--check`` only says whether the
README already shows this report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- fault-table:start -->", "<!-- fault-table:end -->"


def _figure(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, list):
        return "/".join(_figure(v) for v in value)
    return str(value).replace("|", "\\|")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | sent | handled | lost | dup | recover s | notes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        notes = "; ".join(f"{k.replace('_', ' ')} {_figure(v)}" for k, v in row["notes"].items())
        cells = [
            row["scenario"],
            _figure(row["sent"]),
            _figure(row["handled"]),
            _figure(row["lost"]),
            _figure(row["duplicated"]),
            _figure(row["recover_s"]),
            notes,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=ROOT / ".local/faults/report.json")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="fail if the README differs")
    args = parser.parse_args(argv)
    if not args.report.exists():
        print(f"no report at {args.report}: run make test-faults first", file=sys.stderr)
        return 2
    rows = json.loads(args.report.read_text())
    readme = args.readme.read_text()
    if START not in readme or END not in readme:
        print(f"{args.readme} has no {START} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{START}\n{table(rows)}\n{END}{tail}"
    if args.check:
        same = updated == readme
        print("README shows this report" if same else "README differs from this report")
        return 0 if same else 1
    args.readme.write_text(updated)
    print(f"{len(rows)} scenarios written to {args.readme.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
