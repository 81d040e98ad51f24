"""``dawning.email-queue``: deliver each EmailMessage over SMTP, once.

Failures are retried by the handler's timers (2, 4 and 8 s, as the seed's
``Math.Pow(2, RetryCount)``), with ``RetryCount`` raised on each retry, then to
``dawning.email-queue.dlq``. A sent message's id is recorded in Redis for a
week, so a redelivery after a crash between sending and committing is skipped
rather than sent twice.
"""

from __future__ import annotations

import logging

from dawning_streams import App, EmailMessage, Handler, Retry
from dawning_streams.core.names import email_sent_key

__all__ = ["EMAIL_RETRY", "SENT_MARKER_TTL_S", "install"]

logger = logging.getLogger(__name__)

EMAIL_RETRY = Retry(max_retries=3, backoff_s=2)
SENT_MARKER_TTL_S = 7 * 24 * 3600


def install(app: App, *, retry: Retry = EMAIL_RETRY, concurrency: int = 1) -> Handler[EmailMessage]:
    """Declare the email handler on ``app``; ``concurrency`` mails are sent at a time."""

    @app.handler(EmailMessage, retry=retry, name="send_email", concurrency=concurrency)
    async def send_email(message: EmailMessage) -> None:
        """Send ``message`` unless a previous delivery already did."""
        redis = app.redis.client
        marker = email_sent_key(message.message_id)
        if await redis.exists(marker):
            logger.info("email %s was sent before; skipping the redelivery", message.message_id)
            return
        await app.mailer.send(message)
        await redis.set(marker, message.to, ex=SENT_MARKER_TTL_S)

    return send_email
