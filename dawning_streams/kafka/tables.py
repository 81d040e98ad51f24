"""Tables keyed exactly like their messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dawning_streams.application import App

__all__ = ["message_keyed_table"]


def message_keyed_table(app: App, name: str, *, help: str) -> Any:
    """A changelog-backed table whose keys are the messages' Kafka key bytes.

    Faust would serialise a ``str`` key as JSON (``"abc"`` with quotes), and
    its web routing would then hash different bytes than the producer did and
    send a request to the wrong worker; raw bytes hash the same everywhere.
    Use ``key.encode()`` to read and write.
    """
    return app.Table(
        name,
        default=None,
        partitions=app.dawning_settings.kafka.partitions,
        key_type=bytes,
        help=help,
    )
