"""The Faust app, built from :class:`~dawning_streams.core.settings.Settings`.

:class:`App` is the composition root: it turns the settings into Faust's, and
owns the declaration API (``handler``, ``scheduled``, the message topics and
lanes) and the order in which every part starts and stops (Kafka reachable,
replication checked, topics declared, then the consumer; on stop, the reverse,
with the reason a stop waits). It runs past 400 lines because that order reads
best in one class.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from faust.exceptions import ConsumerNotStarted
from faust.sensors.otel import OpenTelemetryMonitor
from faust.serializers import codecs as faust_codecs
from faust.types import TopicT
from mode import Service, ServiceT

from dawning_streams.bus.message_bus import KafkaMessageBus, NullMessageBus
from dawning_streams.core import codec
from dawning_streams.core.errors import PublishError
from dawning_streams.core.partitioners import partitioner_for
from dawning_streams.core.records import MessageBase, message_types
from dawning_streams.core.settings import Settings, shown
from dawning_streams.handlers.handler import (
    Handler,
    HandlerError,
    HandlerOptions,
    handler_for,
)
from dawning_streams.handlers.timers import REVOKE_WAIT_S
from dawning_streams.kafka import faust_compat
from dawning_streams.kafka.lanes import Lane, LaneGroup
from dawning_streams.kafka.outages import (
    Dependency,
    KafkaUnreachable,
    KafkaWatch,
    quiet_client_logs,
    wait_for_kafka,
)
from dawning_streams.kafka.replication import ReplicationError, check_replication
from dawning_streams.kafka.security import faust_credentials
from dawning_streams.observability.telemetry import Telemetry
from dawning_streams.observability.watchdogs import (
    LoopWatch,
    StopDeadline,
    flush_logs,
    log_thread_exceptions,
)
from dawning_streams.ops import views
from dawning_streams.ops.cli import keep_going_without_a_reader, register_commands
from dawning_streams.ops.host import OpsHost
from dawning_streams.ops.sampler import ClusterSampler
from dawning_streams.ops.web import port_taken
from dawning_streams.services.cache import DistributedCache
from dawning_streams.services.lock import DistributedLock
from dawning_streams.services.mail import Mailer
from dawning_streams.services.redis_pool import RedisPool
from dawning_streams.services.scheduler import Scheduler
from dawning_streams.services.shared_config import SharedConfig

__all__ = ["App", "create_app", "create_bus"]

#: The seed's seven types, whose topics ``Kafka:Topics`` names.
_SEED_TYPES = [cls for cls in message_types().values() if cls.topic_setting]

logger = logging.getLogger(__name__)

#: How long a stop that begins with Kafka unreachable may take (at most
#: ``Worker:StopTimeoutS``): nothing can be committed or acknowledged then, so a
#: longer wait only delays the exit, unless Kafka comes back within it.
STOP_WITHOUT_KAFKA_S = 5.0
#: How long a stop cut short by its deadline waits for the consumer to leave its group.
LEAVE_AT_DEADLINE_S = 2.0
#: A rebalance this long is explained in the log (once): the worker handles nothing meanwhile.
SLOW_REBALANCE_S = 10.0
#: A record handled for longer than this is named in a WARNING (and at each doubling).
LONG_ATTEMPT_S = 60.0
_NOT_HANDLING = "no record being handled"


def _forbid_pickle() -> None:
    """Take Faust's pickle codecs out of its registry.

    Unpickling runs whatever a producer sent, so no topic or table may use it:
    with the codecs gone, naming one fails instead of unpickling.
    """
    for name in [name for name in faust_codecs.codecs if name.startswith("pickle")]:
        del faust_codecs.codecs[name]


_forbid_pickle()


class App(OpsHost):
    """A Faust app that honours every Kafka setting and knows each message's topic."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.dawning_settings = settings
        #: time.monotonic() when the current (or last) rebalance started.
        self.rebalance_started_at: float | None = None
        #: The rebalance a slow-rebalance line was logged for.
        self._noted_rebalance: float | None = None
        #: (handler, topic, partition, offset) being handled -> (since, warnings said).
        self._handling_since: dict[tuple[str, str, int, int], tuple[float, int]] = {}
        kafka = settings.kafka
        session_s = kafka.session_timeout_ms / 1000
        super().__init__(
            kafka.consumer_group_id,
            # dawning:// is this framework's transport (an entry point in pyproject.toml).
            broker=[f"dawning://{server}" for server in kafka.bootstrap_servers],
            web="dawning://",
            autodiscover=False,
            key_serializer="raw",
            value_serializer=codec.CODEC_NAME,
            consumer_auto_offset_reset=kafka.auto_offset_reset,
            broker_session_timeout=session_s,
            broker_heartbeat_interval=kafka.heartbeat_interval_ms / 1000,
            broker_max_poll_interval=kafka.max_poll_interval_ms / 1000,
            # Faust requires the request timeout to cover the session timeout.
            broker_request_timeout=max(90.0, session_s + 30),
            producer_acks=-1 if kafka.producer.acks == "all" else kafka.producer.acks,
            producer_linger=kafka.producer.linger_ms / 1000,
            producer_max_batch_size=kafka.producer.batch_size,
            producer_max_request_size=kafka.producer.max_request_bytes,
            producer_compression_type=(
                None
                if kafka.producer.compression_type == "none"
                else kafka.producer.compression_type
            ),
            producer_partitioner=partitioner_for(kafka.partitioner),
            topic_partitions=kafka.partitions,
            topic_replication_factor=kafka.replication_factor,
            broker_credentials=faust_credentials(kafka.security),
            web_bind=settings.web.host,
            web_host=settings.web.host,
            web_port=settings.web.port,
            # Faust would otherwise read its own environment variables
            # (WEB_PORT, BROKER, ...) over these; the settings are the one source.
            env={},
            **options,
        )
        self.message_topics: dict[type[MessageBase], TopicT] = {
            cls: self._message_topic(cls) for cls in message_types().values()
        }
        self.telemetry = Telemetry(settings)
        self.telemetry.metrics.lag_source = self._consumer_lag
        self.telemetry.metrics.timer_source = self._timer_counts
        self.telemetry.metrics.buffer_source = self._buffer_sizes
        #: Kafka's reachability: logged on each change, on /ready and in metrics.
        self.kafka_state = Dependency("Kafka", ",".join(kafka.bootstrap_servers), self._waiting)
        self._watched: list[Dependency] = []
        self.telemetry.metrics.down_source = lambda: [
            (state.name.lower(), state.down_s) for state in self.dependencies
        ]
        self.kafka_watch = KafkaWatch(kafka, self.kafka_state)
        self._loop_watch = LoopWatch(describe=self._handling)
        #: A SIGINT or SIGTERM has come (see _watch_stop_signals).
        self._signalled = False
        self._stop_deadline = StopDeadline(
            settings.worker.stop_timeout_s,
            self._stopping_state,
            # Not with Kafka unreachable: nothing would answer.
            lambda: (
                self.kafka_state.down_since is None
                and faust_compat.leave_group(self, LEAVE_AT_DEADLINE_S)
            ),
        )
        quiet_client_logs()
        faust_compat.pace_metadata_retries()
        self.on_partitions_revoked.connect(self._timers_revoked, weak=False)  # type: ignore[arg-type]
        # Faust's own sensor records into the same provider, so /metrics and
        # OTLP carry its faust.* metrics too.
        self.monitor = OpenTelemetryMonitor(meter=self.telemetry.metrics.meter)
        self.bus = KafkaMessageBus(self)
        self.redis = RedisPool(settings.redis)
        self.distributed_cache = DistributedCache(self.redis)
        self.shared_config = SharedConfig()
        self.lock = DistributedLock(self.redis)
        self.scheduler = Scheduler(self.redis, self.lock, group=settings.kafka.consumer_group_id)
        self.mailer = Mailer(settings.smtp)
        self.handlers: dict[str, Handler[Any]] = {}
        #: Handler source topics whose records skip Faust's streams (see lanes.py).
        self.lanes: dict[str, Lane | LaneGroup] = {}
        self._declared: list[TopicT] = list(self.message_topics.values())
        #: What the dashboard shows of the cluster, read every few seconds.
        self.sampler = ClusterSampler(self)
        register_commands(self)
        views.install(self)

    def handler(
        self,
        target: type | str | Callable[..., Any] | None = None,
        /,
        *,
        topic: str | None = None,
        name: str | None = None,
        **options: Any,
    ) -> Any:
        """Declare a handler; works bare (``@app.handler``) or called.

        ``target`` is the message type (or a topic name); without it the type
        comes from the function's annotation. Options: ``retry=Retry(...)``,
        ``dead_letter=True``, ``ordered=False``, ``concurrency=1``,
        ``dedupe=Dedupe(...)`` (or ``True``) to skip a ``MessageId`` handled
        before, and ``batch_size``/``batch_within_s`` for a handler of lists. See
        :mod:`dawning_streams.handlers.handler`.
        """
        try:
            chosen = HandlerOptions(**options)
        except TypeError as exc:
            raise HandlerError(f"@handler: {exc}") from None
        declare = functools.partial(handler_for, self, name=name, options=chosen)
        if isinstance(target, str):
            return lambda fn: declare(fn, message_type=None, topic=target)
        if isinstance(target, type):
            return lambda fn: declare(fn, message_type=target, topic=topic)
        if target is None:
            return lambda fn: declare(fn, message_type=None, topic=topic)
        if callable(target):
            return declare(target, message_type=None, topic=topic)
        raise HandlerError(f"@handler takes a message type or a topic name, got {target!r}")

    def worker_init(self) -> None:
        # Called by every ``faust`` command, the worker's included, before it is made.
        super().worker_init()
        keep_going_without_a_reader()

    def scheduled(
        self, *, every_s: float, name: str | None = None, lock_ttl_s: float | None = None
    ) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
        """Run the decorated function every ``every_s`` seconds, on one instance at
        a time (see :mod:`dawning_streams.services.scheduler`); a plain function
        runs in a thread."""

        def decorate(fn: Callable[[], Any]) -> Callable[[], Any]:
            self.scheduler.add(fn, every_s=every_s, name=name, lock_ttl_s=lock_ttl_s)
            return fn

        return decorate

    @property
    def declared_topics(self) -> list[TopicT]:
        """The topics created at start-up: message, handler, retry and dead-letter topics."""
        return list(self._declared)

    def declare_topic(self, topic: TopicT) -> TopicT:
        """Have ``topic`` created at start-up, with the message topics."""
        self._declared.append(topic)
        return topic

    def add_lane(self, lane: Lane) -> None:
        """Have the consumer hand ``lane.topic``'s records to ``lane`` (see lanes.py).

        The handlers of one topic each see every message: their lanes form a
        :class:`LaneGroup`, which hands each record to all of them.
        """
        present = self.lanes.get(lane.topic)
        if present is None:
            self.lanes[lane.topic] = lane
        elif isinstance(present, LaneGroup):
            present.add(lane)
        else:
            self.lanes[lane.topic] = LaneGroup([present, lane])

    def topic_for(self, message_type: type[MessageBase]) -> TopicT:
        """The topic messages of ``message_type`` are published to."""
        topic = self.message_topics.get(message_type)
        if topic is None:
            if message_types().get(message_type.__name__) is not message_type:
                raise TypeError(f"{message_type.__name__} is not a dawning message type")
            # Declared after the app was built (a user's module): declared now.
            topic = self.message_topics[message_type] = self._message_topic(message_type)
            self.declare_topic(topic)
        return topic

    def _message_topic(self, cls: type[MessageBase]) -> TopicT:
        kafka = self.dawning_settings.kafka
        if cls.topic_name is not None:
            seed = {getattr(kafka.topics, t.topic_setting) for t in _SEED_TYPES}
            if cls.topic_name in seed:
                raise TypeError(
                    f"{cls.__module__}.{cls.__qualname__}: topic {cls.topic_name!r} is one of "
                    "the Dawning message topics (Kafka:Topics); one type per topic"
                )
            name = cls.topic_name
        else:
            name = getattr(kafka.topics, cls.topic_setting)
        return self.topic(
            name,
            value_type=cls,
            key_type=str,
            partitions=kafka.partitions,
            replicas=kafka.replication_factor,
        )

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        """Faust's services, then the clients the agents use, and the handlers' lanes."""
        return [
            *super().on_init_dependencies(),
            self.redis,
            self.mailer,
            self.scheduler,
            self.bus,
            self.kafka_watch,
            *self.lanes.values(),
            *(handler.timers for handler in self.handlers.values()),
            *([self.sampler] if self.conf.web_enabled else []),
        ]

    async def on_start(self) -> None:
        # Every setting, with each secret masked, so a log shows what ran.
        logger.info(
            "settings: %s", " ".join(f"{k}={v}" for k, v in shown(self.dawning_settings).items())
        )
        # Whatever publishes from now on, in this loop (a service starting before
        # the bus, say), goes through the worker's producer.
        self.bus.bind_worker(asyncio.get_running_loop())
        if self.in_worker and self.conf.web_enabled:
            # Where Faust's server will listen: Web:Host and Web:Port, unless the
            # command line said otherwise (faust worker --web-port/--web-bind).
            problem = port_taken(
                self.conf.web_bind,
                self.conf.web_port,
                named="--web-port" if self.conf.web_port != self.dawning_settings.web.port else "",
            )
            if problem is not None:
                logger.error("%s", problem)
                self._exit_now(2)
        await super().on_start()
        if self.in_worker:
            # After super(): mode's worker has installed its handlers by now.
            self._watch_stop_signals()
            self._loop_watch.start()
            log_thread_exceptions()
            await self._wait_for_kafka()
            await self._check_replication()
        # Declare every topic with its partition count before any consumer
        # subscribes: a missing topic would be left out of the assignment, or
        # auto-created with the broker's default partition count.
        try:
            await self.bus.declare_topics()
        except PublishError:
            if not self.should_stop:
                raise
            # Told to stop (SIGTERM) while declaring: the producer has stopped
            # under the declaration, and the worker goes on stopping, exit code 0.
            logger.info("stopping: topics not declared")

    async def _wait_for_kafka(self) -> None:
        """A worker started while Kafka is unreachable waits for it, serving
        ``/health`` (200) and ``/ready`` (503, naming Kafka) meanwhile."""
        timeout_s = self.dawning_settings.worker.start_timeout_s
        try:
            await wait_for_kafka(self.dawning_settings.kafka, self.kafka_state, timeout_s=0)
        except KafkaUnreachable:
            pass
        else:
            return
        if self.conf.web_enabled:
            await self.web.maybe_start()
        try:
            await wait_for_kafka(self.dawning_settings.kafka, self.kafka_state, timeout_s=timeout_s)
        except KafkaUnreachable as exc:
            logger.error("%s", exc)
            self._exit_now(1)

    async def _check_replication(self) -> None:
        """Refuse to start, in one line naming ``Kafka:ReplicationFactor``, on a
        cluster with too few live brokers; warn of topics replicated otherwise
        than the settings say (:mod:`dawning_streams.kafka.replication`)."""
        try:
            await check_replication(self.dawning_settings.kafka, self._all_topics())
        except ReplicationError as exc:
            logger.error("%s", exc)
            self._exit_now(1)

    def _all_topics(self) -> list[str]:
        """Every topic the app declares, with its tables' changelogs."""
        return sorted(
            {topic.get_topic_name() for topic in self.declared_topics}
            | {table.changelog_topic.get_topic_name() for table in self.tables.values()}
        )

    def on_rebalance_start(self) -> None:
        # /ready tells a rebalance that never finishes from one under way.
        self.rebalance_started_at = time.monotonic()
        super().on_rebalance_start()

    @Service.timer(5.0)
    async def _note_slow_rebalance(self) -> None:
        """Say why a worker has no partitions yet, once per rebalance that lasts."""
        started = self.rebalance_started_at
        if not self.rebalancing or started is None or started == self._noted_rebalance:
            return
        waited_s = time.monotonic() - started
        if waited_s >= SLOW_REBALANCE_S:
            self._noted_rebalance = started
            logger.info(
                "the group has been rebalancing for %.0f s, so this worker handles nothing yet: "
                "Kafka waits for every member to join again, and for one that ended without "
                "leaving the group (killed, or stopped while Kafka was unreachable) until "
                "Kafka:SessionTimeoutMs (%d ms) has passed since it was last heard from",
                waited_s,
                self.dawning_settings.kafka.session_timeout_ms,
            )

    @Service.timer(10.0)
    async def _note_long_attempts(self) -> None:
        """Name a record a handler has been on for LONG_ATTEMPT_S, and again
        each time that doubles: its lane takes nothing else meanwhile, which
        shows elsewhere only as lag."""
        now = time.monotonic()
        seen = self._handling_since
        current: dict[tuple[str, str, int, int], tuple[float, int]] = {}
        for entry in list(self.lanes.values()):
            for lane in entry.lanes if isinstance(entry, LaneGroup) else [entry]:
                for tp, offset in lane.in_progress():
                    record = (lane.handler or lane.topic, tp.topic, tp.partition, offset)
                    current[record] = seen.get(record, (now, 0))
        for record, (since, said) in current.items():
            running_s = now - since
            # 1 from LONG_ATTEMPT_S, 2 from twice that, 3 from four times...
            level = int(running_s / LONG_ATTEMPT_S).bit_length()
            if level > said:
                current[record] = (since, level)
                handler, topic, partition, offset = record
                logger.warning(
                    "%s has been handling %s/%d@%d for %.0f s; its lane takes no other"
                    " record meanwhile (timeout_s= on the handler bounds an attempt)",
                    handler,
                    topic,
                    partition,
                    offset,
                    running_s,
                )
        self._handling_since = current

    async def on_started(self) -> None:
        await super().on_started()
        # What exists now (Faust, aiokafka, the agents) lives as long as the
        # worker. Kept out of the collector's full passes, it no longer makes
        # each of them stall the event loop, and every partition, for tens of ms.
        gc.freeze()

    async def on_stop(self) -> None:
        if self.in_worker:
            # Armed already if a signal began the stop; from now if not.
            self._stop_deadline.arm(self._stop_timeout_s())
            left_s = self._stop_deadline.left_s()
            if self.kafka_state.down_since is not None:
                logger.info(
                    "stopping with Kafka unreachable for %.0f s: within %.0f s, and what is not "
                    "committed is handled again by its partitions' next owner",
                    self.kafka_state.down_s,
                    left_s,
                )
            if (handling := self._handling()) != _NOT_HANDLING:
                logger.info(
                    "stopping: waiting up to %.0f s for the handlers, %s (SIGINT or SIGTERM "
                    "again stops now; what is not finished is handled again by its "
                    "partitions' next owner)",
                    left_s,
                    handling,
                )
        await super().on_stop()
        # A process that goes on (tests, the benchmark) may collect it again.
        gc.unfreeze()
        # Export what is pending and stop the OTLP exporters' threads; they
        # block while they send, so off the loop.
        await asyncio.to_thread(self.telemetry.shutdown)

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        self.bus.unbind_worker()

    async def flush_bus(self) -> None:
        """Wait for the acks of what the bus has sent (the consumer's commit calls this)."""
        await self.bus.flush()

    async def _timers_revoked(self, sender: Any, revoked: Iterable[Any], **_: Any) -> None:
        """Nothing fires until the new assignment is recovered; what is firing may
        finish, all handlers' at once and for at most ``REVOKE_WAIT_S``."""
        firing = [task for handler in self.handlers.values() for task in handler.timers.revoked()]
        if firing:
            await asyncio.wait(firing, timeout=REVOKE_WAIT_S)

    @property
    def dependencies(self) -> list[Dependency]:
        """The services this worker needs, each with its reachability."""
        return [
            self.kafka_state,
            self.redis.reachability,
            self.mailer.reachability,
            *self._watched,
        ]

    def watch(self, dependency: Dependency) -> None:
        """Count another service among :attr:`dependencies`: its time down is a
        metric (``dawning.dependency.down``), beside Kafka's, Redis's and SMTP's."""
        self._watched.append(dependency)

    def _waiting(self) -> str:
        """What waits on Kafka, for the outage's summary line."""
        pending = held = 0
        for handler in list(self.handlers.values()):
            stats = handler.timers.stats()
            pending += stats.pending
            held += stats.held_keys
        queued = self._buffer_sizes()
        spooled = self.bus.spool_count() or 0
        return (
            f"{spooled} in the spool, {queued[0] if queued else 0} table writes queued, "
            f"{pending} timers, {held} held keys"
        )

    def _buffer_sizes(self) -> tuple[int, int] | None:
        buffer = getattr(self.producer, "buffer", None)
        if buffer is None or not hasattr(buffer, "high_water"):
            return None
        return buffer.size, buffer.high_water

    def _stopping_state(self) -> str:
        """What a stop that ran out of time leaves behind, for its last log line."""
        state = "Kafka " + (
            f"unreachable for {self.kafka_state.down_s:.0f} s"
            if self.kafka_state.down_since is not None
            else "reachable"
        )
        return (
            f"{state}; {self._waiting()}; {self._handling()}. Records not acknowledged are "
            "handled again by their partitions' next owner; the spool is delivered on the "
            "next start."
        )

    def _handling(self) -> str:
        """The records handlers are still on (a stop waits for them), by handler."""
        lanes = [
            lane
            for entry in list(self.lanes.values())
            for lane in (entry.lanes if isinstance(entry, LaneGroup) else [entry])
        ]
        busy = [
            f"{lane.handler or lane.topic} on "
            + ", ".join(f"{tp.topic}/{tp.partition}@{offset}" for tp, offset in records[:3])
            + (f" and {len(records) - 3} more" if len(records) > 3 else "")
            for lane in lanes
            if (records := lane.in_progress())
        ]
        return "still handling " + "; ".join(busy) if busy else _NOT_HANDLING

    def _stop_timeout_s(self) -> float:
        """However the stop goes (a broker that never answers, a handler that
        blocks the loop), the process ends within Worker:StopTimeoutS; with
        Kafka already unreachable, where nothing can be committed or
        acknowledged, much sooner."""
        timeout_s = float(self.dawning_settings.worker.stop_timeout_s)
        if self.kafka_state.down_since is not None:
            timeout_s = min(timeout_s, STOP_WITHOUT_KAFKA_S)
        return timeout_s

    def _watch_stop_signals(self) -> None:
        """Count the stop's deadline from SIGINT or SIGTERM itself, and make a
        second one end the process at once, as Celery's second Ctrl-C does.

        mode's handlers, which begin the stop, run on the event loop (asyncio
        hears of the signal through its wake-up file descriptor, which this
        leaves in place): a handler that blocks the loop would hold them back,
        and with them the deadline. These run in the main thread between any
        two bytecodes, even during ``time.sleep``, and only set fields that
        the deadline's own thread reads.
        """
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread
        self._stop_deadline.start()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._stop_signalled)

    def _stop_signalled(self, signum: int, frame: object) -> None:
        if self._signalled or self._stop_deadline.armed:  # a stop is under way
            self._stop_deadline.now(signal.Signals(signum).name)
        else:
            self._signalled = True
            self._stop_deadline.arm(self._stop_timeout_s())

    @staticmethod
    def _exit_now(code: int) -> None:
        flush_logs()
        os._exit(code)

    def _timer_counts(self) -> Iterable[tuple[str, int, int, int]]:
        """(handler, pending timers, held keys, stuck keys) per handler, on this worker."""
        for name, handler in list(self.handlers.items()):
            stats = handler.timers.stats()
            yield name, stats.pending, stats.held_keys, len(stats.stuck_keys)

    def _consumer_lag(self) -> Iterable[tuple[str, int, int]]:
        """(topic, partition, end offset - committed offset) per assigned partition."""
        consumer = faust_compat.worker_consumer(self)
        if consumer is None:
            return []
        lags = []
        committed = faust_compat.committed_offsets(consumer)
        try:
            # The OTLP reader asks from its own thread; a rebalance or a stop
            # may change the assignment meanwhile, and then this reading is skipped.
            for tp in sorted(consumer.assignment()):
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    lag = max(0, highwater - (committed.get(tp) or 0))
                    lags.append((tp.topic, tp.partition, lag))
        except (RuntimeError, ConsumerNotStarted):
            return []
        return lags


def create_app(settings: Settings | None = None, **options: Any) -> App:
    """A new app from ``settings`` (default: :meth:`Settings.load`)."""
    return App(settings if settings is not None else Settings.load(), **options)


def create_bus(settings: Settings) -> KafkaMessageBus | NullMessageBus:
    """The bus ``settings`` call for: Kafka, or the null bus when Kafka is disabled."""
    if not settings.kafka.enabled:
        return NullMessageBus()
    return create_app(settings).bus
