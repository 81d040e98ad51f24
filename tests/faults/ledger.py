"""What the fault scenarios count with, independently of the library under test.

:class:`Ledger` publishes through the test's own aiokafka producer (acks=all,
idempotent) and records every publish the broker acknowledged: that record,
not anything a worker reports, is what "lost" is counted against (a scenario
that publishes through ``apply_async`` records the broker's receipt it
returns, with :meth:`Ledger.acknowledged`). :func:`handled`,
:func:`delayed_calls` and :func:`ordered_calls` read the journals the fault
app's workers append to.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from dawning_streams import MessageBase, encode


@dataclass(frozen=True)
class Ack:
    """Where the broker put one message."""

    partition: int
    offset: int


@dataclass
class Ledger:
    """Every acknowledged publish, by message id."""

    bootstrap: str
    acked: dict[str, Ack] = field(default_factory=dict)
    acked_at: dict[str, float] = field(default_factory=dict)
    #: When :meth:`publish` handed each message to the producer (epoch s).
    sent_at: dict[str, float] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    _producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> Ledger:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=4 * 1024 * 1024,
            # A send waits this long for the broker: longer than any outage a
            # scenario makes, however long the broker takes to stop and start.
            request_timeout_ms=180_000,
        )
        await self._producer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._producer is not None
        await self._producer.stop()

    async def publish_raw(
        self, topic: str, value: bytes, *, key: bytes | None = None, partition: int | None = None
    ) -> Ack:
        """Publish bytes as they are and wait for the ack."""
        assert self._producer is not None
        meta = await self._producer.send_and_wait(topic, value, key=key, partition=partition)
        return Ack(meta.partition, meta.offset)

    async def publish(
        self, topic: str, messages: Iterable[MessageBase], *, rate_per_s: float
    ) -> None:
        """Publish ``messages`` at about ``rate_per_s``, recording each ack as it comes."""
        assert self._producer is not None
        pending: list[asyncio.Future[object]] = []
        started = time.monotonic()
        for n, message in enumerate(messages):
            ahead_s = n / rate_per_s - (time.monotonic() - started)
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)
            key = message.partition_key()
            self.sent_at[str(message.message_id)] = time.time()
            future = await self._producer.send(
                topic, encode(message), key=key.encode() if key else None
            )
            future.add_done_callback(self._recorder(str(message.message_id)))
            pending.append(future)
        await asyncio.gather(*pending, return_exceptions=True)

    def acknowledged(self, message_id: str, meta: object) -> None:
        """Record a receipt published elsewhere (``apply_async``): a broker's
        ``RecordMetadata``, or None for a message that was not acknowledged."""
        if meta is None:
            self.failed.append(message_id)
            return
        self.acked[message_id] = Ack(meta.partition, meta.offset)  # type: ignore[attr-defined]
        self.acked_at[message_id] = time.time()

    def _recorder(self, message_id: str):  # type: ignore[no-untyped-def]
        def record(future: asyncio.Future[object]) -> None:
            if future.cancelled() or future.exception() is not None:
                self.failed.append(message_id)
            else:
                meta = future.result()
                self.acked[message_id] = Ack(meta.partition, meta.offset)  # type: ignore[attr-defined]
                self.acked_at[message_id] = time.time()

        return record


def handled(folders: Iterable[Path]) -> dict[str, list[tuple[int, float]]]:
    """Each handled message id: (pid, time) of every call, earliest first, from the
    workers' journals."""
    calls: dict[str, list[tuple[int, float]]] = {}
    for folder in folders:
        journal = folder / "handled.log"
        if not journal.exists():
            continue
        for line in journal.read_text().splitlines():
            message_id, pid, at = line.split()
            calls.setdefault(message_id, []).append((int(pid), float(at)))
    for made in calls.values():
        made.sort(key=lambda call: call[1])
    return calls


@dataclass(frozen=True)
class Call:
    """One journal line of a timer handler: who handled which message, when."""

    message_id: str
    pid: int
    at: float
    #: ``record_delayed``: when the publisher wanted it run (epoch s).
    due: float = 0.0
    #: ``record_ordered``: the message's key, its sequence number, and the attempt.
    key: str = ""
    seq: int = -1
    attempt: int = 0


def delayed_calls(folders: Iterable[Path]) -> list[Call]:
    """Every call ``record_delayed`` journaled, earliest first."""
    calls = []
    for folder in folders:
        journal = folder / "delayed.log"
        if journal.exists():
            for line in journal.read_text().splitlines():
                message_id, pid, at, due = line.split()
                calls.append(Call(message_id, int(pid), float(at), due=float(due)))
    return sorted(calls, key=lambda call: call.at)


def ordered_calls(folders: Iterable[Path]) -> list[Call]:
    """Every call ``record_ordered`` journaled, earliest first."""
    calls = []
    for folder in folders:
        journal = folder / "ordered.log"
        if journal.exists():
            for line in journal.read_text().splitlines():
                message_id, pid, at, key, seq, attempt = line.split()
                calls.append(
                    Call(
                        message_id, int(pid), float(at), key=key, seq=int(seq), attempt=int(attempt)
                    )
                )
    return sorted(calls, key=lambda call: call.at)


def kind_calls(folders: Iterable[Path]) -> dict[str, list[Call]]:
    """Every call the kinds' handlers journaled, by handler, earliest first."""
    calls: dict[str, list[Call]] = {}
    for folder in folders:
        journal = folder / "kinds.log"
        if journal.exists():
            for line in journal.read_text().splitlines():
                handler, message_id, pid, at, key, seq, attempt = line.split()
                calls.setdefault(handler, []).append(
                    Call(
                        message_id, int(pid), float(at), key=key, seq=int(seq), attempt=int(attempt)
                    )
                )
    for made in calls.values():
        made.sort(key=lambda call: call.at)
    return calls


def by_message(calls: Iterable[Call]) -> dict[str, list[tuple[int, float]]]:
    """Calls as :func:`handled` gives them: (pid, time) per message id, earliest first."""
    made: dict[str, list[tuple[int, float]]] = {}
    for call in sorted(calls, key=lambda call: call.at):
        made.setdefault(call.message_id, []).append((call.pid, call.at))
    return made


def order_violations(calls: Iterable[Call]) -> list[str]:
    """Each message first handled after a higher sequence number of its key.

    Only first handlings count: a repeat of a message already handled is a
    duplicate, not a violation.
    """
    seen: set[str] = set()
    highest: dict[str, Call] = {}
    violations = []
    for call in sorted(calls, key=lambda call: call.at):
        if call.message_id in seen:
            continue
        seen.add(call.message_id)
        top = highest.get(call.key)
        if top is not None and call.seq < top.seq:
            violations.append(
                f"key {call.key}: seq {call.seq} (pid {call.pid}, attempt {call.attempt}, "
                f"at {call.at:.6f}) after seq {top.seq} (pid {top.pid}, attempt "
                f"{top.attempt}, at {top.at:.6f})"
            )
        elif top is None or call.seq > top.seq:
            highest[call.key] = call
    return violations


def lost_and_duplicated(
    ledger: Ledger, calls: dict[str, list[tuple[int, float]]]
) -> tuple[int, int]:
    """Acknowledged ids never handled; extra calls for ids handled more than once."""
    lost = sum(1 for message_id in ledger.acked if message_id not in calls)
    counts = Counter({message_id: len(c) for message_id, c in calls.items()})
    return lost, sum(n - 1 for n in counts.values() if n > 1)


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset of each partition of ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if isinstance(tp, TopicPartition) and tp.topic == topic
    }


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of each partition of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [TopicPartition(topic, p) for p in cluster.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions) if partitions else {}
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def committed_to_end(bootstrap: str, group: str, *topics: str) -> bool:
    """Whether ``group`` has committed every partition of ``topics`` to its end:
    then nothing of them can be handled again (offsets are committed after
    processing), so the journals are final. Poll it with ``eventually``."""
    return not await behind(bootstrap, group, *topics)


async def behind(bootstrap: str, group: str, *topics: str) -> dict[str, str]:
    """``topic/partition`` -> ``committed < end`` for each partition not committed to its end."""
    lagging = {}
    for topic in topics:
        ends = await end_offsets(bootstrap, topic)
        if not ends:
            lagging[topic] = "no partitions"
        committed = await committed_offsets(bootstrap, group, topic)
        for p, end in ends.items():
            if committed.get(p, 0) < end:
                lagging[f"{topic}/{p}"] = f"{committed.get(p)} < {end}"
    return lagging


def write_duplicates(path: Path, ledger: Ledger, calls: dict[str, list[tuple[int, float]]]) -> None:
    """Every repeated message with its partition, offset and calls, to look into afterwards."""
    lines = [
        f"{ledger.acked[m].partition} {ledger.acked[m].offset} {m} "
        + " ".join(f"{pid}@{at:.3f}" for pid, at in c)
        for m, c in calls.items()
        if len(c) > 1 and m in ledger.acked
    ]
    path.write_text("\n".join(sorted(lines, key=lambda line: tuple(map(int, line.split()[:2])))))


def log_times(log: Path, marker: str, *, after: float = 0.0) -> list[float]:
    """Epoch times of the worker log lines containing ``marker``, later than ``after``."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        if marker in line and line.startswith("[") and len(line) > 24:
            stamp = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
            at = time.mktime(stamp.timetuple()) + stamp.microsecond / 1e6
            if at > after:
                times.append(at)
    return times
