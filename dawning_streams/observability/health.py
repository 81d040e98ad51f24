"""Liveness and readiness: what ``GET /health`` and ``GET /ready`` answer.

``/health`` says the process is alive and serving. ``/ready`` says the worker
can do its work, and answers 503 with the failing checks until then:

* ``broker``: the producer has a live connection to a broker, and the last
  probe of the brokers (every few seconds) was answered; when not, it names
  Kafka, its address and the error;
* ``assignment``: the consumer has joined its group and no rebalance is under way;
* ``timers``: no ordered handler's key waits on a retry overdue by more than
  ``Timers:StuckAfterS`` (the keys are named);
* ``recovery``: table recovery has finished. While it runs, the answer shows
  how many changelog records remain, and ``stuck`` turns true once recovery has
  read nothing for ``Health:RecoveryStallS`` seconds, or a rebalance has not
  reached recovery in that time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from time import monotonic
from typing import Any, Protocol

from faust.exceptions import ConsumerNotStarted

from dawning_streams.core.settings import Settings
from dawning_streams.kafka import faust_compat
from dawning_streams.kafka.outages import Dependency

__all__ = ["HealthHost", "RecoveryState", "assess_recovery", "readiness"]


class TimerCounts(Protocol):
    """What ``/ready`` reads of one handler's timers."""

    @property
    def pending(self) -> int: ...

    @property
    def held_keys(self) -> int: ...

    @property
    def stuck_keys(self) -> tuple[str, ...]: ...


class _WithTimers(Protocol):
    @property
    def timers(self) -> _CountsTimers: ...


class _CountsTimers(Protocol):
    def stats(self) -> TimerCounts: ...


class HealthHost(Protocol):
    """What ``/ready`` reads of the app (a Faust app: its consumer is read too)."""

    @property
    def dawning_settings(self) -> Settings: ...

    @property
    def kafka_state(self) -> Dependency: ...

    @property
    def tables(self) -> Any: ...

    @property
    def rebalancing(self) -> bool: ...

    @property
    def rebalance_started_at(self) -> float | None: ...

    @property
    def handlers(self) -> Mapping[str, _WithTimers]: ...


@dataclass(frozen=True, slots=True)
class RecoveryState:
    """What table recovery is doing, read from Faust's recovery service."""

    #: True once the first assignment has been recovered.
    completed_once: bool
    in_recovery: bool
    #: Changelog records still to read for the active partitions.
    remaining: int
    #: Seconds since recovery started, and since it last read a record (None: never).
    running_s: float | None
    idle_s: float | None
    #: Seconds since the rebalance under way started (None: none under way).
    rebalancing_s: float | None = None


def assess_recovery(state: RecoveryState, *, stall_s: float) -> dict[str, Any]:
    """The ``recovery`` check of ``/ready``: ``ok``, ``state``, and ``stuck`` when stalled."""
    if state.in_recovery:
        quiet_s = state.idle_s if state.idle_s is not None else state.running_s or 0.0
        return {
            "ok": False,
            "state": "recovering",
            "remaining": state.remaining,
            "running_s": round(state.running_s or 0.0, 1),
            "idle_s": round(quiet_s, 1),
            "stuck": quiet_s >= stall_s,
        }
    if state.rebalancing_s is not None:
        # Assigned, not yet recovering: the rebalance itself must not hang.
        return {
            "ok": False,
            "state": "waiting",
            "rebalancing_s": round(state.rebalancing_s, 1),
            "stuck": state.rebalancing_s >= stall_s,
        }
    if not state.completed_once:
        return {"ok": False, "state": "waiting", "stuck": False}
    return {"ok": True, "state": "done", "stuck": False}


def recovery_state(app: HealthHost) -> RecoveryState:
    """Read Faust's recovery service (private fields: Faust has no public view of them)."""
    recovery: Any = app.tables.recovery  # type: ignore[attr-defined]
    now = monotonic()
    started, received = faust_compat.recovery_progress(recovery)
    rebalance_started = app.rebalance_started_at if app.rebalancing else None
    return RecoveryState(
        completed_once=recovery.completed.is_set(),
        in_recovery=bool(recovery.in_recovery),
        remaining=int(recovery.active_remaining_total()) if recovery.in_recovery else 0,
        running_s=now - started if started is not None else None,
        idle_s=now - max(received.values()) if received else None,
        rebalancing_s=now - rebalance_started if rebalance_started is not None else None,
    )


def _timers(app: HealthHost) -> dict[str, Any]:
    pending = held = 0
    stuck: dict[str, list[str]] = {}
    for name, handler in app.handlers.items():
        stats = handler.timers.stats()
        pending += stats.pending
        held += stats.held_keys
        if stats.stuck_keys:
            stuck[name] = list(stats.stuck_keys)
    return {"ok": not stuck, "pending": pending, "held_keys": held, "stuck_keys": stuck}


def readiness(app: HealthHost) -> dict[str, Any]:
    """Every check of ``/ready``, and ``ready`` when all pass."""
    recovery = assess_recovery(
        recovery_state(app), stall_s=app.dawning_settings.health.recovery_stall_s
    )
    consumer = faust_compat.worker_consumer(app)
    try:
        assigned = sorted(consumer.assignment()) if consumer is not None else []
    except ConsumerNotStarted:  # a worker waiting for Kafka to start
        assigned = []
    joined = recovery["state"] != "waiting" or bool(assigned)
    assignment = {
        "ok": joined and not app.rebalancing,
        "partitions": len(assigned),
        "rebalancing": bool(app.rebalancing),
    }
    # The watch's probe, every few seconds, and not the connections of Faust's
    # producer: one that has sent nothing since an outage has none, and can.
    kafka = app.kafka_state.check()
    checks: dict[str, dict[str, Any]] = {
        "broker": kafka,
        "assignment": assignment,
        "recovery": recovery,
        "timers": _timers(app),
    }
    return {"ready": all(check["ok"] for check in checks.values()), "checks": checks}
