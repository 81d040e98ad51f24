"""``dawning.email-queue``: deliver each EmailMessage over SMTP, once.

Failures are retried by the handler's timers (2, 4 and 8 s, as the seed's
``Math.Pow(2, RetryCount)``), with ``RetryCount`` raised on each retry, then to
``dawning.email-queue.dlq``.

A redelivery (after a crash between sending and committing, a spooled
message whose ack was lost, an upstream repeat) must not send a mail again.
The handler de-duplicates (``dedupe=email_sent.dedupe()``): the ``MessageId``
of each mail the SMTP server accepted is kept in the ``email-sent`` table
(``tables/email_sent.py``) for a week, and a message whose id is there is
skipped. The table, not Redis, because:

* **Redis is no dependency of mail.** With the marker in Redis, an outage
  longer than the retries (2 + 4 + 8 s) dead-lettered every mail. The table is
  in Kafka, which the handler cannot run without anyway; it reads the marker
  from memory and writes it to the changelog.
* **At most one repeat per crash.** The id's changelog write is awaited
  (``wait=True``) after SMTP accepted the mail and before the attempt ends, so at any moment at
  most one mail per running attempt (``concurrency``, 1 by default, and a
  retry that fires meanwhile) is accepted but not yet marked, and only that
  one can be sent twice by a crash. Its offset is committed only after the
  handler returned, and a commit waits for every table write sent before it.
* **Redeliveries meet their marker.** The marker is written to the changelog
  partition of the record's partition, and a redelivery comes on that same
  partition: whichever worker owns it after a restart or a rebalance has
  recovered the partition's markers from the changelog before it is given the
  records.

A Faust windowed table was the other way to expire markers; its windows
expire only in the memory of one worker (no tombstone, so a restart recovers
them again), and a lookup would ask every window of the week. The markers
are purged hourly instead, with tombstones (see
:class:`~dawning_streams.kafka.tables.MarkerTable`).
"""

from __future__ import annotations

from dawning_streams import App, EmailMessage, Handler, Retry
from dawning_streams.tables import email_sent

__all__ = ["EMAIL_RETRY", "install"]

EMAIL_RETRY = Retry(max_retries=3, backoff_s=2)


def install(
    app: App,
    *,
    retry: Retry = EMAIL_RETRY,
    concurrency: int = 1,
    sent_ttl_s: float = email_sent.SENT_TTL_S,
) -> Handler[EmailMessage]:
    """Declare the email handler on ``app``; ``concurrency`` mails are sent at a time,
    and each sent mail's id is kept ``sent_ttl_s`` seconds."""

    @app.handler(
        EmailMessage,
        retry=retry,
        name="send_email",
        concurrency=concurrency,
        dedupe=email_sent.dedupe(ttl_s=sent_ttl_s),
    )
    async def send_email(message: EmailMessage) -> None:
        """Send ``message`` (a redelivery of one sent before is skipped)."""
        await app.mailer.send(message)

    return send_email
