"""The email agent: mail delivered to a real SMTP server, once, with retries.

"Not sent again" is proven by the mailbox: a second mail on the same key (so
the same partition, handled after the repeat) is waited for, and then the
repeat's copies are counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import mailbox
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword

from dawning_streams import EmailMessage, Retry, Settings, create_app, decode
from dawning_streams.agents import email_queue
from dawning_streams.core.names import Header, dead_letter_topic
from dawning_streams.core.settings import RedisSettings, Secret, SmtpSettings
from dawning_streams.kafka.tables import MarkerTable

from ..conftest import free_port
from ..handler_helpers import running
from ..kafka_helpers import read_to_end, read_topic

pytestmark = pytest.mark.kafka


def mail(**fields: object) -> EmailMessage:
    defaults: dict[str, object] = {
        "to": "alice@example.com",
        "subject": f"hello {uuid.uuid4()}",
        "body": "Welcome to Dawning.",
    }
    return EmailMessage(**{**defaults, **fields})


def delivered(maildir: mailbox.Maildir, subject: str) -> list[mailbox.MaildirMessage]:
    return [m for m in maildir if m["Subject"] == subject]


async def wait_for_mail(maildir: mailbox.Maildir, subject: str, timeout_s: float = 30) -> None:
    async with asyncio.timeout(timeout_s):
        while not delivered(maildir, subject):
            await asyncio.sleep(0.1)


async def test_an_email_is_delivered_with_cc_html_priority_and_a_hidden_bcc(
    settings: Settings,
    maildir: mailbox.Maildir,
) -> None:
    app = create_app(settings, web_enabled=False)
    email_queue.install(app)
    message = mail(
        cc=["bob@example.com"],
        bcc=["audit@example.com"],
        is_html=True,
        body="<p>Welcome</p>",
        priority=2,
    )
    async with running(app):
        await app.bus.publish(message)
        await wait_for_mail(maildir, message.subject)
    [got] = delivered(maildir, message.subject)
    assert got["From"] == settings.smtp.sender
    assert (got["To"], got["Cc"], got["Bcc"]) == ("alice@example.com", "bob@example.com", None)
    assert "audit@example.com" in got["X-RcptTo"]
    assert "audit@example.com" not in str(got).split("X-RcptTo")[0] + got.get_payload()
    assert got.get_content_type() == "text/html"
    assert "<p>Welcome</p>" in got.get_payload()
    assert (got["X-Priority"], got["Importance"]) == ("1", "high")
    assert got["X-Dawning-Message-Id"] == str(message.message_id)
    # Derived from MessageId alone, so a resend carries the same one.
    domain = settings.smtp.sender.rpartition("@")[2].rstrip(">")
    assert got["Message-ID"] == f"<{message.message_id}@{domain}>"


def sent_table(app: object) -> MarkerTable:
    """The email agent's ``email-sent`` table on ``app``."""
    table = app.tables["email-sent"]  # type: ignore[attr-defined]
    assert isinstance(table, MarkerTable)
    return table


async def changelog(settings: Settings, app: object) -> dict[bytes, list[tuple[int, bytes | None]]]:
    """Every record of the ``email-sent`` changelog: (partition, value) per key, in order."""
    topic = sent_table(app).changelog_topic.get_topic_name()
    records = await read_to_end(settings.kafka.bootstrap_servers[0], topic)
    written: dict[bytes, list[tuple[int, bytes | None]]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        written.setdefault(record.key, []).append((record.partition, record.value))
    return written


async def send_and_wait(app: object, maildir: mailbox.Maildir, *messages: EmailMessage) -> None:
    """Publish ``messages``, then a marker mail on the key of the last one, and wait
    for the marker: everything before it on that partition has been handled."""
    for message in messages:
        await app.bus.publish(message)  # type: ignore[attr-defined]
    marker = mail(subject=f"marker {uuid.uuid4()}", to=messages[-1].to)
    await app.bus.publish(marker)  # type: ignore[attr-defined]
    await wait_for_mail(maildir, marker.subject)


async def test_a_redelivered_email_is_not_sent_twice(
    settings: Settings,
    maildir: mailbox.Maildir,
) -> None:
    app = create_app(settings, web_enabled=False)
    email_queue.install(app)
    message = mail()
    async with running(app):
        receipt = await app.bus.publish(message)
        await wait_for_mail(maildir, message.subject)
        # The same MessageId again, as after a crash, and a marker on the same key.
        await send_and_wait(app, maildir, message)
        table = sent_table(app)
        assert table.marked(str(message.message_id))
    assert len(delivered(maildir, message.subject)) == 1
    # The marker is in the changelog partition of the mail's record.
    [(partition, value)] = (await changelog(settings, app))[str(message.message_id).encode()]
    assert receipt is not None
    assert partition == receipt.partition
    assert value is not None
    assert orjson.loads(value)["p"] == receipt.partition


async def test_an_email_redelivered_after_a_restart_is_not_sent_again(
    settings: Settings,
    maildir: mailbox.Maildir,
) -> None:
    """The next worker's table is recovered from the changelog, before its records."""
    message = mail()
    first = create_app(settings, web_enabled=False)
    email_queue.install(first)
    async with running(first):
        await send_and_wait(first, maildir, message)
    second = create_app(settings, web_enabled=False)
    email_queue.install(second)
    async with running(second):
        await send_and_wait(second, maildir, message)
        recovered = sent_table(second).marked(str(message.message_id))
    assert len(delivered(maildir, message.subject)) == 1
    assert recovered


async def test_email_needs_no_redis(settings: Settings, maildir: mailbox.Maildir) -> None:
    """With Redis unreachable the mail goes at the first attempt, and a repeat is skipped."""
    nowhere = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(dataclasses.replace(settings, redis=nowhere), web_enabled=False)
    email_queue.install(app, retry=Retry(max_retries=0))
    message = mail()
    async with running(app):
        await send_and_wait(app, maildir, message, message)
    assert len(delivered(maildir, message.subject)) == 1
    dlq = dead_letter_topic(settings.kafka.topics.email_queue)
    assert await read_to_end(settings.kafka.bootstrap_servers[0], dlq) == []


async def test_markers_older_than_their_ttl_are_purged_and_then_the_mail_goes_again(
    settings: Settings,
    maildir: mailbox.Maildir,
) -> None:
    app = create_app(settings, web_enabled=False)
    email_queue.install(app, sent_ttl_s=3600)
    message = mail()
    key = str(message.message_id)
    async with running(app):
        await send_and_wait(app, maildir, message)
        table = sent_table(app)
        # Purged as an hourly round would purge them an hour and a minute from now.
        assert await table.purge(now_s=time.time() + 60) == 0
        assert table.marked(key)
        purged = await table.purge(now_s=time.time() + 3660)
        assert not table.marked(key)
        await send_and_wait(app, maildir, message)
    # The mail's marker, and the first marker mail's if its write had landed:
    # that mail reaches the sink just before its marker is written.
    assert purged in (1, 2)
    assert len(delivered(maildir, message.subject)) == 2
    # A tombstone follows the purged marker on the changelog, and then the new marker.
    values = [value for _, value in (await changelog(settings, app))[key.encode()]]
    assert [value is None for value in values] == [False, True, False]


async def test_with_smtp_down_the_email_is_retried_counting_then_dead_lettered(
    settings: Settings,
) -> None:
    closed_port = settings.web.port  # nothing listens there in this test
    settings = dataclasses.replace(settings, smtp=SmtpSettings(port=closed_port, timeout_s=2))
    app = create_app(settings, web_enabled=False)
    email_queue.install(app, retry=Retry(max_retries=3, backoff_s=0.2))
    message = mail()
    async with running(app):
        await app.bus.publish(message)
        dlq = dead_letter_topic(settings.kafka.topics.email_queue)
        [letter] = await read_topic(settings.kafka.bootstrap_servers[0], dlq, 1, timeout_s=60)
    dead = decode(letter.value, EmailMessage)
    assert dead.message_id == message.message_id
    assert dead.retry_count == 3
    headers = dict(letter.headers)
    assert headers[Header.ATTEMPT] == b"4"
    assert headers[Header.EXCEPTION_TYPE] == b"dawning_streams.services.mail.MailError"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _authenticate(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"mailer",
        b"s3cret",
    )
    return AuthResult(success=ok)


@pytest.fixture(params=["starttls", "tls"])
def tls_server(
    request: pytest.FixtureRequest, certificate: tuple[Path, Path], tmp_path: Path
) -> Iterator[tuple[SmtpSettings, mailbox.Maildir]]:
    """A real aiosmtpd server that requires TLS (STARTTLS or implicit) and a login."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    box = tmp_path / "tls-maildir"
    implicit = request.param == "tls"
    port = free_port()
    controller = Controller(
        Mailbox(str(box)),
        hostname="127.0.0.1",
        port=port,
        ssl_context=context if implicit else None,
        tls_context=None if implicit else context,
        require_starttls=not implicit,
        auth_required=True,
        # aiosmtpd only counts STARTTLS as TLS; an implicit-TLS socket is one too.
        auth_require_tls=not implicit,
        authenticator=_authenticate,
    )
    controller.start()
    try:
        yield (
            SmtpSettings(
                port=port,
                tls_mode=request.param,
                user="mailer",
                password=Secret("s3cret"),
                ca_file=str(cert),
            ),
            mailbox.Maildir(box),
        )
    finally:
        controller.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_mail_goes_over_tls_with_a_login(
    settings: Settings,
    tls_server: tuple[SmtpSettings, mailbox.Maildir],
) -> None:
    smtp, box = tls_server
    app = create_app(dataclasses.replace(settings, smtp=smtp), web_enabled=False)
    message = mail()
    await app.mailer.send(message)
    [got] = [m for m in box if m["Subject"] == message.subject]
    assert got["To"] == "alice@example.com"
