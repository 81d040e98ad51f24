"""An app's metrics and traces together, and the hooks the library calls.

``app.telemetry.metrics`` and ``app.telemetry.tracing`` are the two halves;
:meth:`Telemetry.attempt` is what a handler wraps each attempt in: a consumer
span (child of the publisher's), the attempt's duration, and whether it was
handled or failed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import Span, Status, StatusCode

from .metrics import Metrics
from .settings import Settings
from .tracing import Headers, Tracing

__all__ = ["Attempt", "Telemetry"]


@dataclass
class Attempt:
    """One handler attempt in progress; call :meth:`failed` if it raised."""

    span: Span
    ok: bool = True

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

    @contextmanager
    def attempt(
        self, handler: str, topic: str, headers: Sequence[Headers], *, attempt: int
    ) -> Iterator[Attempt]:
        """Wrap one attempt of ``handler`` on the messages with ``headers``."""
        started = time.perf_counter()
        with self.tracing.handling(handler, topic, headers, attempt=attempt) as span:
            state = Attempt(span)
            try:
                yield state
            except Exception as exc:
                state.failed(exc)
                raise
            finally:
                self.metrics.attempt_ended(
                    handler, time.perf_counter() - started, ok=state.ok, count=len(headers)
                )

    def routed(self, handler: str, *, dead_letter: bool) -> None:
        """A failed message went to a retry tier or to the dead-letter topic."""
        self.metrics.routed(handler, dead_letter=dead_letter)

    def flush(self) -> None:
        """Export what is pending (when an OTLP endpoint is set)."""
        self.metrics.provider.force_flush()
        self.tracing.provider.force_flush()
