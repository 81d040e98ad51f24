"""What the fault scenarios count with, independently of the library under test.

:class:`Ledger` publishes through the test's own aiokafka producer (acks=all,
idempotent) and records every publish the broker acknowledged: that record,
not anything a worker reports, is what "lost" is counted against.
:func:`handled` reads the journals the fault app's workers append to.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer
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
    failed: list[str] = field(default_factory=list)
    _producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> Ledger:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_request_size=4 * 1024 * 1024,
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
            future = await self._producer.send(
                topic, encode(message), key=key.encode() if key else None
            )
            future.add_done_callback(self._recorder(str(message.message_id)))
            pending.append(future)
        await asyncio.gather(*pending, return_exceptions=True)

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
