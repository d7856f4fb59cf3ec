"""Trace context extraction tolerates whatever a producer put in the headers."""

from __future__ import annotations

from opentelemetry import trace

from services.common import telemetry


def test_extract_reads_traceparent_from_bytes_and_str() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for value in (parent, parent.encode()):
        ctx = telemetry.extract({"traceparent": value, "x-other": b"\xff\xfe"})
        span_ctx = trace.get_current_span(ctx).get_span_context()
        assert format(span_ctx.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"


def test_extract_never_raises_on_garbage() -> None:
    ctx = telemetry.extract({"traceparent": b"\xff\xfe\xfa", "tracestate": 12, "baggage": None, "x": b"\x80"})
    assert not trace.get_current_span(ctx).get_span_context().is_valid
