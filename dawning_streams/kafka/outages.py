"""Outages: a worker that says when Kafka is gone, and waits for it to come back.

- :class:`Dependency` is one service's reachability. When it changes, the log
  says so once, naming the service, its address and the error; while it is
  down, one summary line a minute says for how long and what waits (the spool,
  parked messages, pending timers); when it is back, one line says so.
- :class:`KafkaWatch` probes the brokers every few seconds with a client of
  its own, so ``/ready`` turns 503 within seconds of losing Kafka, naming it,
  and ``dawning.dependency.down_seconds`` counts the time.
- :func:`quiet_client_logs` rate-limits the Kafka clients' own reconnect
  noise: each kind of message at most once a minute, with a count of what was
  held back (an outage otherwise logs hundreds of lines a second).
- :func:`wait_for_kafka` holds a worker's start until the brokers answer,
  with exponential backoff, instead of exiting at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaClient
from mode import Service

from dawning_streams.core.errors import described
from dawning_streams.core.settings import KafkaSettings
from dawning_streams.kafka.security import client_options

__all__ = [
    "Dependency",
    "KafkaUnreachable",
    "KafkaWatch",
    "quiet_client_logs",
    "wait_for_kafka",
]

logger = logging.getLogger(__name__)

#: The longest pause between two tries of a worker waiting for Kafka to start.
_START_PAUSE_MAX_S = 5.0

#: How often a dependency that stays down is summed up in the log.
SUMMARY_EVERY_S = 60.0
#: How often the watch asks the brokers, and how long it gives them to answer.
PROBE_EVERY_S = 3.0
PROBE_TIMEOUT_S = 5.0
#: The client loggers whose messages repeat through an outage.
CLIENT_LOGGERS = (
    "aiokafka",
    "aiokafka.client",
    "aiokafka.conn",
    "aiokafka.cluster",
    "aiokafka.consumer.consumer",
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
    "aiokafka.producer.producer",
    "aiokafka.producer.sender",
    "faust.transport.drivers.aiokafka",
    "faust.transport.consumer",
    "faust.transport.producer",
    # librdkafka's, as the bus's producer logs them (dawning_streams.bus.rdkafka).
    "confluent_kafka.producer",
)


class KafkaUnreachable(Exception):
    """No broker answered within ``Worker:StartTimeoutS``."""


class Dependency:
    """One service's reachability, as the log, ``/ready`` and the metrics see it."""

    def __init__(self, name: str, address: str, waiting: Callable[[], str] = lambda: "") -> None:
        self.name = name
        self.address = address
        #: What waits while it is down, for the summary line.
        self.waiting = waiting
        self.down_since: float | None = None
        self.error: str | None = None
        self._summarised_at = 0.0

    @property
    def down_s(self) -> float:
        """Seconds it has been down (0 while up)."""
        return time.monotonic() - self.down_since if self.down_since is not None else 0.0

    def down(self, error: BaseException | str) -> None:
        """It did not answer: say so once, then once a minute."""
        self.error = error if isinstance(error, str) else described(error)
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = self._summarised_at = now
            logger.warning("%s is unreachable at %s: %s", self.name, self.address, self.error)
        elif now - self._summarised_at >= SUMMARY_EVERY_S:
            self._summarised_at = now
            waiting = self.waiting()
            logger.warning(
                "%s still unreachable at %s, for %.0f s (%s)%s",
                self.name,
                self.address,
                self.down_s,
                self.error,
                f"; waiting: {waiting}" if waiting else "",
            )

    def up(self) -> None:
        """It answered: say so once if it had been down."""
        if self.down_since is not None:
            logger.warning(
                "%s is reachable again at %s, after %.0f s", self.name, self.address, self.down_s
            )
        self.down_since = None
        self.error = None

    def check(self) -> dict[str, Any]:
        """This dependency's entry in ``/ready``."""
        if self.down_since is None:
            return {"ok": True}
        return {
            "ok": False,
            "error": f"{self.name} unreachable at {self.address}: {self.error}",
            "down_s": round(self.down_s, 1),
        }


async def probe(settings: KafkaSettings) -> None:
    """Raise unless a broker answers a metadata request within ``PROBE_TIMEOUT_S``."""
    client = AIOKafkaClient(**client_options(settings))
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await client.bootstrap()
    finally:
        await client.close()


class KafkaWatch(Service):
    """Asks the brokers every few seconds, and keeps :class:`Dependency` ``kafka`` current."""

    def __init__(self, settings: KafkaSettings, kafka: Dependency, **kwargs: Any) -> None:
        self.settings = settings
        self.kafka = kafka
        super().__init__(**kwargs)

    @Service.task
    async def _watch(self) -> None:
        client: AIOKafkaClient | None = None
        try:
            while not self.should_stop:
                try:
                    async with asyncio.timeout(PROBE_TIMEOUT_S):
                        if client is None:
                            fresh = AIOKafkaClient(**client_options(self.settings))
                            try:
                                await fresh.bootstrap()
                            except BaseException:
                                await fresh.close()
                                raise
                            client = fresh
                        else:
                            await client.fetch_all_metadata()
                except Exception as exc:  # unreachable, or anything else: it is down
                    self.kafka.down(exc)
                else:
                    self.kafka.up()
                await self.sleep(PROBE_EVERY_S)
        finally:
            if client is not None:
                await client.close()


async def wait_for_kafka(
    settings: KafkaSettings, kafka: Dependency, timeout_s: float | None
) -> None:
    """Return once a broker answers, backing off meanwhile from 1 s, doubling, to
    5 s (a try is one connection; a longer pause would be time a worker sits
    idle after Kafka is back). Raises :class:`KafkaUnreachable` after ``timeout_s``."""
    started = time.monotonic()
    pause_s = 1.0
    while True:
        try:
            await probe(settings)
        except Exception as exc:
            kafka.down(exc)
        else:
            kafka.up()
            return
        waited = time.monotonic() - started
        pause = pause_s
        if timeout_s is not None:
            if waited >= timeout_s:
                raise KafkaUnreachable(
                    f"Kafka is unreachable at {kafka.address} ({kafka.error}); "
                    f"gave up after {waited:.0f} s (Worker:StartTimeoutS={timeout_s:g})"
                )
            # The last try comes at the timeout, not a whole pause before it.
            pause = min(pause, timeout_s - waited)
        await asyncio.sleep(pause)
        pause_s = min(pause_s * 2, _START_PAUSE_MAX_S)


def _expected_at_first_start(record: logging.LogRecord) -> bool:
    """aiokafka's ERROR for a coordinator lookup a new broker cannot answer yet,
    and librdkafka's WARNING for an idempotent producer's id a new broker cannot
    hand out yet (``GETPID ... Coordinator load in progress: retrying``)."""
    args = record.args if isinstance(record.args, tuple) else ()
    if record.name == "confluent_kafka.producer":
        # librdkafka logs ("%s [%s] %s", facility, client, text).
        return (
            len(args) == 3
            and args[0] == "GETPID"
            and "Coordinator load in progress" in str(args[2])
        )
    return (
        record.name == "aiokafka.consumer.group_coordinator"
        and isinstance(record.msg, str)
        and record.msg.startswith("Group Coordinator Request failed")
        and any(type(arg).__name__ == "GroupCoordinatorNotAvailableError" for arg in args)
    )


class _Repeats(logging.Filter):
    """Lets each kind of warning or error through at most once per ``SUMMARY_EVERY_S``."""

    _DIGITS = re.compile(r"\d+")

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        #: The last INFO line let through, and when.
        self._said: tuple[str, str] | None = None
        self._said_at = 0.0
        self._lock = threading.Lock()  # the consumer logs from its own thread

    def filter(self, record: logging.LogRecord) -> bool:
        if _expected_at_first_start(record):
            # A broker creating its group metadata (``__consumer_offsets``) on the
            # first group ever, or handing it over as it stops: aiokafka retries
            # every 100 ms, and it is no error.
            record.levelno, record.levelname = logging.INFO, "INFO"
        if record.levelno < logging.WARNING:
            # The clients' INFO lines (rebalances, assignments) stay, but not the
            # same line again within a second (a failed commit, retried by each of
            # the commits waiting on it, says so once per waiter).
            said, now = (record.name, record.getMessage()), time.monotonic()
            with self._lock:
                again = said == self._said and now - self._said_at < 1.0
                self._said, self._said_at = said, now
            return not again
        text = record.msg if isinstance(record.msg, str) else str(record.msg)
        kind = (record.name, self._DIGITS.sub("#", text)[:120])
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < SUMMARY_EVERY_S:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        if held:
            record.msg = f"{text} ({held} more like it in the last {now - last:.0f} s)"  # type: ignore[operator]
        return True


_installed: _Repeats | None = None


def quiet_client_logs() -> None:
    """Rate-limit the Kafka clients' loggers (once per process)."""
    global _installed
    if _installed is not None:
        return
    _installed = _Repeats()
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).addFilter(_installed)
