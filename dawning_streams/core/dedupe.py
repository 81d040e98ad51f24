"""How a handler skips a message it has already handled: by ``MessageId``, over a window.

Delivery is at least once: a crash before a commit, a rebalance, a spooled
message whose acknowledgement was lost or an upstream repeat hands a handler
a message again. With ``@app.handler(..., dedupe=Dedupe(...))`` (or
``dedupe=True`` for the defaults) the framework keeps the ``MessageId`` of
every message the handler finished in a changelog-backed table, and a
message whose id it finds there is skipped without calling the function
(:mod:`dawning_streams.handlers.dedupe`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dawning_streams.core.names import valid_name

__all__ = ["Dedupe"]


@dataclass(frozen=True, slots=True)
class Dedupe:
    """Skip a message whose ``MessageId`` this handler finished in the last ``window_s``.

    ``wait``: the handler's attempt ends only once the broker has the id. For
    effects outside Kafka (a mail sent, a webhook called), so that a crash
    repeats at most the one message in hand. Without it the id is written as
    a table write is, and the offset commit waits for it; a crash then repeats
    what was finished in the producer's last linger (a few milliseconds).

    ``table``: the table's name; default ``<handler name>-seen``.
    """

    window_s: float = 24 * 3600.0
    wait: bool = False
    table: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.window_s, bool) or not (
            isinstance(self.window_s, int | float) and self.window_s > 0
        ):
            raise ValueError(f"Dedupe window_s must be a positive number, got {self.window_s!r}")
        if not isinstance(self.wait, bool):
            raise ValueError(f"Dedupe wait must be True or False, got {self.wait!r}")
        if self.table is not None and not (isinstance(self.table, str) and valid_name(self.table)):
            raise ValueError(
                f"Dedupe table must be a name of letters, digits, _ and -, got {self.table!r}"
            )

    def table_name(self, handler: str) -> str:
        """The name of the table that keeps the ids of ``handler``."""
        return self.table or f"{handler}-seen"
