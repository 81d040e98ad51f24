"""Every kind of handler through kill -9, SIGTERM and a broker restart.

One handler of each kind runs in the fault app (``FAULT_KINDS``): ordered with
retries, batched, concurrent with retries, and two sharing one topic. They get
keyed messages, several per key with sequence numbers, some failing once so
that retries are in flight when the fault comes. Every scenario asserts:

* nothing acknowledged is lost, by any handler;
* each key's messages are first handled in order, by every handler that
  promises it (all but the concurrent one);
* a message is handled twice only where the fault allows it: after SIGTERM,
  never; after kill -9, only what the dead worker handled past its last
  commit; after a broker restart, only what was past the commit taken just
  before it went. A message that went through the timer table (a retry, or an
  ordered key's message parked behind one) may also come again once its timer
  fired on a worker that died before deleting it. Nothing of a partition the
  dead worker never had is handled twice.

"Nothing more will come" is proven by the group's committed offsets reaching
the end of every topic, not by a sleep.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from dawning_streams import Settings, UserEventMessage

from ..handler_helpers import eventually
from ..workers import workers
from .conftest import Row, services
from .fault_app import KINDS, KINDS_DIR_VAR, kind_topic
from .ledger import (
    Call,
    Ledger,
    behind,
    committed_offsets,
    committed_to_end,
    kind_calls,
    order_violations,
)

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

APP = "tests.faults.fault_app"
KEYS = 40
PER_KEY = 25
#: Every FAIL_EVERY-th message of the kinds that retry fails once.
FAIL_EVERY = 20
RETRYING = ("ordered", "concurrent")
#: The handlers that keep each key's messages in order.
IN_ORDER = ("kind_ordered", "kind_batched", "kind_shared_a", "kind_shared_b")
#: SIGTERM's bound on a stop; the worker's own Worker:StopTimeoutS is 30 s.
STOP_BOUND_S = 45


@dataclass(frozen=True)
class Sent:
    topic: str
    key: str
    seq: int
    fail_once: bool


def messages(settings: Settings) -> tuple[list[tuple[str, UserEventMessage]], dict[str, Sent]]:
    """Each key's messages in sequence, the kinds' topics interleaved."""
    users = [uuid.uuid4() for _ in range(KEYS)]
    out: list[tuple[str, UserEventMessage]] = []
    sent: dict[str, Sent] = {}
    for seq in range(PER_KEY):
        for topic_kind in sorted(set(KINDS.values())):
            topic = kind_topic(settings, topic_kind)
            for n, user in enumerate(users):
                fail_once = topic_kind in RETRYING and (n + seq) % FAIL_EVERY == 0
                data: dict[str, object] = {"seq": seq}
                if fail_once:
                    data["fail_once"] = True
                message = UserEventMessage(user_id=user, event_type="kind", event_data=data)
                out.append((topic, message))
                sent[str(message.message_id)] = Sent(topic, str(user), seq, fail_once)
    return out, sent


async def publish(ledger: Ledger, batch: list[tuple[str, UserEventMessage]]) -> None:
    """Publish in order, at about 800 a second."""
    by_topic: dict[str, list[UserEventMessage]] = {}
    for topic, message in batch:
        by_topic.setdefault(topic, []).append(message)
    # One stream per topic, side by side: each key's messages stay in sequence.
    rate = 800 / len(by_topic)
    await asyncio.gather(*(ledger.publish(t, ms, rate_per_s=rate) for t, ms in by_topic.items()))


def through_timers(sent: dict[str, Sent]) -> set[str]:
    """Messages that went through a timer table: those failing once, and the
    ordered handler's messages of a key behind one (parked)."""
    out = {m for m, s in sent.items() if s.fail_once}
    first_failure: dict[str, int] = {}
    ordered = kind_topic_suffix("ordered")
    for s in sent.values():
        if s.fail_once and s.topic.endswith(ordered):
            first_failure[s.key] = min(first_failure.get(s.key, s.seq), s.seq)
    out |= {
        m
        for m, s in sent.items()
        if s.topic.endswith(ordered) and s.key in first_failure and s.seq > first_failure[s.key]
    }
    return out


def kind_topic_suffix(kind: str) -> str:
    return f".kinds.{kind}"


async def snapshot(bootstrap: str, group: str, topics: list[str]) -> dict[tuple[str, int], int]:
    out = {}
    for topic in topics:
        for partition, offset in (await committed_offsets(bootstrap, group, topic)).items():
            out[(topic, partition)] = offset
    return out


@pytest.mark.parametrize("fault", ["kill -9", "SIGTERM", "broker restart"])
@pytest.mark.deadline(360)
@pytest.mark.timeout(420)
async def test_every_handler_kind_through_a_fault(
    fault: str, settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    group_id = settings.kafka.consumer_group_id
    topics = sorted({kind_topic(settings, kind) for kind in KINDS.values()})
    shared = tmp_path / "shared"
    shared.mkdir()
    batch, sent = messages(settings)
    env = {KINDS_DIR_VAR: str(shared)}
    notes: dict[str, object] = {}
    committed_before: dict[tuple[str, int], int] = {}
    async with (
        workers(settings, 2, tmp_path, app=APP, env=env) as group,
        Ledger(bootstrap) as ledger,
    ):
        victim = group[1]
        publishing = asyncio.create_task(publish(ledger, batch))
        await eventually(lambda: len(ledger.acked) >= len(batch) * 0.4, what="40 % published")
        fault_at = time.time()
        if fault == "kill -9":
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait()
            committed_before = await snapshot(bootstrap, group_id, topics)
        elif fault == "SIGTERM":
            logged = len(victim.log.read_bytes())
            victim.terminate()
            try:
                code = await asyncio.to_thread(victim.process.wait, STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"{victim.name} still running {STOP_BOUND_S} s after SIGTERM:\n{victim.tail()}"
                )
            notes["exit_code"] = code
            assert code == 0, victim.tail()
            # It left the group at once, without joining a rebalance on its way out.
            after = victim.log.read_bytes()[logged:].decode(errors="replace")
            assert "Executing _on_partitions_assigned" not in after, victim.tail()
        else:
            committed_before = await snapshot(bootstrap, group_id, topics)
            await services("stop-kafka")
            await asyncio.sleep(5)
            await services("start-kafka")
        await publishing

        def unhandled() -> dict[str, int]:
            calls = kind_calls(w.folder for w in group)
            missing = {}
            for handler, kind in KINDS.items():
                topic = kind_topic(settings, kind)
                done = {c.message_id for c in calls.get(handler, ())}
                left = [m for m in ledger.acked if sent[m].topic == topic and m not in done]
                if left:
                    missing[handler] = len(left)
            return missing

        await eventually(lambda: not unhandled(), timeout_s=180, what="every handler done")
        done_s = time.time() - fault_at
        # Nothing more can come once every offset is committed.
        try:
            await eventually(
                lambda: committed_to_end(bootstrap, group_id, *topics),
                timeout_s=60,
                what="the group's offsets committed to the end of every topic",
            )
        except AssertionError as exc:
            lagging = await behind(bootstrap, group_id, *topics)
            raise AssertionError(f"{exc}; behind: {lagging}") from None
        calls = kind_calls(w.folder for w in group)
        for worker in group:
            if worker is not victim:
                assert worker.process.poll() is None, f"{worker.name} exited:\n{worker.tail()}"

    victim_pid = victim.process.pid
    timed = through_timers(sent)
    lost_total = duplicated_total = 0
    problems: list[str] = []
    for handler, kind in KINDS.items():
        topic = kind_topic(settings, kind)
        made = calls.get(handler, [])
        by_id: dict[str, list[Call]] = {}
        for call in made:
            by_id.setdefault(call.message_id, []).append(call)
        wanted = [m for m in ledger.acked if sent[m].topic == topic]
        lost = sum(1 for m in wanted if m not in by_id)
        repeats = {m: c for m, c in by_id.items() if len(c) > 1}
        duplicated = sum(len(c) - 1 for c in repeats.values())
        lost_total += lost
        duplicated_total += duplicated
        # A message is handled again only if its record's offset was not committed
        # when the fault came, or (through a timer) its timer fired on the worker
        # that died before deleting it. On partitions the dead worker never had,
        # nothing is handled again: survivors commit what they did before a rebalance.
        victims = {
            ledger.acked[m].partition for m, c in by_id.items() if victim_pid in {x.pid for x in c}
        }
        unexplained = []
        for m, c in repeats.items():
            partition, offset = ledger.acked[m].partition, ledger.acked[m].offset
            committed = committed_before.get((topic, partition), 0)
            timer_of_the_dead = m in timed and c[0].pid == victim_pid
            if fault == "kill -9" and partition not in victims:
                unexplained.append(f"{m} (partition {partition}, a survivor's)")
            elif offset < committed and not timer_of_the_dead:
                unexplained.append(f"{m} (partition {partition}, offset {offset} < {committed})")
        violations = order_violations(made) if handler in IN_ORDER else []
        notes[handler] = f"dup {duplicated}, order violations {len(violations)}"
        if lost:
            problems.append(f"{handler}: {lost} lost")
        if violations:
            problems.append(f"{handler}: out of order: {violations[:3]}")
        if fault == "SIGTERM" and duplicated:
            problems.append(f"{handler}: {duplicated} repeated after a SIGTERM")
        if fault != "SIGTERM" and unexplained:
            problems.append(
                f"{handler}: {len(unexplained)} handled again that the fault does not "
                f"explain: {unexplained[:3]}"
            )
    notes["publish_failed"] = len(ledger.failed)
    notes["through_timers"] = len(timed)
    report.append(
        Row(
            f"every handler kind, {fault}",
            len(ledger.acked),
            sum(len({c.message_id for c in cs}) for cs in calls.values()),
            lost_total,
            duplicated_total,
            round(done_s, 1),
            notes,
        )
    )
    assert len(ledger.acked) + len(ledger.failed) == len(batch)
    if fault != "broker restart":
        assert not ledger.failed
    assert not problems, "\n".join(problems)
