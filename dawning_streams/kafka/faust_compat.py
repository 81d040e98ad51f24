"""Every private name of Faust, aiokafka and the OpenTelemetry SDK the framework relies on.

The framework reads a few things these libraries keep private (a consumer's
committed offsets, the recovery's progress, a connection's state), and its
transport overrides some of Faust's private methods to decide when offsets
are committed. A change to any of these in an upgrade is more likely to lose
or repeat messages silently than to fail, so:

* every private read goes through a function here, and nowhere else;
* :mod:`dawning_streams.kafka.transport` (the one subclass of Faust's consumer and
  producer) overrides the private methods listed in :data:`OVERRIDDEN`;
* at import, :func:`check` verifies the pinned versions and the shape of every
  name used (that it exists, and each method's parameters), and raises
  :class:`FaustCompatError` naming each difference. A worker on an untested
  Faust does not start.

Public hooks are used where they exist: the transport and the web server are
Faust drivers, registered by entry points (``faust.transports`` and
``faust.web.drivers`` in ``pyproject.toml``), not by overriding the app.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import threading
import weakref
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from importlib.metadata import version
from typing import Any

import aiokafka
import faust
import faust.streams
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.offset import OffsetRequest
from faust.models.fields import FieldDescriptor
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from opentelemetry.sdk.metrics.export import MetricReader, MetricsData

from dawning_streams.core.errors import DawningError

__all__ = [
    "FaustCompatError",
    "ReceiveMetricsHook",
    "at_main_thread_exit",
    "call_in_consumer_thread",
    "check",
    "cluster_metadata",
    "committed_offsets",
    "consumer_metadata",
    "leave_group",
    "list_offsets",
    "new_producer",
    "on_metadata_update",
    "pace_metadata_retries",
    "record_metadata_included",
    "recovery_progress",
    "refresh_metadata",
    "set_current_event",
    "set_fetch_max_wait",
    "worker_consumer",
]

#: The versions whose internals this module was checked against.
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

#: (owner, method, its parameters): private or internal methods that
#: :mod:`dawning_streams.kafka.transport` overrides or calls.
OVERRIDDEN: tuple[tuple[type, str, tuple[str, ...]], ...] = (
    (faust_aiokafka.Consumer, "_getmany", ("self", "active_partitions", "timeout")),
    (faust_aiokafka.Consumer, "_new_offset", ("self", "tp")),
    (faust_aiokafka.Consumer, "_commit_tps", ("self", "tps", "start_new_transaction")),
    (faust_aiokafka.Consumer, "_filter_tps_with_pending_acks", ("self", "topics")),
    (faust_aiokafka.Consumer, "perform_seek", ("self",)),
    (faust_aiokafka.Consumer, "seek_to_committed", ("self",)),
    (
        faust_aiokafka.Consumer,
        "threadsafe_partitions_assigned",
        ("self", "receiver_loop", "assigned", "generation_id"),
    ),
    (
        faust_aiokafka.Consumer,
        "threadsafe_partitions_revoked",
        ("self", "receiver_loop", "revoked"),
    ),
    (faust_aiokafka.Producer, "_settings_extra", ("self",)),
    (faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer", ("self",)),
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer", ("self", "transport")),
    (faust_aiokafka.Consumer, "_new_consumer_thread", ("self",)),
    (ProducerBuffer, "put", ("self", "fut")),
    (faust.App, "_new_producer", ("self",)),
    (aiokafka.AIOKafkaClient, "fetch_all_metadata", ("self",)),
    (aiokafka.AIOKafkaClient, "force_metadata_update", ("self",)),
    (ClusterMetadata, "add_listener", ("self", "listener")),
    (aiokafka.AIOKafkaClient, "_metadata_update", ("self", "cluster_metadata", "topics")),
    (AIOKafkaAdminClient, "_send_request", ("self", "request", "node_id")),
    (GroupCoordinator, "_maybe_leave_group", ("self",)),
    (MetricReader, "_receive_metrics", ("self", "metrics_data", "timeout_millis", "kwargs")),
)

#: (owner, attribute): private attributes an instance of ``owner`` gets from
#: one of its methods (they are not on the class, so the check reads the
#: methods' code for an assignment or a read of the name).
ATTRIBUTES: tuple[tuple[type, str], ...] = (
    (faust_aiokafka.Consumer, "_committed_offset"),
    (faust_aiokafka.Consumer, "_acked"),
    (faust_aiokafka.Consumer, "_gap"),
    (faust_aiokafka.Consumer, "_thread"),
    (faust_aiokafka.AIOKafkaConsumerThread, "method_queue"),
    (faust_aiokafka.AIOKafkaConsumerThread, "parent_loop"),
    (Recovery, "_recovery_started_at"),
    (Recovery, "_active_events_received_at"),
    (faust.App, "_consumer"),
    (aiokafka.AIOKafkaConsumer, "_client"),
    (aiokafka.AIOKafkaConsumer, "_coordinator"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_consumer"),
    (aiokafka.AIOKafkaConsumer, "_fetch_max_wait_ms"),
    (aiokafka.AIOKafkaClient, "_conns"),
    (aiokafka.AIOKafkaClient, "_retry_backoff"),
    # Not private, but undocumented: core/records.py reads it to skip coercion.
    (FieldDescriptor, "lazy_coercion"),
    (faust.Record, "_options"),
)


class FaustCompatError(DawningError):
    """An installed library differs from the one this framework was checked against."""


def _parameters(function: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


def _named_in_methods(owner: type, attribute: str) -> bool:
    for klass in owner.__mro__:
        for member in vars(klass).values():
            code = getattr(member, "__code__", None) or getattr(
                getattr(member, "fget", None), "__code__", None
            )
            if code is not None and attribute in code.co_names:
                return True
    return False


def problems() -> list[str]:
    """Each way the installed libraries differ from what this module expects."""
    found = [
        f"{package} is {version(package)}, this framework is checked against {pinned}"
        for package, pinned in PINNED.items()
        if version(package) != pinned
    ]
    for owner, name, parameters in OVERRIDDEN:
        method = getattr(owner, name, None)
        where = f"{owner.__module__}.{owner.__qualname__}.{name}"
        if method is None:
            found.append(f"{where} is gone")
        elif (seen := _parameters(method)) != parameters:
            found.append(f"{where} takes {seen}, expected {parameters}")
    for owner, attribute in ATTRIBUTES:
        if not _named_in_methods(owner, attribute):
            found.append(f"{owner.__module__}.{owner.__qualname__} no longer has {attribute}")
    if not isinstance(getattr(faust.streams, "_current_event", None), ContextVar):
        found.append("faust.streams._current_event is no longer a ContextVar")
    if not callable(getattr(threading, "_register_atexit", None)):
        found.append("threading._register_atexit is gone")
    return found


def check() -> None:
    """Raise :class:`FaustCompatError` naming every difference :func:`problems` finds."""
    found = problems()
    if found:
        pins = ", ".join(f"{package}=={pinned}" for package, pinned in PINNED.items())
        raise FaustCompatError(
            "dawning-streams relies on internals that changed: "
            + "; ".join(found)
            + f". Install the pinned versions ({pins})."
        )


# -- private reads ---------------------------------------------------------------


def at_main_thread_exit(function: Callable[[], None]) -> None:
    """Call ``function`` when the main thread ends, before ``concurrent.futures``
    stops taking work.

    ``atexit`` runs too late for anything that hands work to a thread pool
    (SQLite calls, asyncio's name lookups): by then every executor refuses new
    work ("cannot schedule new futures after interpreter shutdown").
    ``threading._register_atexit`` is the hook concurrent.futures itself uses;
    a function registered later runs earlier, so before the executors stop.
    """
    try:
        threading._register_atexit(function)  # type: ignore[attr-defined]
    except RuntimeError:  # the interpreter is already shutting down
        atexit.register(function)


def committed_offsets(consumer: Any) -> Mapping[TP, int | None]:
    """The offsets Faust's consumer last committed, per partition (its own view)."""
    return consumer._committed_offset  # type: ignore[no-any-return]


def new_producer(app: object) -> Any:
    """A fresh producer for the Faust app ``app`` (one whose start failed cannot be
    started again)."""
    return app._new_producer()  # type: ignore[attr-defined]


def pace_metadata_retries() -> None:
    """Make a failed metadata update wait ``retry_backoff_ms`` before it reports
    (once per process, for every aiokafka client).

    With no broker answering, aiokafka's producer (a table write waiting) and
    fetcher ask for metadata again as soon as the last request failed, and a
    refused connection fails at once: a worker spun on it, about 3,000 times a
    second through a 60 s outage, and took a core from everything else.
    """
    update = aiokafka.AIOKafkaClient._metadata_update
    if getattr(update, "paced", False):
        return

    async def paced_update(self: Any, cluster_metadata: Any, topics: Any) -> Any:
        updated = await update(self, cluster_metadata, topics)
        if not updated:
            await asyncio.sleep(self._retry_backoff)
        return updated

    paced_update.paced = True  # type: ignore[attr-defined]
    aiokafka.AIOKafkaClient._metadata_update = paced_update  # type: ignore[method-assign]


def leave_group(app: object, timeout_s: float) -> bool:
    """From any thread, have a Faust app's consumer leave its group (LeaveGroup)
    on the consumer's own thread, waiting at most ``timeout_s``; False when it
    had not joined, or did not leave in time."""
    consumer = getattr(app, "_consumer", None)
    thread = getattr(consumer, "_thread", None)
    client = getattr(thread, "_consumer", None)
    loop = getattr(thread, "thread_loop", None)
    if client is None or loop is None or loop.is_closed():
        return False
    coordinator = client._coordinator
    if coordinator is None or coordinator.generation <= 0:
        return False
    leaving = asyncio.run_coroutine_threadsafe(coordinator._maybe_leave_group(), loop)
    try:
        leaving.result(timeout_s)
    except Exception:
        leaving.cancel()
        return False
    return True


def worker_consumer(app: object) -> Any:
    """A Faust app's consumer if one was made, without making one (``app.consumer`` would)."""
    return app._consumer  # type: ignore[attr-defined]


def on_metadata_update(
    consumer: aiokafka.AIOKafkaConsumer, listener: Callable[[ClusterMetadata], None]
) -> None:
    """Call ``listener`` with the metadata after each update of ``consumer``'s (on its loop)."""
    consumer._client.cluster.add_listener(listener)


def consumer_metadata(consumer: aiokafka.AIOKafkaConsumer) -> ClusterMetadata:
    """The metadata ``consumer``'s client holds now (read on its loop)."""
    return consumer._client.cluster


def refresh_metadata(consumer: aiokafka.AIOKafkaConsumer) -> None:
    """Ask ``consumer``'s client for a metadata update now, in the background."""
    consumer._client.force_metadata_update()


async def cluster_metadata(consumer: aiokafka.AIOKafkaConsumer) -> ClusterMetadata:
    """Fresh metadata of every topic, through a started aiokafka consumer's client
    (aiokafka's public ``topics()`` returns names only, not partitions)."""
    return await consumer._client.fetch_all_metadata()


async def describe_topics(admin: AIOKafkaAdminClient, topics: list[str]) -> list[Any]:
    """``admin.describe_topics(topics)`` without creating any of them: aiokafka
    asks with auto-creation allowed, so a broker with ``auto.create.topics.enable``
    would make a missing topic, with its default partitions and replicas."""
    request = MetadataRequest(topics, allow_auto_topic_creation=False)
    return (await admin._send_request(request)).to_object()["topics"]  # type: ignore[no-any-return]


def set_fetch_max_wait(consumer: aiokafka.AIOKafkaConsumer, ms: int) -> None:
    """Set ``fetch_max_wait_ms`` of a consumer not yet started: Faust builds its
    worker consumer with a fixed 1,500 ms and no setting for it."""
    consumer._fetch_max_wait_ms = ms


def record_metadata_included(record_type: type[faust.Record]) -> bool:
    """Whether ``record_type`` writes Faust's ``__faust`` metadata (its Python
    module path) into what it serialises (``include_metadata``, a class option
    Faust keeps only on the private ``_options``)."""
    return bool(record_type._options.include_metadata)


#: ``list_offsets``'s timestamps: the first offset, and the end offset.
EARLIEST, LATEST = -2, -1


async def list_offsets(
    admin: AIOKafkaAdminClient, leader: int, tps: list[Any], timestamp: int
) -> dict[tuple[str, int], int]:
    """The first (``EARLIEST``) or end (``LATEST``) offset of each of ``tps``, asked
    of their leader. aiokafka's consumer would first ask for the topics'
    metadata with auto-creation allowed, and bring back a topic deleted meanwhile."""
    by_topic: dict[str, list[tuple[int, int]]] = {}
    for tp in tps:
        by_topic.setdefault(tp.topic, []).append((tp.partition, timestamp))
    request = OffsetRequest(-1, 0, list(by_topic.items()))
    response = (await admin._send_request(request, leader)).to_object()
    return {
        (topic["topic"], p["partition"]): p["offset"]
        for topic in response["topics"]
        for p in topic["partitions"]
        if p["error_code"] == 0
    }


def recovery_progress(recovery: Recovery) -> tuple[float | None, Mapping[TP, float]]:
    """(monotonic time the current recovery started, when each active partition
    last received a changelog record; one that has received none is missing):
    Faust has no public view of them."""
    return recovery._recovery_started_at, recovery._active_events_received_at


async def call_in_consumer_thread(thread: Any, apply: Callable[[Any], None], *, wait: bool) -> None:
    """Run ``apply(aiokafka_consumer)`` on Faust's consumer thread; with ``wait``,
    until it has run (without, a stopping worker does not wait on a stopping thread)."""
    consumer = thread._ensure_consumer()
    done = await thread.method_queue.call(thread.parent_loop.create_future(), apply, consumer)
    if wait:
        await done


def set_current_event(current: Any) -> None:
    """Make ``current`` what Faust's ``current_event()`` returns in this task
    (tables read the partition they write to from it). Keep ``current`` alive."""
    faust.streams._current_event.set(weakref.ref(current))  # type: ignore[arg-type]


class ReceiveMetricsHook:
    """A metric reader mixin: ``self._extra(data)`` added to what the SDK collected
    (the SDK has no public hook between collecting and exporting)."""

    _extra: Callable[[MetricsData | None], MetricsData | None]

    def _receive_metrics(
        self, metrics_data: MetricsData | None, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        super()._receive_metrics(  # type: ignore[misc]
            self._extra(metrics_data), timeout_millis=timeout_millis, **kwargs
        )


check()
