"""The load the cluster scenarios put on the brokers, and the figures they read from it.

Each scenario publishes keyed messages numbered 0.. per key, in publishing
order, to the fault app's ordered handler, while two workers consume them;
what the brokers acknowledged is in a :class:`~tests.faults.ledger.Ledger`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator

from aiokafka.admin import AIOKafkaAdminClient

from dawning_streams import UserEventMessage

from ..faults.ledger import Call, Ledger, by_message, committed_to_end, ordered_calls
from ..handler_helpers import eventually
from ..workers import Worker
from .conftest import BOOTSTRAP, partitions_of


def keyed_stream(rng: random.Random, keys: int) -> Iterator[UserEventMessage]:
    """Messages on ``keys`` keys without end, numbered 0.. per key in publishing order."""
    users = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(keys)]
    numbers: Counter[uuid.UUID] = Counter()
    while True:
        user = rng.choice(users)
        yield UserEventMessage(
            message_id=uuid.UUID(int=rng.getrandbits(128)),
            user_id=user,
            event_type="ordered",
            event_data={"seq": numbers[user]},
        )
        numbers[user] += 1


def keyed_messages(rng: random.Random, total: int, keys: int) -> list[UserEventMessage]:
    """The first ``total`` messages of :func:`keyed_stream`."""
    return list(itertools.islice(keyed_stream(rng, keys), total))


def until(stop: asyncio.Event, messages: Iterable[UserEventMessage]) -> Iterator[UserEventMessage]:
    """``messages`` until ``stop`` is set: a load that lasts as long as the fault."""
    return itertools.takewhile(lambda _: not stop.is_set(), messages)


async def all_in_sync(topic: str) -> bool:
    """Whether every partition of ``topic`` has all three replicas in sync."""
    return all(len(p["isr"]) == 3 for p in (await partitions_of(topic)).values())


async def every_replica_in_sync() -> bool:
    """Whether every partition of every topic on the cluster (the brokers' own
    ``__consumer_offsets`` included) has all its replicas in sync."""
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        described = await admin.describe_topics(await admin.list_topics())
    finally:
        await admin.close()
    return all(
        p["leader"] >= 0 and set(p["isr"]) == set(p["replicas"])
        for topic in described
        for p in topic["partitions"]
    )


def assigned(worker: Worker) -> int:
    """How many partition assignments ``worker`` has been given so far."""
    return worker.log.read_text(errors="replace").count("Executing _on_partitions_assigned")


def longest_stall_s(ledger: Ledger) -> float:
    """The longest time one partition went without an acknowledgement while
    messages were being published to it."""
    by_partition: dict[int, list[float]] = {}
    for message_id, ack in ledger.acked.items():
        by_partition.setdefault(ack.partition, []).append(ledger.acked_at[message_id])
    gaps = [0.0]
    for times in by_partition.values():
        times.sort()
        gaps.extend(later - earlier for earlier, later in itertools.pairwise(times))
    return max(gaps)


def publish_figures(ledger: Ledger) -> dict[str, object]:
    """Send-to-ack latency of every acknowledged publish: p50, p99, max, and how
    many took over a second; and the longest stall of a partition."""
    latencies = sorted(ledger.acked_at[m] - ledger.sent_at[m] for m in ledger.acked)
    return {
        "longest_publish_stall_s": round(longest_stall_s(ledger), 1),
        "p50_publish_ms": round(latencies[len(latencies) // 2] * 1000),
        "p99_publish_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000),
        "max_publish_ms": round(latencies[-1] * 1000),
        "acked_after_1s": sum(1 for latency in latencies if latency > 1),
    }


async def handled_to_the_end(
    group: list[Worker], message_ids: Iterable[str], topic: str, group_id: str
) -> list[Call]:
    """Wait until the workers have handled every one of ``message_ids`` and
    committed ``topic`` to its end; then their journals are final: return them."""
    wanted = set(message_ids)

    def all_handled() -> bool:
        return wanted <= by_message(ordered_calls(w.folder for w in group)).keys()

    await eventually(all_handled, timeout_s=120, what="every acknowledged message handled")
    await eventually(
        lambda: committed_to_end(BOOTSTRAP, group_id, topic),
        timeout_s=90,
        what="offsets committed to the end",
    )
    return ordered_calls(w.folder for w in group)
