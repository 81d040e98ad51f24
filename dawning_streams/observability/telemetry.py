"""An app's metrics and traces together, and the hooks the library calls.

``app.telemetry.metrics`` and ``app.telemetry.tracing`` are the two halves;
:meth:`Telemetry.attempt` is what a handler wraps each attempt in: a consumer
span (child of the publisher's), the attempt's duration, and whether it was
handled or failed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from types import TracebackType

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import INVALID_SPAN, Span, Status, StatusCode

from dawning_streams.core.settings import Settings
from dawning_streams.observability.metrics import Metrics
from dawning_streams.observability.tracing import Headers, Tracing, carried, carry, uncarry

__all__ = ["Attempt", "Telemetry"]

_perf_counter = time.perf_counter


class Attempt:
    """One handler attempt in progress; call :meth:`failed` if it raised.

    A context manager of its own, entered once per handled message (so a
    class with slots, not a generator): on leaving, the attempt's duration and
    outcome are recorded, and an exception raised inside marks it failed.
    While nothing records spans, it carries the message's trace itself
    rather than through :meth:`Tracing.handling`.
    """

    __slots__ = (
        "_count",
        "_handler",
        "_metrics",
        "_scope",
        "_started",
        "_token",
        "_traceparent",
        "ok",
        "span",
    )

    span: Span

    def __init__(
        self,
        metrics: Metrics,
        handler: str,
        headers: Sequence[Headers],
        scope: AbstractContextManager[Span] | None,
    ) -> None:
        self._metrics = metrics
        self._handler = handler
        self._count = len(headers)
        self._scope = scope
        self._traceparent = carried(headers) if scope is None else None
        self.ok = True

    def __enter__(self) -> Attempt:
        if self._scope is None:
            self._token = carry(self._traceparent)
            self.span = INVALID_SPAN
        else:
            self.span = self._scope.__enter__()
        self._started = _perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        seconds = _perf_counter() - self._started
        try:
            if isinstance(exc, Exception):
                self.failed(exc)
        finally:
            try:
                self._metrics.attempt_ended(self._handler, seconds, ok=self.ok, count=self._count)
            finally:
                if self._scope is None:
                    uncarry(self._token)
                else:
                    self._scope.__exit__(exc_type, exc, tb)

    def failed(self, exc: BaseException) -> None:
        self.ok = False
        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class Telemetry:
    """Metrics and tracing of one app, described by ``Telemetry:*``."""

    def __init__(self, settings: Settings) -> None:
        resource = Resource.create(
            {
                "service.name": settings.telemetry.service_name,
                "service.instance.id": settings.instance_name,
                "messaging.consumer.group.name": settings.kafka.consumer_group_id,
            }
        )
        self.metrics = Metrics(settings.telemetry, resource)
        self.tracing = Tracing(settings.telemetry, resource)

    def attempt(
        self, handler: str, topic: str, headers: Sequence[Headers], *, attempt: int
    ) -> Attempt:
        """Wrap one attempt of ``handler`` on the messages with ``headers``."""
        tracing = self.tracing
        scope = (
            tracing.handling(handler, topic, headers, attempt=attempt)
            if tracing.provider.recording
            else None
        )
        return Attempt(self.metrics, handler, headers, scope)

    def routed(self, handler: str, *, dead_letter: bool) -> None:
        """A failed message was given a retry timer, or sent to the dead-letter topic."""
        self.metrics.routed(handler, dead_letter=dead_letter)

    def flush(self) -> None:
        """Export what is pending (when an OTLP endpoint is set)."""
        self.metrics.provider.force_flush()
        self.tracing.provider.force_flush()

    def shutdown(self) -> None:
        """Export what is pending and stop the exporters' threads (the app stopped)."""
        self.metrics.shutdown()
        self.tracing.shutdown()
