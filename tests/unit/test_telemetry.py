"""Trace context extraction tolerates whatever a producer put in the headers; child spans follow sampling."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

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


def _traceparent(sampled: bool) -> dict[str, str]:
    return {"traceparent": f"00-{'a' * 32}-{'b' * 16}-{'01' if sampled else '00'}"}


def test_a_sampled_remote_parent_gets_a_recorded_child_span(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with telemetry.span(tracer, "child", parent=telemetry.extract(_traceparent(True))) as made:
        assert made.is_recording()
        assert telemetry.current_trace_id() == "a" * 32
    assert [s.name for s in spans.get_finished_spans()] == ["child"]


def test_an_unsampled_parent_gets_no_child_span_but_its_ids_carry_on(spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    with telemetry.span(tracer, "child", parent=telemetry.extract(_traceparent(False))) as made:
        assert not made.is_recording()
        assert telemetry.current_trace_id() == "a" * 32  # logs and outgoing headers still carry the trace
        assert telemetry.inject()["traceparent"].endswith("-00")
    assert telemetry.current_trace_id() == ""  # the parent's context was detached again
    assert spans.get_finished_spans() == ()


def test_a_root_span_is_made_even_when_nothing_samples(spans: InMemorySpanExporter) -> None:
    with telemetry.span(trace.get_tracer("test"), "root") as made:
        assert made.get_span_context().is_valid  # a fresh trace id for logs, sampled or not
