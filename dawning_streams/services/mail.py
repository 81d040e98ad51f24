"""Sending :class:`~dawning_streams.core.records.EmailMessage` over SMTP with aiosmtplib.

Plain, STARTTLS or implicit TLS (``Smtp:TlsMode``), with authentication when
``Smtp:User`` is set. Bcc recipients are envelope recipients only: they never
appear in a header. ``Priority`` maps to ``X-Priority`` and ``Importance``.

SMTP errors are translated at this boundary: a permanent refusal (a 5xx reply)
becomes :class:`~dawning_streams.core.retry.Reject`, so the message is dead-lettered
at once; anything else becomes :class:`MailError`, which handlers retry.
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage as MimeMessage
from email.utils import format_datetime, parseaddr

import aiosmtplib
from mode import Service

from dawning_streams.core.errors import DawningError
from dawning_streams.core.records import EmailMessage
from dawning_streams.core.retry import Reject
from dawning_streams.core.settings import SmtpSettings
from dawning_streams.kafka.outages import Dependency

__all__ = ["MailError", "Mailer", "compose"]

# EmailMessage.Priority as System.Net.Mail.MailPriority numbers it:
# 0 normal (the default), 1 low, 2 high.
_PRIORITY_HEADERS = {
    0: ("3", "normal"),
    1: ("5", "low"),
    2: ("1", "high"),
}


class MailError(DawningError):
    """A mail could not be handed over for a reason that may pass."""


def compose(message: EmailMessage, sender: str) -> MimeMessage:
    """The MIME message for ``message``; Bcc is left out on purpose."""
    mime = MimeMessage()
    mime["From"] = sender
    mime["To"] = message.to
    if message.cc:
        mime["Cc"] = ", ".join(message.cc)
    mime["Subject"] = message.subject
    assert message.timestamp is not None
    mime["Date"] = format_datetime(message.timestamp)
    mime["Message-ID"] = message_id_header(message, sender)
    mime["X-Dawning-Message-Id"] = str(message.message_id)
    x_priority, importance = _PRIORITY_HEADERS.get(message.priority, _PRIORITY_HEADERS[0])
    mime["X-Priority"] = x_priority
    mime["Importance"] = importance
    if message.is_html:
        mime.set_content(message.body, subtype="html")
    else:
        mime.set_content(message.body)
    return mime


def message_id_header(message: EmailMessage, sender: str) -> str:
    """``<MessageId@sender's domain>``: the same for every delivery of one message,
    so a receiving system that drops repeated Message-IDs drops a resend."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "dawning.invalid"
    return f"<{message.message_id}@{domain}>"


def recipients(message: EmailMessage) -> list[str]:
    """Every envelope recipient: To, Cc and Bcc, each once."""
    return list(dict.fromkeys([message.to, *(message.cc or ()), *(message.bcc or ())]))


class Mailer(Service):
    """Delivers mail through the configured SMTP server, one connection per mail."""

    def __init__(self, settings: SmtpSettings, **kwargs: object) -> None:
        self.settings = settings
        #: The SMTP server's reachability: an outage is logged once, not per mail.
        self.reachability = Dependency("SMTP", f"{settings.host}:{settings.port}")
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.settings.tls_mode == "none":
            return None
        return ssl.create_default_context(cafile=self.settings.ca_file)

    async def send(self, message: EmailMessage) -> None:
        """Deliver ``message``; raises Reject for a permanent refusal, MailError otherwise."""
        smtp = self.settings
        password = smtp.password.reveal() if smtp.password is not None else None
        try:
            await aiosmtplib.send(
                compose(message, smtp.sender),
                sender=smtp.sender,
                recipients=recipients(message),
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.user,
                password=password,
                use_tls=smtp.tls_mode == "tls",
                start_tls=smtp.tls_mode == "starttls",
                tls_context=self._tls_context(),
                timeout=smtp.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            self.reachability.up()
            raise Reject(f"every recipient refused: {exc.recipients}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500 and not isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                raise Reject(f"SMTP server refused the mail: {exc.code} {exc.message}") from exc
            raise MailError(f"SMTP {exc.code} {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.reachability.down(exc)
            raise MailError(f"could not reach SMTP {smtp.host}:{smtp.port}: {exc}") from exc
        self.reachability.up()
