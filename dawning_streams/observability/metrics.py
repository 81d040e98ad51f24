"""The worker's metrics: OpenTelemetry instruments, read as Prometheus text or sent by OTLP.

Each app has its own ``MeterProvider``: a Prometheus reader into the app's own
registry (what ``GET /metrics`` renders) and, when ``Telemetry:OtlpEndpoint``
is set, a periodic OTLP/HTTP exporter. Faust's OpenTelemetry sensor records
into the same provider, so its ``faust.*`` metrics sit beside these:

============================  =========  ======================================
``kafka.producer.send.total``  counter    acknowledged (or failed) sends, by topic
                                          and ``result``
``kafka.consumer.lag``         gauge      end offset minus committed offset, per
                                          assigned topic and partition
``kafka.consumer.poll.time``   histogram  seconds per consumer poll
``dawning.handler.handled``    counter    attempts that succeeded, per handler
``dawning.handler.failed``     counter    attempts that raised, per handler
``dawning.handler.retried``    counter    messages given a retry timer
``dawning.handler.dead_lettered``  counter  messages sent to the dead-letter topic
``dawning.handler.expired``    counter    messages not run: their expiry had passed
``dawning.handler.skipped``    counter    messages not run: handled before (dedupe)
``dawning.timers.pending``     gauge      timers waiting on this worker, per handler
``dawning.timers.held_keys``   gauge      ordered keys waiting on a retry
``dawning.timers.stuck_keys``  gauge      held keys whose retry is overdue
``dawning.handler.duration``   histogram  seconds per attempt, by ``outcome``
``dawning.spool.size``         gauge      messages waiting in the on-disk spool
``dawning.producer.buffer``    gauge      table writes queued for the producer now,
                                          and (``kind="high_water"``) the most at once
``dawning.dependency.down``    gauge      seconds a dependency has been unreachable
============================  =========  ======================================

What is counted per message is counted in plain Python and read when the
metrics are collected: an SDK counter's ``add`` costs a message several
microseconds, an SDK histogram's ``record`` about nine. The SDK has no
observable histogram, so ``dawning.handler.duration`` is aggregated in process
(:class:`Durations`) and handed to every reader with what the SDK collected:
Prometheus and OTLP see the same histogram, cumulative, with the same name,
attributes and buckets an SDK histogram would have.

The module runs past 400 lines: the instruments, their plain-Python counts and
the histogram that must match the SDK's output exactly are read together.
"""

from __future__ import annotations

import dataclasses
import math
import time
from bisect import bisect_left
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dawning_streams.core.settings import TelemetrySettings
from dawning_streams.kafka.faust_compat import ReceiveMetricsHook

__all__ = ["CONTENT_TYPE", "Durations", "Metrics", "RecentCounts", "otlp_headers", "quantile"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Seconds: from a fast poll or handler call up to the long ones worth seeing.
_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_OUTCOMES = {
    "handled": "Attempts that succeeded.",
    "failed": "Attempts that raised.",
    "retried": "Messages given a retry timer.",
    "dead_lettered": "Messages sent to a dead-letter topic.",
    "expired": "Messages not run because their expiry had passed (dead-lettered).",
    "skipped": (
        "Messages not run: their MessageId was handled before (dedupe); counted as handled too."
    ),
}

_TIMER_GAUGES = {
    "dawning.timers.pending": "Timers waiting on this worker: countdowns, etas and retries.",
    "dawning.timers.held_keys": "Keys of ordered handlers waiting on a retry.",
    "dawning.timers.stuck_keys": "Held keys whose retry is overdue by Timers:StuckAfterS.",
}

LagSource = Callable[[], Iterable[tuple[str, int, int]]]
SizeSource = Callable[[], int | None]
#: (queued now, high-water mark) of the producer's buffer.
BufferSource = Callable[[], tuple[int, int] | None]
#: (handler, pending timers, held keys, stuck keys) per handler.
TimerSource = Callable[[], Iterable[tuple[str, int, int, int]]]
DownSource = Callable[[], Iterable[tuple[str, float]]]


def otlp_headers(settings: TelemetrySettings) -> dict[str, str]:
    """``Telemetry:OtlpHeaders`` (``name=value,...``) as a dict."""
    if settings.otlp_headers is None:
        return {}
    pairs = (item.split("=", 1) for item in settings.otlp_headers.reveal().split(","))
    return {name.strip(): value.strip() for name, value in pairs}


class RecentCounts:
    """Per-second counts of the last ``window_s`` seconds, for the dashboard's throughput."""

    def __init__(self, window_s: int = 900) -> None:
        self.window_s = window_s
        self._seconds: dict[tuple[str, str], deque[list[int]]] = defaultdict(deque)

    def add(self, name: str, outcome: str, count: int = 1, now: float | None = None) -> None:
        self.add_to((name, outcome), count, now)

    def add_to(self, key: tuple[str, str], count: int = 1, now: float | None = None) -> None:
        """``add`` to ``(name, outcome)``."""
        second = int(now if now is not None else time.time())
        buckets = self._seconds[key]
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += count
        else:
            buckets.append([second, count])
        while buckets and buckets[0][0] <= second - self.window_s:
            buckets.popleft()

    def total(self, name: str, outcome: str, last_s: int, now: float | None = None) -> int:
        """How many in the last ``last_s`` seconds."""
        since = int(now if now is not None else time.time()) - last_s
        return sum(n for second, n in self._seconds.get((name, outcome), ()) if second > since)

    def names(self) -> list[str]:
        return sorted({name for name, _ in self._seconds})

    def series(
        self, name: str, outcome: str, *, bucket_s: int, buckets: int, now: float | None = None
    ) -> list[int]:
        """Counts per ``bucket_s`` seconds, oldest first, ending now."""
        end = int(now if now is not None else time.time()) + 1
        counts = [0] * buckets
        for second, n in self._seconds.get((name, outcome), ()):
            index = buckets - 1 - (end - 1 - second) // bucket_s
            if 0 <= index < buckets:
                counts[index] += n
        return counts


class Durations:
    """A histogram of seconds per (handler, outcome), aggregated in process.

    ``record`` is a bisect and a few list updates. ``metric`` reads it as the
    SDK's cumulative histogram would: explicit bounds, a count per bucket
    (values equal to a bound fall in that bound's bucket), sum, min and max.
    Each series is one list, copied whole when read, so a reader in another
    thread (the OTLP exporter's) sees the buckets and the count agree.
    """

    def __init__(self, name: str, description: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.description = description
        self.bounds = tuple(bounds)
        self.started_ns = time.time_ns()
        #: (handler, outcome) -> [sum, min, max, bucket 0, ..., bucket len(bounds)]
        self._series: dict[tuple[str, str], list[Any]] = {}

    def record(self, key: tuple[str, str], seconds: float) -> None:
        """One attempt of ``key`` (handler, outcome) took ``seconds``."""
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = [0.0, math.inf, -math.inf] + [0] * (len(self.bounds) + 1)
        series[3 + bisect_left(self.bounds, seconds)] += 1
        series[0] += seconds
        if seconds < series[1]:
            series[1] = seconds
        if seconds > series[2]:
            series[2] = seconds

    def counts(self) -> dict[tuple[str, str], list[int]]:
        """Each series' bucket counts, copied (the dashboard's windows are differences of these)."""
        return {key: series[3:] for key, series in list(self._series.items())}

    def metric(self, now_ns: int | None = None) -> Metric | None:
        """The histogram as the SDK would collect it, or None before the first record."""
        now_ns = now_ns if now_ns is not None else time.time_ns()
        points = []
        for (handler, outcome), series in list(self._series.items()):
            snapshot = list(series)
            buckets = snapshot[3:]
            points.append(
                HistogramDataPoint(
                    attributes={"handler": handler, "outcome": outcome},
                    start_time_unix_nano=self.started_ns,
                    time_unix_nano=now_ns,
                    count=sum(buckets),
                    sum=snapshot[0],
                    bucket_counts=buckets,
                    explicit_bounds=self.bounds,
                    min=snapshot[1],
                    max=snapshot[2],
                )
            )
        if not points:
            return None
        return Metric(
            name=self.name,
            description=self.description,
            unit="s",
            data=Histogram(
                data_points=points,
                aggregation_temporality=AggregationTemporality.CUMULATIVE,
            ),
        )


def quantile(counts: Sequence[int], bounds: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of a histogram with explicit ``bounds``, or None if empty.

    Interpolated linearly inside the bucket it falls in, as Prometheus's
    ``histogram_quantile`` does; in the overflow bucket it is the last bound.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index == len(bounds):
                return float(bounds[-1])
            low = float(bounds[index - 1]) if index else 0.0
            return low + (float(bounds[index]) - low) * (rank - seen) / count
        seen += count
    return float(bounds[-1])


def _with_metric(
    data: MetricsData | None, metric: Metric, scope: InstrumentationScope, resource: Resource
) -> MetricsData:
    """``data`` with ``metric`` added to ``scope``'s metrics (the collections are frozen)."""
    if data is None or not data.resource_metrics:
        data = MetricsData(
            resource_metrics=[ResourceMetrics(resource=resource, scope_metrics=[], schema_url="")]
        )
    first, *others = data.resource_metrics
    scopes = list(first.scope_metrics)
    for n, scoped in enumerate(scopes):
        if scoped.scope == scope:
            scopes[n] = dataclasses.replace(scoped, metrics=[*scoped.metrics, metric])
            break
    else:
        scopes.append(ScopeMetrics(scope=scope, metrics=[metric], schema_url=""))
    return MetricsData(resource_metrics=[dataclasses.replace(first, scope_metrics=scopes), *others])


class _PrometheusReader(ReceiveMetricsHook, PrometheusMetricReader):
    def __init__(
        self, extra: Callable[[MetricsData | None], MetricsData | None], **kwargs: Any
    ) -> None:
        self._extra = extra
        super().__init__(**kwargs)


class _ExportingReader(ReceiveMetricsHook, PeriodicExportingMetricReader):
    def __init__(
        self,
        extra: Callable[[MetricsData | None], MetricsData | None],
        exporter: MetricExporter,
        **kwargs: Any,
    ) -> None:
        self._extra = extra
        super().__init__(exporter, **kwargs)


class Metrics:
    """The instruments of one app, and the Prometheus text of their current values."""

    def __init__(self, settings: TelemetrySettings, resource: Resource) -> None:
        self.registry = CollectorRegistry()
        self.resource = resource
        self.duration = Durations(
            "dawning.handler.duration", "Time per handler attempt.", _SECONDS_BUCKETS
        )
        readers: list[MetricReader] = [
            _PrometheusReader(self._with_durations, registry=self.registry)
        ]
        if settings.otlp_endpoint is not None:
            # Imported here: its protobuf and HTTP stack cost every process that
            # never exports (a web app that only sends tasks) about 45 ms at start.
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            exporter = OTLPMetricExporter(
                endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/metrics",
                headers=otlp_headers(settings),
            )
            readers.append(
                _ExportingReader(
                    self._with_durations,
                    exporter,
                    export_interval_millis=settings.export_interval_ms,
                )
            )
        self.provider = MeterProvider(
            resource=resource,
            metric_readers=readers,
            # Exemplars would tie samples to spans; Prometheus text does not show
            # them, and sampling one costs every recording time.
            exemplar_filter=AlwaysOffExemplarFilter(),
            shutdown_on_exit=False,
        )
        self.meter: Meter = self.provider.get_meter("dawning_streams")
        self.recent = RecentCounts()
        #: Set by the app: (topic, partition, lag) of every assigned partition.
        self.lag_source: LagSource = lambda: ()
        #: Set by the bus when it keeps a spool: how many messages wait in it.
        self.spool_size_source: SizeSource = lambda: None
        #: Set by the app: what each handler's timers hold on this worker.
        self.timer_source: TimerSource = lambda: ()
        #: Set by the app: (dependency, seconds it has been unreachable).
        self.down_source: DownSource = lambda: ()
        #: Set by the app: the producer buffer's size and high-water mark.
        self.buffer_source: BufferSource = lambda: None
        meter = self.meter
        message = "{message}"
        # Counted in plain dicts, read when the metrics are collected: an SDK
        # counter's add costs every message several microseconds.
        #: (topic, "ok" or "error") -> sends; the bus adds to it directly.
        self.sends: Counter[tuple[str, str]] = Counter()
        self._outcomes: Counter[tuple[str, str]] = Counter()
        meter.create_observable_counter(
            "kafka.producer.send.total",
            callbacks=[self._observe_sends],
            unit=message,
            description="Messages sent to Kafka.",
        )
        self.poll_time = meter.create_histogram(
            "kafka.consumer.poll.time",
            unit="s",
            description="Time per consumer poll.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        meter.create_observable_gauge(
            "kafka.consumer.lag",
            callbacks=[self._observe_lag],
            unit=message,
            description="End offset minus committed offset, per assigned partition.",
        )
        for outcome, description in _OUTCOMES.items():
            meter.create_observable_counter(
                f"dawning.handler.{outcome}",
                callbacks=[self._outcome_observer(outcome)],
                unit=message,
                description=description,
            )
        for index, (name, description) in enumerate(_TIMER_GAUGES.items(), start=1):
            meter.create_observable_gauge(
                name,
                callbacks=[self._timer_observer(index)],
                unit=message,
                description=description,
            )
        meter.create_observable_gauge(
            "dawning.dependency.down",
            callbacks=[self._observe_down],
            unit="s",
            description="Seconds a dependency has been unreachable (0 while it answers).",
        )
        meter.create_observable_gauge(
            "dawning.producer.buffer",
            callbacks=[self._observe_buffer],
            unit=message,
            description="Table writes queued for the producer (kind=now), and the most at once "
            "(kind=high_water).",
        )
        meter.create_observable_gauge(
            "dawning.spool.size",
            callbacks=[self._observe_spool],
            unit=message,
            description="Messages waiting in the on-disk spool for Kafka.",
        )

    # -- recording -------------------------------------------------------------

    def sent(self, topic: str, *, ok: bool) -> None:
        self.sends[(topic, "ok" if ok else "error")] += 1

    def polled(self, seconds: float) -> None:
        self.poll_time.record(seconds)

    def attempt_ended(self, handler: str, seconds: float, *, ok: bool, count: int = 1) -> None:
        """One handler attempt (``count`` messages for a batch) ended."""
        key = (handler, "handled" if ok else "failed")
        self._outcomes[key] += count
        self.duration.record(key, seconds)
        self.recent.add_to(key, count)

    def expired(self, handler: str) -> None:
        """A message's expiry had passed when its turn came."""
        self._outcomes[(handler, "expired")] += 1
        self.recent.add(handler, "expired")

    def skipped(self, handler: str) -> None:
        """A message's ``MessageId`` was handled before, so it was not run (dedupe)."""
        self._outcomes[(handler, "skipped")] += 1
        self.recent.add(handler, "skipped")

    def routed(self, handler: str, *, dead_letter: bool) -> None:
        """A failed message was given a retry timer, or sent to the dead-letter topic."""
        outcome = "dead_lettered" if dead_letter else "retried"
        self._outcomes[(handler, outcome)] += 1
        self.recent.add(handler, outcome)

    # -- reading ---------------------------------------------------------------

    def render(self) -> bytes:
        """The current values in the Prometheus text format."""
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        """Export what is pending (OTLP) and stop the readers."""
        self.provider.shutdown()

    def _with_durations(self, data: MetricsData | None) -> MetricsData | None:
        metric = self.duration.metric()
        if metric is None:
            return data
        return _with_metric(data, metric, self._scope, self.resource)

    @property
    def _scope(self) -> InstrumentationScope:
        scope = getattr(self.meter, "_instrumentation_scope", None)
        return scope if scope is not None else InstrumentationScope("dawning_streams")

    def _observe_sends(self, options: CallbackOptions) -> Iterator[Observation]:
        for (topic, result), count in dict(self.sends).items():
            yield Observation(count, {"topic": topic, "result": result})

    def _outcome_observer(self, outcome: str) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for (handler, counted), count in dict(self._outcomes).items():
                if counted == outcome:
                    yield Observation(count, {"handler": handler})

        return observe

    def _timer_observer(self, index: int) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for row in self.timer_source():
                handler, *counts = row
                yield Observation(counts[index - 1], {"handler": handler})

        return observe

    def _observe_down(self, options: CallbackOptions) -> Iterator[Observation]:
        for dependency, seconds in self.down_source():
            yield Observation(seconds, {"dependency": dependency})

    def _observe_lag(self, options: CallbackOptions) -> Iterator[Observation]:
        for topic, partition, lag in self.lag_source():
            yield Observation(lag, {"topic": topic, "partition": partition})

    def _observe_buffer(self, options: CallbackOptions) -> Iterator[Observation]:
        sizes = self.buffer_source()
        if sizes is not None:
            yield Observation(sizes[0], {"kind": "now"})
            yield Observation(sizes[1], {"kind": "high_water"})

    def _observe_spool(self, options: CallbackOptions) -> Iterator[Observation]:
        size = self.spool_size_source()
        if size is not None:
            yield Observation(size)
