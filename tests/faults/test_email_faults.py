"""The email agent through kill -9 and a Redis outage, counted in the SMTP sink.

The real Dawning worker (``python -m dawning_streams worker``) sends to the
``faults`` profile's SMTP sink. Mails are told apart by their ``Message-ID``
(``<MessageId@sender's domain>``, the same on every send of one message), so
a mail sent twice is two files with one Message-ID. Each scenario waits for
the group's offsets to reach the end of the email topic before it counts:
then no redelivery can come any more.
"""

from __future__ import annotations

import asyncio
import signal
import time
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from dawning_streams import EmailMessage, Settings
from dawning_streams.core.names import dead_letter_topic

from ..handler_helpers import eventually
from ..kafka_helpers import read_to_end
from ..workers import Worker, spawn, workers
from .conftest import MAILDIR, Row, services
from .ledger import Ledger, behind, committed_to_end

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

#: Recipients the mails go to: enough keys to spread them over every partition.
RECIPIENTS = 50


class Sink:
    """This scenario's mails in the sink's Maildir: each file's headers read once."""

    def __init__(self, folder: Path, subject_prefix: str) -> None:
        self.folder = folder
        self.prefix = subject_prefix
        #: File name -> (MessageId, delivered at, epoch s), for this scenario's mails.
        self._mine: dict[str, tuple[str, float]] = {}
        self._seen: set[str] = set()

    def mails(self) -> list[tuple[str, float]]:
        """(MessageId, delivered at) of every copy delivered so far, earliest first."""
        parser = BytesHeaderParser()
        for sub in ("new", "cur"):
            for path in (self.folder / sub).iterdir():
                name = path.name.split(":")[0]  # cur/ names gain ":2,<flags>"
                if name in self._seen:
                    continue
                try:
                    with path.open("rb") as file:
                        headers = parser.parse(file)
                    delivered_at = path.stat().st_mtime
                except FileNotFoundError:  # moved from new/ to cur/ meanwhile
                    continue
                self._seen.add(name)
                if (headers["Subject"] or "").startswith(self.prefix):
                    message_id = headers["Message-ID"].strip("<>").partition("@")[0]
                    self._mine[name] = (message_id, delivered_at)
        return sorted(self._mine.values(), key=lambda mail: mail[1])

    def copies(self) -> dict[str, int]:
        """How many copies of each MessageId were delivered."""
        counts: dict[str, int] = {}
        for message_id, _ in self.mails():
            counts[message_id] = counts.get(message_id, 0) + 1
        return counts


def emails(prefix: str, count: int) -> list[EmailMessage]:
    return [
        EmailMessage(
            to=f"user{n % RECIPIENTS}@dawning.local", subject=f"{prefix} {n}", body="fault"
        )
        for n in range(count)
    ]


async def all_committed(settings: Settings) -> None:
    """Wait until the group has committed the email topic to its end."""
    bootstrap = settings.kafka.bootstrap_servers[0]
    group_id, topic = settings.kafka.consumer_group_id, settings.kafka.topics.email_queue
    try:
        await eventually(
            lambda: committed_to_end(bootstrap, group_id, topic),
            timeout_s=60,
            what="the email topic committed to its end",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; behind: {await behind(bootstrap, group_id, topic)}") from None


async def dead_letters(settings: Settings) -> int:
    topic = dead_letter_topic(settings.kafka.topics.email_queue)
    return len(await read_to_end(settings.kafka.bootstrap_servers[0], topic))


@pytest.mark.deadline(300)
@pytest.mark.timeout(360)
async def test_kill_9_of_the_email_worker_twice_repeats_at_most_one_mail_per_kill(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    prefix = f"{settings.instance_name} kill"
    mails = emails(prefix, 1_000)
    sink = Sink(MAILDIR, prefix)
    kills: list[tuple[float, int]] = []
    async with workers(settings, 1, tmp_path) as group, Ledger(bootstrap) as ledger:
        started_at = time.time()
        publishing = asyncio.create_task(
            ledger.publish(settings.kafka.topics.email_queue, mails, rate_per_s=500)
        )
        # Each kill lands while the worker is sending: after a share of the mails
        # arrived, counting from what the previous worker left.
        for n, share in enumerate((150, 500)):
            await eventually(
                lambda share=share: len(sink.mails()) >= share,
                timeout_s=90,
                what=f"{share} mails delivered before kill {n + 1}",
            )
            victim = group[-1]
            victim.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(victim.process.wait)
            kills.append((time.time(), len(sink.mails())))
            group.append(spawn(settings, f"{settings.instance_name}-r{n + 1}", tmp_path))
        await publishing
        await eventually(
            lambda: len(sink.copies()) >= len(ledger.acked),
            timeout_s=120,
            what="every acknowledged mail delivered",
        )
        delivered_at = time.time()
        await all_committed(settings)
        copies = sink.copies()
        delivered = sink.mails()
        dead = await dead_letters(settings)
        survivor: Worker = group[-1]
        alive = survivor.process.poll() is None

    lost = [m for m in ledger.acked if m not in copies]
    repeated = {m: n for m, n in copies.items() if n > 1}
    duplicates = sum(n - 1 for n in repeated.values())
    # From each kill to the first mail the next worker delivered.
    recovers = [
        min((at for _, at in delivered if at > killed_at), default=delivered_at) - killed_at
        for killed_at, _ in kills
    ]
    report.append(
        Row(
            "email: kill -9 twice",
            len(ledger.acked),
            len(copies),
            len(lost),
            duplicates,
            round(max(recovers), 1),
            {
                "delivered": len(delivered),
                "duplicates": duplicates,
                "kills": len(kills),
                "delivered_at_kills": [count for _, count in kills],
                "recover_s": [round(r, 1) for r in recovers],
                "dead_lettered": dead,
                "publish_failed": len(ledger.failed),
                "mails_per_s": round(len(delivered) / (delivered_at - started_at), 1),
            },
        )
    )
    assert alive, survivor.tail()
    assert not ledger.failed
    assert len(ledger.acked) == len(mails)
    assert lost == [], lost[:5]
    assert dead == 0
    # A kill can repeat only the one mail the SMTP server had accepted but whose
    # marker the broker did not have yet.
    assert duplicates <= len(kills), repeated
    assert all(n == 2 for n in repeated.values()), repeated


@pytest.mark.deadline(300)
@pytest.mark.timeout(360)
async def test_with_redis_down_for_60_s_mail_flows_and_none_is_dead_lettered(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    prefix = f"{settings.instance_name} redis"
    mails = emails(prefix, 650)
    sink = Sink(MAILDIR, prefix)
    outage_s = 60.0
    async with workers(settings, 1, tmp_path) as group, Ledger(bootstrap) as ledger:
        [worker] = group
        publishing = asyncio.create_task(
            ledger.publish(settings.kafka.topics.email_queue, mails, rate_per_s=10)
        )
        await eventually(lambda: len(sink.mails()) >= 20, what="mail flowing")
        await services("stop-redis")
        down_at = time.time()
        acked_at_down = len(ledger.acked)
        # While Redis is still down: what was published during the outage is sent.
        await eventually(
            lambda: len(ledger.acked) >= acked_at_down + 300, what="300 published, Redis down"
        )
        during = set(list(ledger.acked)[acked_at_down:])
        await eventually(
            lambda: during <= set(sink.copies()),
            timeout_s=max(5.0, down_at + outage_s - 5 - time.time()),
            what="the mails published while Redis is down, delivered while it is",
        )
        sent_while_down = len(sink.mails())
        await asyncio.sleep(max(0.0, down_at + outage_s - time.time()))  # the outage's length
        await services("start-redis")
        up_at = time.time()
        await publishing
        await eventually(
            lambda: len(sink.copies()) >= len(ledger.acked),
            timeout_s=60,
            what="every acknowledged mail delivered",
        )
        await all_committed(settings)
        copies = sink.copies()
        delivered = sink.mails()
        dead = await dead_letters(settings)
        alive = worker.process.poll() is None
        log = worker.log.read_text(errors="replace").splitlines()

    lost = [m for m in ledger.acked if m not in copies]
    duplicates = sum(n - 1 for n in copies.values() if n > 1)
    after_up = [at for _, at in delivered if at > up_at]
    report.append(
        Row(
            "email: Redis down 60 s",
            len(ledger.acked),
            len(copies),
            len(lost),
            duplicates,
            round(min(after_up) - up_at, 1) if after_up else None,
            {
                "down_s": round(up_at - down_at, 1),
                "delivered": len(delivered),
                "delivered_while_down": len([at for _, at in delivered if down_at < at < up_at]),
                "published_while_down": len(during),
                "dead_lettered": dead,
                "handler_failures": len([line for line in log if "send_email: attempt" in line]),
                "publish_failed": len(ledger.failed),
            },
        )
    )
    assert alive, worker.tail()
    assert not ledger.failed
    assert len(ledger.acked) == len(mails)
    assert sent_while_down > 20
    assert dead == 0
    assert lost == [], lost[:5]
    assert duplicates == 0
    # The email handler never failed for it: it does not touch Redis.
    assert not [line for line in log if "send_email: attempt" in line], log[-40:]
