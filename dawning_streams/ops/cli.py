"""The app's command-line commands: ``dlq-list``, ``dlq-replay``, ``timers`` and
``held-release``; and the streams every command (the worker too) writes to."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import click
from faust.cli import AppCommand, option

from dawning_streams.core.errors import DawningError, KafkaUnavailable
from dawning_streams.core.names import Header
from dawning_streams.handlers.timers import pending_timers
from dawning_streams.ops import dlq

if TYPE_CHECKING:
    from dawning_streams.ops.host import OpsHost

__all__ = ["keep_going_without_a_reader", "register_commands"]


class _ReaderProof:
    """A text stream that drops what it cannot write once its reader is gone.

    ``faust worker ... | tee worker.log``: Ctrl-C ends ``tee`` as well, and the
    worker's SIGINT handler (mode's) writes a line to stderr before it starts
    the stop. The write raised BrokenPipeError, the stop never started, and the
    worker ran on, ignoring every further SIGINT.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self.gone = True
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self.gone = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def keep_going_without_a_reader() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` drop output once nobody reads it,
    rather than raise (once per process, before a command's worker is made)."""
    if not isinstance(sys.stdout, _ReaderProof):
        sys.stdout = _ReaderProof(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, _ReaderProof):
        sys.stderr = _ReaderProof(sys.stderr)  # type: ignore[assignment]


def _when(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


_FILTERS = [
    option(
        "--topic",
        "topics",
        multiple=True,
        help="Source or .dlq topic; default: every handler's, and the seven message topics'.",
    ),
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


@contextmanager
def _one_error_line() -> Iterator[None]:
    """aiokafka's own ERROR for a broker it cannot reach stays unsaid: the
    command's one ``Error:`` line says it, with what it was doing."""
    client = logging.getLogger("aiokafka")
    level = client.level
    client.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client.setLevel(level)


async def _chosen(app: OpsHost, topics: tuple[str, ...], **filters: Any) -> list[dlq.DeadLetter]:
    since, until = filters["since"], filters["until"]
    if since is not None and until is not None and since > until:
        # As the web views answer 400: an empty window is a mistake, not "none".
        print(
            f"Error: --since {since.isoformat()} is after --until {until.isoformat()}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    try:
        with _one_error_line():
            letters = await dlq.read_dead_letters(app, topics or None)
    except DawningError as exc:
        # 1: Kafka did not answer, as for every command; 2: what was asked is wrong.
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(1 if isinstance(exc, KafkaUnavailable) else 2) from None
    return dlq.select(
        letters,
        key=filters["key"],
        since=filters["since"],
        until=filters["until"],
        exception=filters["exception"],
    )


def _iso(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


def _modules(command: AppCommand) -> str:
    """``Worker:Modules`` of this process, as an error tells it (the handlers it knows)."""
    return ",".join(command.app.dawning_settings.worker.modules)  # type: ignore[attr-defined]


def _handlers(command: AppCommand, chosen: tuple[str, ...]) -> list[str]:
    """The handlers named by ``--handler`` (default: all); an unknown one exits with 2."""
    known = command.app.handlers  # type: ignore[attr-defined]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        modules = _modules(command)
        command.say(
            f"Error: no handler named {', '.join(unknown)}; this app, with "
            f"Worker:Modules={modules}, has {', '.join(sorted(known))} (set "
            "DAWNING_WORKER__MODULES as the workers have it)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return list(chosen) or sorted(known)


async def _pending(command: AppCommand, names: list[str]) -> dict[str, Any]:
    """The timers report of ``names``; Kafka not answering exits with 1, in one line."""
    try:
        with _one_error_line():
            return await pending_timers(command.app, names)  # type: ignore[arg-type]
    except KafkaUnavailable as exc:
        command.say(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def register_commands(app: OpsHost) -> None:
    """Add the dead-letter and timer commands to ``app``'s command line."""

    @app.command(
        option("--handler", "handlers", multiple=True, help="Only this handler; default: all."),
        option("--json", "as_json", is_flag=True, help="The whole report as JSON."),
    )
    async def timers(self: AppCommand, handlers: tuple[str, ...], as_json: bool) -> None:
        """Pending timers per handler, the next due time, and the keys held by a retry."""
        names = _handlers(self, handlers)
        report = await _pending(self, names)
        if as_json:
            self.say(json.dumps(report, indent=2))
            return
        for name in names:
            entry = report[name]
            self.say(
                f"{name}: {entry['pending']} pending, next due {_iso(entry['next_due_ms'])}, "
                f"{len(entry['held'])} held key(s)"
            )
            for key, held in sorted(entry["held"].items()):
                self.say(
                    f"  held {key}: waits on {held['holder']} since {_iso(held['since_ms'])}, "
                    f"{held['parked']} parked, partition {held['p']}"
                )
            for key, why in sorted(entry["unreadable"].items()):
                self.say(f"  unreadable entry {key}: {why} (skipped by the worker)")

    @app.command(
        option("--handler", required=True, help="The ordered handler."),
        option("--key", required=True, help="The held key."),
    )
    async def held_release(self: AppCommand, handler: str, key: str) -> None:
        """Dead-letter the message a held key waits on; what is parked behind it then runs."""
        (name,) = _handlers(self, (handler,))
        if not self.app.handlers[name].options.ordered:  # type: ignore[attr-defined]
            self.say(
                f"Error: {name} is not an ordered handler (ordered=True): it holds no keys",
                file=sys.stderr,
            )
            raise SystemExit(2)
        report = await _pending(self, [name])
        held = report[name]["held"].get(key)
        if held is None:
            self.say(f"Error: {name} holds no key {key!r}", file=sys.stderr)
            raise SystemExit(1)
        target = self.app.handlers[name]  # type: ignore[attr-defined]
        async with self.app.bus:  # type: ignore[attr-defined]
            await self.app.bus.forward(  # type: ignore[attr-defined]
                target.timers_topic,
                key.encode(),
                None,
                partition=held["p"],
                headers=[(Header.RELEASE, key.encode())],
            )
        self.say(
            f"asked the owner of partition {held['p']} to dead-letter {held['holder']} and "
            f"release {key} ({held['parked']} parked message(s) then run)",
            file=sys.stderr,
        )

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
        searched = ""
        if not topics:
            # A handler of a module this process did not import has its
            # dead letters elsewhere: say whose were read.
            modules = _modules(self)
            searched = (
                f" in the dead-letter topics of the seven message types and of the handlers "
                f"of Worker:Modules={modules} (name a topic to read another)"
            )
        self.say(f"{len(letters)} dead letter(s){searched}", file=sys.stderr)

    @app.command(
        *_FILTERS,
        option("--all", "everything", is_flag=True, help="Replay every dead letter of the topics."),
    )
    async def dlq_replay(
        self: AppCommand, topics: tuple[str, ...], everything: bool, **filters: Any
    ) -> None:
        """Republish dead-lettered messages to their original topics."""
        if everything == any(filters.values()):
            self.say(
                "Error: say which dead letters to replay: --all, or "
                "--key/--since/--until/--exception"
                + (", not both (--all replays every one)" if everything else ""),
                file=sys.stderr,
            )
            raise SystemExit(2)
        letters = await _chosen(self.app, topics, **filters)  # type: ignore[arg-type]
        async with self.app.bus:  # type: ignore[attr-defined]
            count = await dlq.replay(self.app, letters)  # type: ignore[arg-type]
        self.say(f"replayed {count} dead letter(s)", file=sys.stderr)
        # A replay runs only in the handler that failed it: one renamed or gone
        # since runs none of them.
        declared = self.app.handlers  # type: ignore[attr-defined]
        failed_in = {letter.header(Header.HANDLER) for letter in letters}
        unknown = sorted(str(h) for h in failed_in - {None} - set(declared))
        if unknown:
            modules = _modules(self)
            self.say(
                f"warning: they are for handler(s) {', '.join(unknown)}, which "
                f"Worker:Modules={modules} does not declare: only a handler of that name "
                "runs them (renamed? declare it again, or set Worker:Modules as the workers do)",
                file=sys.stderr,
            )
