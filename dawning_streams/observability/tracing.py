"""Trace context across Kafka: W3C ``traceparent`` in the message headers.

``publish`` (and every retry, dead letter and replay, which go through
``forward``) starts a *producer* span and writes its context into the
``traceparent``/``tracestate`` headers. A handler attempt starts a *consumer*
span whose parent is the context in the message's headers, so the handler's
span is a child of the publisher's, and a retry published from inside a
handler attempt continues the same trace:

    publish ─▶ handle (attempt 1) ─▶ publish timer ─▶ handle (attempt 2) ─▶ publish dlq

Each app has its own ``TracerProvider``; with ``Telemetry:OtlpEndpoint`` set,
its spans are exported over OTLP/HTTP. The context is carried whether or not
anything is exported. While nothing records spans (no exporter, no span
processor), building SDK spans would cost every message tens of microseconds
for nothing, so the context is carried by hand instead: the trace id and flags
of the message being handled (or of the caller's span) go on into what it
publishes, under a fresh span id.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar, Token

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dawning_streams.core.settings import TelemetrySettings
from dawning_streams.observability.metrics import otlp_headers

__all__ = ["TRACE_HEADERS", "Tracing", "carried", "carry", "trace_context", "uncarry"]

#: The W3C Trace Context headers, as Kafka header names.
TRACE_HEADERS = ("traceparent", "tracestate")

_propagator = TraceContextTextMapPropagator()
_getrandbits = random.getrandbits
Headers = Iterable[tuple[str, bytes]]


def trace_context(headers: Headers | None) -> Context | None:
    """The trace context a message's headers carry, or None."""
    carrier = {
        key: value.decode("ascii", "replace")
        for key, value in headers or ()
        if key in TRACE_HEADERS
    }
    if "traceparent" not in carrier:
        return None
    extracted = _propagator.extract(carrier)
    return extracted if trace.get_current_span(extracted).get_span_context().is_valid else None


#: The ``traceparent`` of the message a handler is working on, while nothing records
#: spans; read only when the handler publishes.
_handled_trace: ContextVar[bytes | None] = ContextVar("dawning_trace", default=None)


def _traceparent(value: bytes) -> tuple[str, str] | None:
    """(trace id, flags) of a W3C ``traceparent`` header, or None if it is not one."""
    parts = value.split(b"-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    trace_id = parts[1].decode("ascii", "replace")
    if trace_id == "0" * 32:
        return None
    return trace_id, parts[3].decode("ascii", "replace")


class _Provider(TracerProvider):
    """A tracer provider that knows whether any span processor listens."""

    recording = False

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        super().add_span_processor(span_processor)
        self.recording = True


class Tracing:
    """The app's tracer, and the two places spans start: publishing and handling."""

    def __init__(self, settings: TelemetrySettings, resource: Resource) -> None:
        self.provider = _Provider(resource=resource, shutdown_on_exit=False)
        if settings.otlp_endpoint is not None:
            # Imported here, as the metric exporter is (see Metrics).
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(
                endpoint=settings.otlp_endpoint.rstrip("/") + "/v1/traces",
                headers=otlp_headers(settings),
            )
            self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("dawning_streams")

    def stamp(self, topic: str, headers: Headers | None) -> list[tuple[str, bytes]]:
        """``headers`` with the trace context of a new span for publishing to ``topic``.

        The span's parent is the current span (a handler attempt, or the
        caller's request) or else the context the headers already carry (a
        replayed dead letter); an existing ``traceparent`` is replaced.
        """
        if not self.provider.recording:
            return self._carry(headers)
        kept = [(k, v) for k, v in headers or () if k not in TRACE_HEADERS]
        current = trace.get_current_span().get_span_context()
        parent = None if current.is_valid else trace_context(headers)
        span = self.tracer.start_span(
            f"{topic} publish",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={"messaging.destination.name": topic},
        )
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(span))
        span.end()
        return kept + [(k, v.encode("ascii")) for k, v in carrier.items()]

    def stamper(self) -> Callable[[str], list[tuple[str, bytes]]]:
        """``stamp(topic, None)`` for a batch published at once, in one context.

        While nothing records spans, the context (the handled message's trace,
        or the caller's span) is looked up once for the whole batch rather than
        once per message; each message still gets a span id of its own.
        """
        if self.provider.recording:
            return lambda topic: self.stamp(topic, None)
        context = self._context()
        if context is None:
            return lambda topic: [_new_trace()]
        prefix, suffix = f"00-{context[0]}-".encode("ascii"), f"-{context[1]}".encode("ascii")
        return lambda topic: [
            ("traceparent", b"%s%016x%s" % (prefix, _getrandbits(64) or 1, suffix))
        ]

    @staticmethod
    def _context(carried: tuple[str, str] | None = None) -> tuple[str, str] | None:
        """(trace id, flags) to publish under while nothing records, or None for a new trace."""
        handled = _handled_trace.get()
        context = _traceparent(handled) if handled is not None else None
        if context is None:
            current = trace.get_current_span().get_span_context()
            if current.is_valid:
                context = (f"{current.trace_id:032x}", f"{current.trace_flags:02x}")
            else:
                context = carried
        return context

    def _carry(self, headers: Headers | None) -> list[tuple[str, bytes]]:
        """``stamp`` while nothing records: the trace goes on under a new span id."""
        kept: list[tuple[str, bytes]] = []
        carried = None
        if headers:
            for key, value in headers:
                if key == "traceparent":
                    carried = _traceparent(value)
                else:
                    kept.append((key, value))
        context = self._context(carried)
        if context is None:
            kept.append(_new_trace())
            return kept
        trace_id, flags = context
        span_id = _getrandbits(64) or 1
        kept.append(("traceparent", f"00-{trace_id}-{span_id:016x}-{flags}".encode("ascii")))
        return kept

    def handling(
        self,
        handler: str,
        topic: str,
        headers: Sequence[Headers],
        *,
        attempt: int,
    ) -> AbstractContextManager[Span]:
        """The current span while ``handler`` works on messages with ``headers``.

        One message: its span is a child of the publisher's. A batch: a new
        trace, linked to every message's publisher span.
        """
        if not self.provider.recording:
            return _Carrying(headers)
        return self._span(handler, topic, headers, attempt=attempt)

    @contextmanager
    def _span(
        self, handler: str, topic: str, headers: Sequence[Headers], *, attempt: int
    ) -> Iterator[Span]:
        contexts = [trace_context(h) for h in headers]
        parent = contexts[0] if len(contexts) == 1 else None
        links = (
            []
            if len(contexts) == 1
            else [
                Link(trace.get_current_span(c).get_span_context())
                for c in contexts
                if c is not None
            ]
        )
        span = self.tracer.start_span(
            f"{topic} process",
            context=parent if parent is not None else Context(),
            kind=SpanKind.CONSUMER,
            links=links,
            # Few attributes: each one costs every message a little.
            attributes={
                "messaging.destination.name": topic,
                "dawning.handler": handler,
                "dawning.attempt": attempt + 1,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)
            span.end()

    def shutdown(self) -> None:
        """Export what is pending and stop."""
        self.provider.shutdown()


def _new_trace() -> tuple[str, bytes]:
    """A ``traceparent`` header that starts a trace (an all-zero id is invalid)."""
    # Hex through bytes.hex() rather than %x of big ints: half the time.
    trace_id = (_getrandbits(128) or 1).to_bytes(16).hex()
    span_id = (_getrandbits(64) or 1).to_bytes(8).hex()
    return ("traceparent", f"00-{trace_id}-{span_id}-01".encode())


def carried(headers: Sequence[Headers]) -> bytes | None:
    """The ``traceparent`` a handler carries on while nothing records: one message's."""
    if len(headers) == 1:
        for key, value in headers[0]:
            if key == "traceparent":
                return value
    return None


def carry(traceparent: bytes | None) -> Token[bytes | None]:
    """Make ``traceparent`` what a handler's publishes continue, until :func:`uncarry`."""
    return _handled_trace.set(traceparent)


def uncarry(token: Token[bytes | None]) -> None:
    _handled_trace.reset(token)


class _Carrying:
    """``handling`` while nothing records: what the handler publishes stays in the trace."""

    __slots__ = ("_token", "_traceparent")

    def __init__(self, headers: Sequence[Headers]) -> None:
        self._traceparent = carried(headers)

    def __enter__(self) -> Span:
        self._token = carry(self._traceparent)
        return trace.INVALID_SPAN

    def __exit__(self, *exc_info: object) -> None:
        uncarry(self._token)
