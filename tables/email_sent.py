"""Table ``email-sent``: the ``MessageId`` of each mail the SMTP server accepted.

The email handler's de-duplication table (``Dedupe(table="email-sent")``, see
:mod:`dawning_streams.handlers.dedupe`), kept so that a redelivered
``EmailMessage`` is not sent again; ``agents/email_queue.py`` says why it is a
table rather than a Redis key.
"""

from __future__ import annotations

from dawning_streams import Dedupe

__all__ = ["SENT_TTL_S", "dedupe"]

#: How long a sent mail's marker is kept: a redelivery later than this sends it again.
SENT_TTL_S = 7 * 24 * 3600


def dedupe(*, ttl_s: float = SENT_TTL_S) -> Dedupe:
    """The policy: ids kept ``ttl_s``, each written before the next mail is sent.

    The table is keyed by ``MessageId`` and co-partitioned with
    ``dawning.email-queue`` (a marker lives in the partition of the mail's
    record). Each value: ``{"p": partition, "at": epoch seconds when the SMTP
    server accepted the mail}``; markers older than ``ttl_s`` are purged.
    """
    return Dedupe(window_s=ttl_s, wait=True, table="email-sent")
