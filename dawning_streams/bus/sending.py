"""Sending from any process: the bus's producers outside a worker.

A worker publishes through its Faust producer, on its own event loop. Every
other caller (a script under ``asyncio.run``, an aiohttp or Starlette app, a
test, a thread) gets a producer of its own, with no set-up call:

* :class:`LoopSender`: one per event loop, started on the first publish in
  that loop. It is a librdkafka producer configured as the worker's
  (acks, idempotence, partitioner, batching, security) behind the same
  :class:`~dawning_streams.bus.publisher.Publisher` and spool, so it publishes at
  the same speed, from any number of tasks. When the loop ends (``asyncio.run``
  returning, a server shutting down) it delivers what its spool holds if the
  broker answers within ``Worker:StopTimeoutS``, closes the producer, and names
  in one WARNING line anything left in the spool.
* :class:`BlockingSender`: one per process, for code with no event loop
  (``publish_blocking``, ``delay_blocking``): a loop on a thread of its own,
  safe to call from any number of threads, closed when the main thread ends
  (delivering its spool, or naming what is left in it, as a loop's sender does).

A sender declares the app's message and timer topics it finds missing, with
the configured partitions, before its first send: a script may run before any
worker ever has. A spool is only for a broker that does not answer: a sender
that has not started yet starts, it does not spool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from dawning_streams.bus.host import BusHost
from dawning_streams.bus.publisher import BrokerUnavailable, Publisher
from dawning_streams.bus.rdkafka import RdkafkaPort
from dawning_streams.bus.spool import Spool
from dawning_streams.core.errors import DawningError, UsageError
from dawning_streams.kafka import faust_compat
from dawning_streams.kafka.security import client_options

__all__ = ["AdminTopics", "BlockingSender", "LoopSender", "Senders"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class AdminTopics:
    """The app's topics, declared with an admin client of its own (no Faust app runs)."""

    def __init__(self, app: BusHost) -> None:
        self.app = app
        self.settings = app.dawning_settings
        #: Topics known to exist (or not the app's to declare).
        self._known: set[str] = set()

    def _wanted(self) -> dict[str, tuple[int, int, dict[str, str]]]:
        """name -> (partitions, replicas, config) of what the app declares and a
        sender may publish to (changelogs are the worker's), each with the
        settings' ``min.insync.replicas`` as a worker creates them."""
        kafka = self.settings.kafka
        return {
            topic.get_topic_name(): (
                topic.partitions or kafka.partitions,
                topic.replicas or kafka.replication_factor,
                {**kafka.topic_config(), **{k: str(v) for k, v in (topic.config or {}).items()}},
            )
            for topic in self.app.declared_topics
            if not topic.compacting
        }

    async def declare(self) -> None:
        """Create the topics the app declares that the cluster lacks."""
        wanted = self._wanted()
        admin = AIOKafkaAdminClient(**client_options(self.settings.kafka))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(name, partitions, replicas, topic_configs=config)
                for name, (partitions, replicas, config) in wanted.items()
                if name not in existing
            ]
            if missing:
                with suppress(TopicAlreadyExistsError):  # another process made them meanwhile
                    await admin.create_topics(missing)
        except KafkaConnectionError as exc:
            raise BrokerUnavailable(f"could not declare topics: {exc}") from exc
        except KafkaError as exc:
            # Not allowed to create topics, say: they may exist, or be made by the worker.
            logger.warning("could not declare the app's topics (%r); publishing anyway", exc)
        finally:
            await admin.close()
        self._known |= set(wanted)

    async def ensure(self, topic: str) -> None:
        if topic not in self._known:
            # A message type declared since (a module imported later), or any topic.
            await self.declare()
            self._known.add(topic)

    async def close(self) -> None:
        return None


class LoopSender:
    """The bus's producer in one event loop that is not the worker's."""

    def __init__(self, app: BusHost, loop: asyncio.AbstractEventLoop) -> None:
        settings = app.dawning_settings
        self.loop = loop
        self.port = RdkafkaPort(
            settings,
            AdminTopics(app),
            client_id=f"{settings.instance_name}-sender",
            sends=app.telemetry.metrics.sends,
            close_timeout_s=min(
                settings.kafka.spool.send_timeout_ms / 1000, settings.worker.stop_timeout_s
            ),
        )
        self.spool = Spool.of(settings)
        self.publisher = Publisher(
            self.port,
            self.spool,
            send_timeout_s=settings.kafka.spool.send_timeout_ms / 1000,
            sends=app.telemetry.metrics.sends,
            loop=loop,
        )
        self._stop_timeout_s = settings.worker.stop_timeout_s
        self._starting: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None
        self._ready = False
        self.closed = False

    @property
    def ready(self) -> bool:
        """Whether the publisher has started (:meth:`started` returns it at once)."""
        return self._ready

    async def started(self) -> Publisher:
        """The publisher, started on first use (by one caller; the others wait)."""
        if self._ready:
            return self.publisher
        if self.closed:
            raise DawningError("this event loop's sender was closed (`async with app.bus` ended)")
        if self._starting is None:
            self._starting = self.loop.create_task(self._start())
        await asyncio.shield(self._starting)
        self._ready = True
        return self.publisher

    async def _start(self) -> None:
        await self.publisher.start()
        self._guard = self.loop.create_task(self._close_with_loop(), name="dawning sender")

    async def _close_with_loop(self) -> None:
        # Cancelled with every other task when the loop's owner shuts it down
        # (asyncio.run returning, a server stopping): close while it still runs.
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await self.close()

    async def close(self) -> None:
        """Deliver what the spool holds if the broker answers in time, then stop."""
        if self.closed or self._starting is None:
            self.closed = True
            return
        self.closed = True
        self._ready = False
        if self._guard is not None and self._guard is not asyncio.current_task():
            self._guard.cancel()
        if self.spool.count:
            # This holds the process's exit: say why, once it is not at once.
            saying = self.loop.call_later(1.0, self._say_draining)
            with suppress(Exception):
                async with asyncio.timeout(self._stop_timeout_s):
                    await self.port.connect()
                    await self.publisher.drain()
            saying.cancel()
        left, path = self.spool.count, self.spool.path
        await self.publisher.stop()
        if left:
            logger.warning(
                "%d messages were not delivered and wait in the spool %s: the next process "
                "started with the same settings delivers them",
                left,
                path,
            )

    def _say_draining(self) -> None:
        logger.warning(
            "delivering the %d messages of the spool %s before this closes: for at most"
            " Worker:StopTimeoutS (%d s) while Kafka does not answer; Ctrl-C leaves them"
            " there for the next process",
            self.spool.count,
            self.spool.path,
            self._stop_timeout_s,
        )


class BlockingSender:
    """A :class:`LoopSender` on a thread of its own, for callers without a loop."""

    def __init__(self, app: BusHost) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="dawning-sender", daemon=True
        )
        self._thread.start()
        self.sender = LoopSender(app, self.loop)
        self._stop_timeout_s = app.dawning_settings.worker.stop_timeout_s
        faust_compat.at_main_thread_exit(self.close)

    @property
    def spool(self) -> Spool:
        return self.sender.spool

    def call(
        self, use: Callable[[Publisher], Awaitable[T]], *, timeout_s: float | None = None
    ) -> T:
        """Run ``use(publisher)`` on the sender's loop and wait for its result;
        after ``timeout_s``, cancel it and raise ``TimeoutError``."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise UsageError(
                "a blocking publish would block this running event loop; "
                "use `await bus.publish(...)` (or `await task.delay(...)`) here"
            )

        async def run() -> T:
            return await use(await self.sender.started())

        running = asyncio.run_coroutine_threadsafe(run(), self.loop)
        try:
            return running.result(timeout_s)
        except TimeoutError:  # concurrent.futures' is the builtin one
            running.cancel()
            raise

    def close(self) -> None:
        """Deliver or keep what is spooled, and stop the thread (at process exit)."""
        if not self._thread.is_alive():
            return
        done = asyncio.run_coroutine_threadsafe(self.sender.close(), self.loop)
        try:
            done.result(self._stop_timeout_s + 5)
        except KeyboardInterrupt:
            # Ctrl-C while the spool waits on Kafka: leave it for the next process.
            done.cancel()
            logger.warning(
                "interrupted: %d messages stay in the spool %s for the next process",
                self.spool.count,
                self.spool.path,
            )
        except Exception:
            logger.debug("closing the blocking sender failed", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class Senders:
    """The senders of one app: one per event loop, and the blocking one."""

    def __init__(self, app: BusHost) -> None:
        self.app = app
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopSender] = (
            weakref.WeakKeyDictionary()
        )
        #: The sender last asked for: nearly always the one asked for next (one
        #: read, where the weak mapping makes a weak reference per lookup).
        self._last: LoopSender | None = None
        self._blocking: BlockingSender | None = None
        self._lock = threading.Lock()
        _every_senders.add(self)

    def after_fork(self) -> None:
        """In a forked child (gunicorn ``--preload``, ``multiprocessing``): start afresh.

        The parent's senders did not come along: their threads do not exist in
        the child, and librdkafka is not fork-safe, so their producers must
        neither be used nor destroyed there (destroying one joins threads that
        are not there). They are kept, unused, for the child's lifetime.
        """
        _left_by_the_parent.extend([*self._by_loop.values(), self._blocking])
        self._by_loop = weakref.WeakKeyDictionary()
        self._last = None
        self._blocking = None
        self._lock = threading.Lock()

    def for_loop(self, loop: asyncio.AbstractEventLoop) -> LoopSender:
        sender = self._last
        if sender is not None and sender.loop is loop and not sender.closed:
            return sender
        sender = self._by_loop.get(loop)
        if sender is None or sender.closed:
            sender = self._by_loop[loop] = LoopSender(self.app, loop)
        self._last = sender
        return sender

    async def close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        sender = self._by_loop.pop(loop, None)
        if self._last is sender:
            self._last = None
        if sender is not None:
            await sender.close()

    def blocking(self) -> BlockingSender:
        with self._lock:
            if self._blocking is None:
                self._blocking = BlockingSender(self.app)
            return self._blocking

    def spool_count(self) -> int | None:
        senders: list[Any] = list(self._by_loop.values())
        if self._blocking is not None:
            senders.append(self._blocking.sender)
        counts = [sender.spool.count for sender in senders]
        return sum(counts) if counts else None


#: Every app's senders, and what a forked child inherited from them (see ``after_fork``).
_every_senders: weakref.WeakSet[Senders] = weakref.WeakSet()
_left_by_the_parent: list[object] = []


def _after_fork_in_child() -> None:
    for senders in list(_every_senders):
        senders.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
