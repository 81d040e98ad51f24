"""Durable timers under worker faults: countdowns through a kill -9, and an
ordered handler's retries and held keys through seeded kills, restarts, hung workers and
Kafka outages.

Both scenarios publish from the test process and count "lost" against the
broker's acknowledgements the test itself received; what the workers handled
is read from their journals (``tests/faults/fault_app.py``). Before the
journals are read for the last time, nothing is left that could still run a
message again: the timer table's changelog holds no timer (and no held key),
and the group has committed every partition of the source and timers topics
to its end offset, so neither a timer nor a redelivery can repeat anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from dawning_streams import App, AuditLogMessage, Settings, UserEventMessage, create_app
from dawning_streams.core.names import dead_letter_topic
from dawning_streams.handlers.timers import pending_timers
from dawning_streams.kafka.reading import read_to_end

from ..handler_helpers import eventually
from ..workers import Worker, spawn, workers
from .conftest import Row, services
from .fault_app import (
    ORDERED_RETRY,
    SHARED_DIR_VAR,
    install_timer_handlers,
    ordered_topic,
)
from .ledger import (
    Ledger,
    by_message,
    committed_offsets,
    delayed_calls,
    end_offsets,
    lost_and_duplicated,
    order_violations,
    ordered_calls,
    write_duplicates,
)

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

APP = "tests.faults.fault_app"
#: The publisher's due time is ``time.time() + countdown`` taken just before
#: ``apply_async``, which takes its own ``time.time()`` after that and rounds the
#: due up to the next ms: the worker's due is never earlier than the publisher's.
#: The journals write times with 6 decimals (and floats add their own
#: rounding), so a call counts as early only when it comes more than this
#: much before the publisher's due: clock rounding, nothing more.
CLOCK_SLACK_S = 0.005

CHAOS_SEED = int(os.environ.get("CHAOS_SEED", "1"))
CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "60"))
#: Longest the chaos scenario waits, after the publish window, for every
#: message to be handled; past it the test fails, naming what is missing.
DRAIN_LIMIT_S = 180.0


def timer_workers_env(tmp_path: Path) -> dict[str, str]:
    """The environment that gives the fault app its timer handlers, and the
    directory every worker of the test shares."""
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    return {SHARED_DIR_VAR: str(shared)}


def twin(settings: Settings) -> App:
    """The workers' app in this process, with the same handlers: it publishes
    through ``apply_async`` and reads the timer tables' changelogs."""
    app = create_app(settings, web_enabled=False)
    install_timer_handlers(app, settings)
    return app


@dataclasses.dataclass
class Quiet:
    """What the timer table and the group's commits showed at the end."""

    #: ``pending_timers``'s report of the handler's table.
    table: dict[str, Any]
    #: ``topic/partition`` -> (committed, end) of each partition not committed to its end.
    behind: dict[str, tuple[int | None, int]]
    #: Seconds it took to get there, or None if it never did within the limit.
    after_s: float | None

    @property
    def problem(self) -> str | None:
        if self.after_s is not None:
            return None
        return (
            f"{self.table['pending']} timers pending, held keys {self.table['held']}, "
            f"partitions not committed to their end (committed, end): {self.behind}"
        )


async def quiet(
    settings: Settings, app: App, handler: str, topics: Iterable[str], *, timeout_s: float
) -> Quiet:
    """Wait until ``handler``'s timer table holds nothing and the group has
    committed every partition of ``topics`` to its end, for at most ``timeout_s``.

    From then on nothing can run again: no timer is left to fire, and no
    record is left for a new owner to read again after a rebalance. The
    table's writes reach the broker a moment after the handling they follow,
    and Faust commits every 2.8 s, hence the wait.
    """
    bootstrap = settings.kafka.bootstrap_servers[0]
    group = settings.kafka.consumer_group_id
    started = time.monotonic()
    while True:
        table = (await pending_timers(app, [handler]))[handler]
        behind: dict[str, tuple[int | None, int]] = {}
        for topic in topics:
            ends = await end_offsets(bootstrap, topic)
            committed = await committed_offsets(bootstrap, group, topic)
            behind.update(
                {
                    f"{topic}/{p}": (committed.get(p), end)
                    for p, end in ends.items()
                    if end and committed.get(p) != end
                }
            )
        elapsed = time.monotonic() - started
        if table["pending"] == 0 and not table["held"] and not behind:
            return Quiet(table, behind, elapsed)
        if elapsed > timeout_s:
            return Quiet(table, behind, None)
        await asyncio.sleep(0.5)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


# -- 1. kill -9 with countdowns pending ----------------------------------------


@pytest.mark.deadline(420)
@pytest.mark.timeout(540)
async def test_kill_9_with_countdowns_pending_loses_none_and_fires_none_early(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    bootstrap = settings.kafka.bootstrap_servers[0]
    total, keys = 2_000, 400
    rng = random.Random(7)
    users = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(keys)]
    # Each message is due 10 to 40 s after the publishing starts.
    offsets_s = [rng.uniform(10, 40) for _ in range(total)]
    app = twin(settings)
    delayed = app.handlers["record_delayed"]
    ledger = Ledger(bootstrap)  # not started: it records apply_async's receipts
    due: dict[str, float] = {}
    env = timer_workers_env(tmp_path)

    async def send(n: int, start: float) -> None:
        now = time.time()
        countdown = max(0.0, start + offsets_s[n] - now)
        message = AuditLogMessage(
            user_id=users[n % keys],
            action="delayed",
            entity_type="Fault",
            description=f"{now + countdown:.6f}",
        )
        due[str(message.message_id)] = now + countdown
        ledger.acknowledged(
            str(message.message_id), await delayed.apply_async(message, countdown_s=countdown)
        )

    async with workers(settings, 3, tmp_path, app=APP, env=env) as group, app.bus:
        start = time.time()
        for first in range(0, total, 100):
            await asyncio.gather(*(send(n, start) for n in range(first, first + 100)))
        published_s = time.time() - start
        # Kill a worker once they are firing: some of its timers have run, most
        # wait. The one that has run the most, so surely one that owns timers.
        await eventually(
            lambda: len(delayed_calls(w.folder for w in group)) >= 150,
            timeout_s=120,
            what="150 countdowns run",
        )
        victim = max(group, key=lambda w: len(delayed_calls([w.folder])))
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        killed_at = time.time()
        pending_at_kill = total - len(by_message(delayed_calls(w.folder for w in group)))
        # Restarted (as a new process, in a folder of its own) 3 s later.
        await asyncio.sleep(3)
        group.append(spawn(settings, f"{victim.name}-again", tmp_path, app=APP, env=env))

        def all_handled() -> bool:
            calls = by_message(delayed_calls(w.folder for w in group))
            return all(message_id in calls for message_id in ledger.acked)

        await eventually(all_handled, timeout_s=180, what="every acknowledged countdown run")
        end = await quiet(settings, app, "record_delayed", [delayed.timers_topic], timeout_s=90)
        journal = delayed_calls(w.folder for w in group)
        live = [w for w in group if w.process.poll() is None]

    calls = by_message(journal)
    lost, duplicated = lost_and_duplicated(ledger, calls)
    write_duplicates(tmp_path / "duplicates.txt", ledger, calls)
    early = [
        f"{call.message_id} ran at {call.at:.6f} by {call.pid}, due {due[call.message_id]:.6f}"
        for call in journal
        if call.at < due[call.message_id] - CLOCK_SLACK_S
    ]
    late_ms = {m: 1000 * (made[0][1] - due[m]) for m, made in calls.items()}
    victim_pid = victim.process.pid
    orphaned = {ledger.acked[c.message_id].partition for c in journal if c.pid == victim_pid}
    on_orphaned = [c for c in journal if ledger.acked[c.message_id].partition in orphaned]
    taken_over = [c.at for c in on_orphaned if c.pid != victim_pid and c.at > killed_at]
    victims_repeated = sum(
        len(made) - 1 for made in calls.values() if made[0][0] == victim_pid and len(made) > 1
    )
    report.append(
        Row(
            "kill -9 with countdowns",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            min(taken_over) - killed_at if taken_over else None,
            {
                "pending_at_kill": pending_at_kill,
                "restarted": "yes, 3 s after",
                "early": len(early),
                "late_p50_ms": round(percentile(list(late_ms.values()), 0.5)),
                "late_p99_ms": round(percentile(list(late_ms.values()), 0.99)),
                "max_late_ms": round(max(late_ms.values(), default=0)),
                "orphaned_max_late_ms": round(
                    max(
                        (v for m, v in late_ms.items() if ledger.acked[m].partition in orphaned),
                        default=0,
                    )
                ),
                "victims_repeated": victims_repeated,
                "orphaned_partitions": sorted(orphaned),
                "published_s": round(published_s, 1),
                "publish_failed": len(ledger.failed),
                "session_timeout_s": settings.kafka.session_timeout_ms / 1000,
                "quiet_after_s": None if end.after_s is None else round(end.after_s, 1),
            },
        )
    )
    assert not ledger.failed, f"{len(ledger.failed)} countdowns were spooled, not acknowledged"
    assert len(ledger.acked) == total
    assert lost == 0
    assert not early, "\n".join(early[:20])
    assert end.problem is None, end.problem
    codes = [w.process.returncode for w in live]
    assert codes == [0] * len(live), [w.log for w in live]


# -- 2. seeded chaos: an ordered handler with retries ----------------------------


@dataclasses.dataclass
class Fault:
    """One kill or stop of the chaos, and the worker started in its place."""

    at: float
    worker: str
    how: str
    #: Whether the worker had started (its signal handlers installed, which
    #: Faust does before it logs ``[^Worker]: Starting...``): a SIGTERM that
    #: comes sooner ends the interpreter mid-import, with -15, not a worker.
    started: bool
    exit_code: int | None = None
    restarted: str | None = None

    @property
    def graceful(self) -> bool:
        """A SIGTERM of a started worker: it must stop on its own, with 0."""
        return self.how == "SIGTERM" and self.started


def chaos_messages(rng: random.Random, total: int, keys: int, fail_share: float) -> list[Any]:
    """``total`` messages on ``keys`` keys, numbered 0.. per key in publishing order;
    about ``fail_share`` of them marked to fail once."""
    users = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(keys)]
    numbers: Counter[uuid.UUID] = Counter()
    messages = []
    for _ in range(total):
        user = rng.choice(users)
        messages.append(
            UserEventMessage(
                message_id=uuid.UUID(int=rng.getrandbits(128)),
                user_id=user,
                event_type="ordered",
                event_data={"seq": numbers[user], "fail_once": rng.random() < fail_share},
            )
        )
        numbers[user] += 1
    return messages


#: The kinds of fault the chaos chooses from, by ``rng``.
FAULT_KINDS = ("SIGKILL", "SIGTERM", "SIGSTOP", "kafka")


async def chaos(
    rng: random.Random,
    group: list[Worker],
    until: float,
    start_again: Callable[[int, int], Worker],
) -> list[Fault]:
    """Until ``until`` (monotonic): every 6 to 12 s, one fault chosen by ``rng``:

    * kill -9 or SIGTERM one of the live workers, and start another in its
      place 2 to 5 s after it has gone (``group`` gets the new workers);
    * SIGSTOP one for 3 to 20 s, then SIGCONT: a worker that hangs, often past
      its session timeout (10 s), so the group moves its partitions and the
      worker comes back a zombie, with records in flight and table writes;
    * stop Kafka for 3 to 15 s, then start it again.
    """
    live = dict(enumerate(group))
    faults: list[Fault] = []
    next_at = time.monotonic() + rng.uniform(6, 12)
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if time.monotonic() >= until:
            return faults
        fault_at = time.monotonic()
        how = rng.choice(FAULT_KINDS)
        if how == "kafka":
            down_s = rng.uniform(3, 15)
            faults.append(Fault(time.time(), "kafka", f"kafka down {down_s:.0f}s", True))
            await services("stop-kafka")
            await asyncio.sleep(down_s)
            await services("start-kafka")
            next_at = max(fault_at + rng.uniform(6, 12), time.monotonic())
            continue
        slot = rng.choice(sorted(live))
        victim = live[slot]
        started = b"[^Worker]: Starting..." in victim.log.read_bytes()
        if how == "SIGSTOP":
            stopped_s = rng.uniform(3, 20)
            faults.append(Fault(time.time(), victim.name, f"SIGSTOP {stopped_s:.0f}s", started))
            victim.process.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(stopped_s)
            finally:
                victim.process.send_signal(signal.SIGCONT)
            next_at = max(fault_at + rng.uniform(6, 12), time.monotonic())
            continue
        fault = Fault(time.time(), victim.name, how, started)
        faults.append(fault)
        victim.process.send_signal(getattr(signal, how))
        try:
            fault.exit_code = await asyncio.to_thread(victim.process.wait, 90)
        except subprocess.TimeoutExpired:  # a SIGTERM that hangs: noted, and asserted on
            victim.process.kill()
            await asyncio.to_thread(victim.process.wait)
            fault.exit_code = None
        await asyncio.sleep(rng.uniform(2, 5))
        replacement = start_again(slot, len(faults))
        group.append(replacement)
        live[slot] = replacement
        fault.restarted = replacement.name
        next_at = max(fault_at + rng.uniform(6, 12), time.monotonic())


@pytest.mark.deadline(CHAOS_SECONDS + 480)
@pytest.mark.timeout(CHAOS_SECONDS + 600)
async def test_seeded_chaos_keeps_an_ordered_handlers_keys_in_order_through_retries(
    settings: Settings, tmp_path: Path, report: list[Row]
) -> None:
    # More partitions than workers, so each worker owns several of them (and
    # their timer partitions); the topics and the group are this test's own.
    kafka = dataclasses.replace(settings.kafka, partitions=6)
    settings = dataclasses.replace(settings, kafka=kafka)
    bootstrap = settings.kafka.bootstrap_servers[0]
    rate, keys, fail_share = 150, 100, 0.03
    total = int(rate * CHAOS_SECONDS)
    rng = random.Random(CHAOS_SEED)
    messages = chaos_messages(rng, total, keys, fail_share)
    marked = {str(m.message_id) for m in messages if m.event_data["fail_once"]}
    chaos_rng = random.Random(f"chaos-{CHAOS_SEED}")
    app = twin(settings)
    ordered = app.handlers["record_ordered"]
    topic = ordered_topic(settings)
    env = timer_workers_env(tmp_path)
    failed_log = Path(env[SHARED_DIR_VAR]) / "failed.log"

    def start_again(slot: int, generation: int) -> Worker:
        name = f"{settings.instance_name}-{slot}g{generation}"
        return spawn(settings, name, tmp_path, app=APP, env=env)

    async with (
        workers(settings, 3, tmp_path, app=APP, env=env) as group,
        Ledger(bootstrap) as ledger,
    ):

        async def publish() -> float:
            await ledger.publish(topic, messages, rate_per_s=rate)
            return time.time()

        publishing = asyncio.create_task(publish())
        # The faults begin once the group is handling: a group that never starts
        # fails here, with what each worker was doing.
        try:
            await eventually(
                lambda: ordered_calls(w.folder for w in group), 60, "a first message handled"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{last_lines(group)}") from None
        until = time.monotonic() + CHAOS_SECONDS
        faults = await chaos(chaos_rng, group, until, start_again)
        published_at = await publishing

        def missing() -> list[str]:
            handled = {c.message_id for c in ordered_calls(w.folder for w in group)}
            return [m for m in ledger.acked if m not in handled]

        drain_s, left = await drain(missing, published_at)
        if left:
            (tmp_path / "missing.txt").write_text(
                "\n".join(f"{ledger.acked[m].partition} {ledger.acked[m].offset} {m}" for m in left)
            )
            end = Quiet((await pending_timers(app, [ordered.name]))[ordered.name], {}, None)
            print(last_lines(group))
        else:
            end = await quiet(
                settings, app, ordered.name, [topic, ordered.timers_topic], timeout_s=90
            )
        journal = ordered_calls(w.folder for w in group)
        live = [w for w in group if w.process.poll() is None]
        dead_letters = await read_to_end(settings.kafka, [dead_letter_topic(topic)])

    calls = by_message(journal)
    lost, duplicated = lost_and_duplicated(ledger, calls)
    write_duplicates(tmp_path / "duplicates.txt", ledger, calls)
    violations = order_violations(journal)
    (tmp_path / "violations.txt").write_text("\n".join(violations))
    failed_lines = failed_log.read_text().splitlines() if failed_log.exists() else []
    failures = Counter(line.split()[0] for line in failed_lines)
    retried = [c for c in journal if c.attempt > 0]
    stopped = [f for f in faults if f.graceful]
    report.append(
        Row(
            f"chaos ordered+retry seed={CHAOS_SEED}",
            len(ledger.acked),
            len(calls),
            lost,
            duplicated,
            drain_s,  # the "recover" of a run of faults: until everything is handled
            {
                "seed": CHAOS_SEED,
                "seconds": CHAOS_SECONDS,
                "order_violations": len(violations),
                "held_keys": len(end.table["held"]),
                "pending_timers": end.table["pending"],
                "drain_s": None if drain_s is None else round(drain_s, 1),
                "missing_after_drain_limit": len(left),
                "quiet_after_s": None if end.after_s is None else round(end.after_s, 1),
                "kills": sum(f.how == "SIGKILL" for f in faults),
                "sigterms": sum(f.how == "SIGTERM" for f in faults),
                "sigstops": sum(f.how.startswith("SIGSTOP") for f in faults),
                "kafka_outages": sum(f.worker == "kafka" for f in faults),
                "sigterms_before_start": sum(f.how == "SIGTERM" and not f.started for f in faults),
                "restarts": sum(f.restarted is not None for f in faults),
                "sigterm_exit_codes": [f.exit_code for f in stopped],
                "marked_fail_once": len(marked),
                "failed_attempts": sum(failures.values()),
                "failed_more_than_once": sum(n > 1 for n in failures.values()),
                "handled_on_a_retry": len(retried),
                "dead_lettered": len(dead_letters),
                "partitions": settings.kafka.partitions,
                "retry": f"{ORDERED_RETRY.max_retries} after {ORDERED_RETRY.backoff_s:g} s, x2",
                "faults": [
                    f"{f.how}{'' if f.started else '(starting)'}@{f.worker.rpartition('-')[2]}"
                    for f in faults
                ],
            },
        )
    )
    assert not ledger.failed
    assert len(ledger.acked) == total
    assert not left, (
        f"{len(left)} of {len(ledger.acked)} acknowledged messages not handled {DRAIN_LIMIT_S} s "
        f"after the publish window (by partition: "
        f"{dict(Counter(ledger.acked[m].partition for m in left))}); timer table: "
        f"{end.table['pending']} pending, held keys {end.table['held']}"
    )
    assert lost == 0
    assert not violations, "\n".join(violations[:20])
    assert end.table["held"] == {} and end.table["pending"] == 0, end.problem
    assert end.problem is None, end.problem
    assert not dead_letters
    # Every marked message failed (once) before it was handled.
    assert set(failures) == marked, set(failures) ^ marked
    for fault in stopped:
        assert fault.exit_code == 0, fault
    codes = [w.process.returncode for w in live]
    assert codes == [0] * len(live), [w.log for w in live]


def last_lines(group: list[Worker]) -> str:
    """The end of each worker's log, and its exit code if it has gone."""
    return "\n".join(f"--- {w.name} (exit code {w.process.poll()}):\n{w.tail(30)}" for w in group)


async def drain(missing: Callable[[], list[str]], since: float) -> tuple[float | None, list[str]]:
    """Seconds from ``since`` until nothing acknowledged is missing, and what is
    still missing (nothing, unless ``DRAIN_LIMIT_S`` passed first: no seconds then)."""
    while True:
        left = missing()
        elapsed = time.time() - since
        if not left:
            return elapsed, []
        if elapsed > DRAIN_LIMIT_S:
            return None, left
        await asyncio.sleep(0.5)
