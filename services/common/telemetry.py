"""OpenTelemetry set-up and the carriers that move trace context across AMQP and gRPC."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind


def setup_tracing(service: str, otlp_endpoint: str) -> TracerProvider:
    """Install a tracer provider for this process; spans go to OTLP when an endpoint is set.

    Without an endpoint nothing would ever read a span, so none is recorded (ALWAYS_OFF): trace and span ids are
    still made and propagated, so logs and task records keep their trace ids, at a fraction of the cost.
    """
    sampler = ParentBased(ALWAYS_ON) if otlp_endpoint else ALWAYS_OFF
    provider = TracerProvider(resource=Resource.create({"service.name": service}), sampler=sampler)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True), schedule_delay_millis=500
            )
        )
    trace.set_tracer_provider(provider)
    return provider


def shutdown_tracing() -> None:
    """Flush pending spans before the process exits."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(5000)
        provider.shutdown()


def inject(carrier: MutableMapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the current trace context (traceparent, tracestate) into a header dict."""
    out: dict[str, Any] = dict(carrier or {})
    propagate.inject(out)
    return out


_TRACE_KEYS = ("traceparent", "tracestate", "baggage")


def extract(carrier: Mapping[str, Any]) -> context.Context:
    """Read trace context from headers (AMQP headers, gRPC metadata); garbage never raises."""
    found: dict[str, str] = {}
    for key in _TRACE_KEYS:
        value = carrier.get(key)
        if isinstance(value, bytes):
            found[key] = value.decode("utf-8", errors="replace")
        elif isinstance(value, str):
            found[key] = value
    return propagate.extract(found)


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or "" outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def unsampled(parent: trace.Span) -> bool:
    """True under a parent span that was not sampled: a child span there would record nothing either (our
    samplers are parent-based), so the hot paths skip making one and the parent's ids stand in. (The sampled
    flag, not ``is_recording``, decides: a parent from another process is never recording here.)"""
    ctx = parent.get_span_context()
    return ctx.is_valid and not ctx.trace_flags.sampled


@contextmanager
def span(
    tracer: trace.Tracer,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: context.Context | None = None,
) -> Iterator[trace.Span]:
    """``tracer.start_as_current_span``, except under an unsampled parent: then that parent is made current
    and yielded (trace and span ids still reach logs and outgoing headers; setting attributes is a no-op)."""
    above = trace.get_current_span(parent)
    if unsampled(above):
        token = context.attach(parent) if parent is not None else None
        try:
            yield above
        finally:
            if token is not None:
                context.detach(token)
        return
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes) as made:
        yield made
