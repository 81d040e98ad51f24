"""Table ``email-sent``: the ``MessageId`` of each mail the SMTP server accepted.

Kept so that a redelivered ``EmailMessage`` is not sent again; see
``agents/email_queue.py`` for why it is a table rather than a Redis key.
"""

from __future__ import annotations

from dawning_streams import App
from dawning_streams.kafka.tables import MarkerTable

__all__ = ["SENT_TTL_S", "create"]

#: How long a sent mail's marker is kept: a redelivery later than this sends it again.
SENT_TTL_S = 7 * 24 * 3600


def create(app: App, *, ttl_s: float = SENT_TTL_S) -> MarkerTable:
    """The table, keyed by ``MessageId`` (co-partitioned with ``dawning.email-queue``:
    a marker lives in the partition of the mail's record).

    Each value: ``{"p": partition, "at": epoch seconds when the SMTP server
    accepted the mail}``; markers older than ``ttl_s`` are purged hourly.
    """
    return MarkerTable.declare(
        app, "email-sent", ttl_s=ttl_s, help="MessageId of each mail the SMTP server accepted."
    )
