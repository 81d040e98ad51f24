"""The app's command-line commands: ``dlq-list`` and ``dlq-replay``."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from faust.cli import AppCommand, option

from . import dlq

if TYPE_CHECKING:
    from .application import App

__all__ = ["register_commands"]


def _when(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


_FILTERS = [
    option("--topic", "topics", multiple=True, help="Source or .dlq topic; default: all seven."),
    option("--key", default=None, help="Only messages with this key."),
    option(
        "--since",
        default=None,
        callback=_when,
        help="Dead-lettered at or after this ISO-8601 time.",
    ),
    option(
        "--until",
        default=None,
        callback=_when,
        help="Dead-lettered at or before this ISO-8601 time.",
    ),
    option("--exception", default=None, help="Exception class name, short or full."),
]


async def _chosen(app: App, topics: tuple[str, ...], **filters: Any) -> list[dlq.DeadLetter]:
    letters = await dlq.read_dead_letters(app, topics or None)
    return dlq.select(
        letters,
        key=filters["key"],
        since=filters["since"],
        until=filters["until"],
        exception=filters["exception"],
    )


def register_commands(app: App) -> None:
    """Add the dead-letter commands to ``app``'s command line."""

    @app.command(*_FILTERS, option("--json", "as_json", is_flag=True, help="One JSON per line."))
    async def dlq_list(
        self: AppCommand, topics: tuple[str, ...], as_json: bool, **filters: Any
    ) -> None:
        """List dead-lettered messages with where and why they failed."""
        letters = await _chosen(self.app, topics, **filters)  # type: ignore[arg-type]
        for letter in letters:
            summary = letter.summary()
            if as_json:
                self.say(json.dumps(summary))
            else:
                self.say("  ".join(f"{k}={v}" for k, v in summary.items()))
        self.say(f"{len(letters)} dead letter(s)", file=sys.stderr)

    @app.command(
        *_FILTERS,
        option("--all", "everything", is_flag=True, help="Replay every dead letter of the topics."),
    )
    async def dlq_replay(
        self: AppCommand, topics: tuple[str, ...], everything: bool, **filters: Any
    ) -> None:
        """Republish dead-lettered messages to their original topics."""
        if not everything and not any(filters.values()):
            self.say(
                "Error: say which dead letters to replay: --all, or "
                "--key/--since/--until/--exception",
                file=sys.stderr,
            )
            raise SystemExit(2)
        letters = await _chosen(self.app, topics, **filters)  # type: ignore[arg-type]
        async with self.app.bus:  # type: ignore[attr-defined]
            count = await dlq.replay(self.app, letters)  # type: ignore[arg-type]
        self.say(f"replayed {count} dead letter(s)", file=sys.stderr)
