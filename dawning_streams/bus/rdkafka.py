"""The bus's producer: librdkafka (confluent-kafka), in the worker and in every other process.

:class:`RdkafkaPort` is the :class:`~dawning_streams.bus.publisher.ProducerPort`
of every :class:`~dawning_streams.bus.publisher.Publisher`: the worker's, and
each event loop's in other processes. Faust's own producer (table changelogs,
Faust's sends) stays on aiokafka. librdkafka batches, compresses and sends on
threads of its own, outside the GIL's way; this module only hands it records
and turns its delivery reports into futures.

Delivery reports are served on the event loop that sent the records, not on a
thread: while records await their ack the loop calls ``poll(0)`` every
millisecond (a non-blocking call that runs the due callbacks), so no thread
hands each report over to the loop, and no call ever blocks the loop.

Every librdkafka error is translated here: a record no retry will get through
(too large, not authorised, invalid) raises :class:`RefusedError`, anything
else (no broker answers, no ack in time, a purged queue) :class:`BrokerUnavailable`,
which the publisher answers by spooling.

It passes 400 lines so that one reading covers a record's whole life in the
producer: configuration, send, report, flush and close (a record whose caller
gave up is still flushed, never purged, before the producer closes).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Awaitable
from contextlib import suppress
from typing import Any, Protocol

import confluent_kafka
from aiokafka.structs import RecordMetadata, TopicPartition

from dawning_streams.bus.publisher import BrokerUnavailable, RefusedError
from dawning_streams.core.settings import KafkaSecuritySettings, Settings

__all__ = ["RdkafkaPort", "Topics", "producer_config"]

logger = logging.getLogger(__name__)

#: librdkafka's own log lines (connection failures, retries), rate-limited with
#: the other Kafka clients' (:func:`dawning_streams.kafka.outages.quiet_client_logs`).
CLIENT_LOGGER = "confluent_kafka.producer"

#: How often the loop serves delivery reports while records await their ack,
#: and, after a second with none, while the broker does not answer.
POLL_S = 0.001
IDLE_POLL_S = 0.05
_BUSY_POLLS = 1000
#: How long a send waits between tries while librdkafka's queue is full.
_FULL_QUEUE_PAUSE_S = 0.005

_E = confluent_kafka.KafkaError
#: Codes of a record no retry gets through; any other error means "not now".
REFUSED_FOR_GOOD = frozenset(
    {
        _E.MSG_SIZE_TOO_LARGE,
        _E.INVALID_MSG,
        _E.INVALID_RECORD,
        _E.INVALID_TIMESTAMP,
        _E.RECORD_LIST_TOO_LARGE,
        _E.INVALID_REQUIRED_ACKS,
        _E.TOPIC_AUTHORIZATION_FAILED,
        _E.CLUSTER_AUTHORIZATION_FAILED,
        _E.TOPIC_EXCEPTION,
        _E.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        _E._INVALID_ARG,
        _E._UNKNOWN_PARTITION,
        _E._BAD_MSG,
    }
)

#: A named tuple made without its generated ``__new__``, a Python function (once per record).
_new_tuple = tuple.__new__

_PARTITIONERS = {"consistent_random": "consistent_random", "murmur2": "murmur2_random"}


class Topics(Protocol):
    """The topics a port declares: the app's, the way its process declares them."""

    async def declare(self) -> None:
        """Create the app's topics that are missing; raise PublishError if unreachable."""
        ...

    async def ensure(self, topic: str) -> None:
        """Called once per topic before its first record is sent."""
        ...

    async def close(self) -> None:
        """Release what :meth:`declare` opened."""
        ...


def security_config(security: KafkaSecuritySettings) -> dict[str, Any]:
    """librdkafka's names for ``Kafka:Security``."""
    config: dict[str, Any] = {"security.protocol": security.protocol.lower()}
    if security.uses_tls:
        # "probe": the system's CA bundle, wherever this platform keeps it.
        config["ssl.ca.location"] = security.ca_file or "probe"
        if security.cert_file is not None:
            config["ssl.certificate.location"] = security.cert_file
            config["ssl.key.location"] = security.key_file
            if security.key_password is not None:
                config["ssl.key.password"] = security.key_password.reveal()
    if security.protocol.startswith("SASL"):
        assert security.sasl_password is not None  # checked by the settings
        config |= {
            "sasl.mechanism": security.sasl_mechanism,
            "sasl.username": security.sasl_username,
            "sasl.password": security.sasl_password.reveal(),
        }
    return config


def producer_config(settings: Settings, client_id: str) -> dict[str, Any]:
    """librdkafka's producer configuration for ``Kafka`` and ``Kafka:Producer``."""
    kafka = settings.kafka
    producer = kafka.producer
    if producer.enable_idempotence and producer.max_in_flight > 1:
        _warn_in_flight(producer.max_in_flight)
    return {
        "bootstrap.servers": ",".join(kafka.bootstrap_servers),
        "client.id": client_id,
        "acks": str(producer.acks),
        "enable.idempotence": producer.enable_idempotence,
        "max.in.flight.requests.per.connection": producer.max_in_flight,
        "linger.ms": producer.linger_ms,
        "batch.size": producer.batch_size,
        "compression.type": producer.compression_type,
        # Java's max.request.size: a larger record is refused before it is numbered.
        "message.max.bytes": producer.max_request_bytes,
        # A record stays until the broker takes it, as in aiokafka: one that is
        # late is spooled by the publisher, not dropped here (0: no expiry).
        "message.timeout.ms": 0,
        # The same placement as the .NET gateway's Confluent.Kafka producers.
        "partitioner": _PARTITIONERS[kafka.partitioner],
        **security_config(kafka.security),
        "logger": logging.getLogger(CLIENT_LOGGER),
        "error_cb": _client_error,
    }


@functools.cache  # once per process
def _warn_in_flight(max_in_flight: int) -> None:
    logger.warning(
        "Kafka:Producer:MaxInFlight is %d: a new producer whose first batch to a partition "
        "fails (a leader not ready yet: a new topic, a broker restarting) while the next one "
        "succeeds has the first reported delivered although it is not on the topic "
        "(librdkafka's implicit acks, confluent-kafka-go issue 921); 1 cannot lose them",
        max_in_flight,
    )


#: Client errors no wait cures: said at ERROR (an outage is the Kafka watch's to report).
_LOUD = frozenset({_E._AUTHENTICATION, _E.SASL_AUTHENTICATION_FAILED, _E._SSL, _E._FATAL})


def _client_error(err: confluent_kafka.KafkaError) -> None:
    loud = err.fatal() or err.code() in _LOUD
    logging.getLogger(CLIENT_LOGGER).log(
        logging.ERROR if loud else logging.DEBUG, "librdkafka: %s", err
    )


def translated(err: confluent_kafka.KafkaError) -> BrokerUnavailable | RefusedError:
    """Ours for one of librdkafka's errors."""
    text = f"{err.name()}: {err.str()}"
    if err.code() == _E.MSG_SIZE_TOO_LARGE:
        # Refused by the producer itself, before the broker sees it, or by the broker.
        text += (
            " (larger than Kafka:Producer:MaxRequestBytes allows, or than the topic's "
            "max.message.bytes on the broker)"
        )
    elif err.code() == _E._UNKNOWN_PARTITION:
        # Revocations and retries name their partition, counted by the setting.
        text += (
            " (a partition the topic does not have: is Kafka:Partitions more than the"
            " topic's partition count?)"
        )
    if err.code() in REFUSED_FOR_GOOD:
        return RefusedError(text)
    return BrokerUnavailable(text)


class RdkafkaPort:
    """A librdkafka producer set up from the settings, for one event loop."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        *,
        client_id: str,
        sends: Counter[tuple[str, str]],
        close_timeout_s: float,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.sends = sends
        #: librdkafka's configuration (with the SASL password, if any: never log it).
        self.config = producer_config(settings, client_id)
        self._close_timeout_s = close_timeout_s
        self._producer: confluent_kafka.Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Sent and not yet reported on, in no order: what :meth:`flush` waits for.
        self._unacked: set[asyncio.Future[RecordMetadata]] = set()
        self._known: set[str] = set()
        self._declared = False
        self._ticking: asyncio.TimerHandle | None = None
        self._quiet_polls = 0
        self._partitions: dict[tuple[str, int], TopicPartition] = {}
        self.closed = False

    # -- the ProducerPort --------------------------------------------------------

    async def connect(self) -> None:
        self.closed = False
        self._ensure_producer()
        if not self._declared:
            await self.topics.declare()
            self._declared = True

    async def send_record(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> asyncio.Future[RecordMetadata]:
        while True:
            if self.closed:
                raise BrokerUnavailable("the producer is closed")
            if topic not in self._known:
                # A message type declared since (a module imported later), or any topic.
                await self.topics.ensure(topic)
                self._known.add(topic)
            ack = self.try_send(topic, key, value, timestamp_ms, headers, partition)
            if ack is not None:
                return ack
            # librdkafka's queue is full: wait for the broker to take some (the
            # publisher's deadline bounds the wait).
            await asyncio.sleep(_FULL_QUEUE_PAUSE_S)

    def try_send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: list[tuple[str, bytes]] | None,
        partition: int | None = None,
    ) -> asyncio.Future[RecordMetadata] | None:
        """:meth:`send_record` if it need not wait: None while the queue is full,
        or before the first record to ``topic`` (or once closed)."""
        if self.closed or topic not in self._known:
            return None
        producer = self._producer or self._ensure_producer()
        ack = _Ack(loop=self._loop)
        ack.port = self
        ack.counted_as = None
        try:
            producer.produce(
                topic,
                value,
                key,
                -1 if partition is None else partition,
                on_delivery=ack,
                timestamp=timestamp_ms or 0,
                headers=headers,  # type: ignore[arg-type]  # list is invariant
            )
        except BufferError:
            producer.poll(0)
            return None
        except confluent_kafka.KafkaException as exc:
            self.sends[(topic, "error")] += 1
            raise translated(exc.args[0]) from exc
        self._unacked.add(ack)
        if self._ticking is None:
            self._quiet_polls = 0
            self._ticking = ack.get_loop().call_later(POLL_S, self._tick)
        return ack

    def counted(self, topic: str, pending: Awaitable[RecordMetadata]) -> Awaitable[RecordMetadata]:
        if isinstance(pending, _Ack) and not pending.done():
            # Its delivery report counts it: no callback per record.
            pending.counted_as = topic
            return pending
        sends = self.sends

        def count(done: asyncio.Future[RecordMetadata]) -> None:
            ok = not done.cancelled() and done.exception() is None
            sends[(topic, "ok" if ok else "error")] += 1

        future = asyncio.ensure_future(pending)
        future.add_done_callback(count)
        return future

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record sent so far is acknowledged or failed; False on timeout."""
        waiting = list(self._unacked)
        if not waiting:
            return True
        if self._producer is not None:
            self._producer.poll(0)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        _, late = await asyncio.wait(waiting, timeout=timeout_s)
        if late:
            return False
        # A future its caller cancelled (a loop ending under a ``delay()`` nobody
        # awaited) is done before its record is reported: the record may still
        # be on its way, and closing now would purge it. Wait for the report.
        unreported = [ack for ack in waiting if ack in self._unacked]
        while unreported:
            if deadline is not None and loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
            if self._producer is not None:
                self._producer.poll(0)
            unreported = [ack for ack in unreported if ack in self._unacked]
        return True

    async def close(self) -> None:
        """Deliver what was sent within the close timeout, drop the rest, stop the producer."""
        if self.closed:
            return
        self.closed = True
        try:
            if not await self.flush(self._close_timeout_s):
                logger.warning(
                    "%d records sent to Kafka were not acknowledged within %.0f s; closing the"
                    " producer without them (what publish() could not deliver is in the"
                    " spool; what send() sent is not)",
                    len(self._unacked),
                    self._close_timeout_s,
                )
        finally:
            self._discard_producer()
            await self.topics.close()

    # -- delivery reports ----------------------------------------------------------

    def _ensure_producer(self) -> confluent_kafka.Producer:
        """The producer, made on first use in the loop that sends (its reports are served there)."""
        if self._producer is None:
            self._loop = asyncio.get_running_loop()
            self._producer = confluent_kafka.Producer(self.config)
        return self._producer

    def _discard_producer(self) -> None:
        """Fail what it still holds (its futures with BrokerUnavailable) and let it go."""
        producer, self._producer = self._producer, None
        if self._ticking is not None:
            self._ticking.cancel()
            self._ticking = None
        if producer is None:
            return
        producer.purge()
        producer.poll(0)
        # Whatever no report reached (the producer's own failure): not sent.
        for future in list(self._unacked):
            if isinstance(future, _Ack) and future.counted_as is not None:
                self.sends[(future.counted_as, "error")] += 1
            if not future.done():
                future.set_exception(BrokerUnavailable("the producer was closed"))
        self._unacked.clear()
        # Nothing is left to deliver, so closing does not wait on the brokers.
        with suppress(Exception):
            producer.close()

    def _tick(self) -> None:
        self._ticking = None
        producer = self._producer
        if producer is None:
            return
        served = producer.poll(0)
        if self._unacked and self._ticking is None:
            self._quiet_polls = 0 if served else self._quiet_polls + 1
            pause = POLL_S if self._quiet_polls < _BUSY_POLLS else IDLE_POLL_S
            self._ticking = self._loop.call_later(pause, self._tick)  # type: ignore[union-attr]

    def _delivered(
        self, ack: _Ack, err: confluent_kafka.KafkaError | None, msg: confluent_kafka.Message
    ) -> None:
        self._unacked.discard(ack)
        if ack.counted_as is not None:
            self.sends[(ack.counted_as, "ok" if err is None and not ack.done() else "error")] += 1
        if ack.done():  # cancelled by its caller
            return
        if err is not None:
            if err.code() == _E._FATAL:
                # The idempotent producer cannot go on; the next send gets a new one.
                ack.get_loop().call_soon(self._discard_producer)
            ack.set_exception(translated(err))
            return
        # Set on every delivered message (None only on consumed errors).
        topic: str = msg.topic()  # type: ignore[assignment]
        partition: int = msg.partition()  # type: ignore[assignment]
        tp = self._partitions.get((topic, partition))
        if tp is None:
            tp = self._partitions[(topic, partition)] = TopicPartition(topic, partition)
        kind, stamped = msg.timestamp()
        timestamp = None if kind == confluent_kafka.TIMESTAMP_NOT_AVAILABLE else stamped
        appended = int(kind == confluent_kafka.TIMESTAMP_LOG_APPEND_TIME)
        receipt = (topic, partition, tp, msg.offset(), timestamp, appended, None)
        ack.set_result(_new_tuple(RecordMetadata, receipt))


class _Ack(asyncio.Future[RecordMetadata]):
    """One record's future, and librdkafka's delivery callback for it (one object,
    not a future and a closure: this is made for every record)."""

    __slots__ = ("counted_as", "port")
    port: RdkafkaPort
    #: The topic whose sends count this record when its report comes (see ``counted``).
    counted_as: str | None

    def __call__(
        self, err: confluent_kafka.KafkaError | None, msg: confluent_kafka.Message
    ) -> None:
        self.port._delivered(self, err, msg)
