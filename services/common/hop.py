"""One wrapper per outbound hop: circuit breaker, Prometheus RED metrics and a client span, in one place."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from services.common import telemetry
from services.common.breaker import AsyncBreaker
from services.common.errors import BreakerOpenError

T = TypeVar("T")

HOP_REQUESTS = Counter("openclaw_hop_requests_total", "Calls across a hop, by outcome.", ["hop", "outcome"])
HOP_DURATION = Histogram(
    "openclaw_hop_duration_seconds",
    "Duration of calls across a hop.",
    ["hop"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class Hop:
    """A named outbound hop (e.g. "executor.router") with its breaker, metrics and tracing."""

    def __init__(
        self,
        name: str,
        *,
        breaker: AsyncBreaker | None = None,
        span_kind: SpanKind = SpanKind.CLIENT,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.breaker = breaker if breaker is not None else AsyncBreaker(name)
        self._span_kind = span_kind
        self._attributes = attributes or {}
        self._tracer = trace.get_tracer("openclaw.hop")
        self._ok = HOP_REQUESTS.labels(name, "ok")
        self._error = HOP_REQUESTS.labels(name, "error")
        self._open = HOP_REQUESTS.labels(name, "breaker_open")
        self._cancelled = HOP_REQUESTS.labels(name, "cancelled")
        self._duration = HOP_DURATION.labels(name)

    @asynccontextmanager
    async def guard(self, span_name: str | None = None, **attributes: Any) -> AsyncIterator[trace.Span]:
        """Run the body as one call across this hop; yields the span so callers can add attributes."""
        start = time.perf_counter()
        with telemetry.span(
            self._tracer,
            span_name or self.name,
            kind=self._span_kind,
            attributes={**self._attributes, **attributes},
        ) as span:
            try:
                async with self.breaker.guard():
                    yield span
            except BaseException as exc:
                self._failed(span, exc, start)
                raise
            self._succeeded(start)

    async def call(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await fn(*args, **kwargs) across this hop (span named after the hop)."""
        return await self.call_as(self.name, fn, *args, **kwargs)

    async def call_as(
        self, span_name: str, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> T:
        """Await fn(*args, **kwargs) across this hop as a leaf call (a store command, say).

        Same breaker, metrics and span as ``guard``, but the span is not made current: fn starts no spans
        or calls of its own that should hang under it, and skipping the context switch keeps the cost of
        the many small calls of a task down.
        """
        return await self._leaf(span_name, True, fn, *args, **kwargs)

    async def call_blocking(
        self, span_name: str, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> T:
        """Like ``call_as`` for a call that waits on purpose (a blocking read): counted and traced, but kept
        out of the duration histogram, where the caller's chosen wait would drown the hop's latency."""
        return await self._leaf(span_name, False, fn, *args, **kwargs)

    async def _leaf(
        self, span_name: str, timed: bool, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> T:
        start = time.perf_counter() if timed else None
        parent = trace.get_current_span()
        span = (
            parent
            if telemetry.unsampled(parent)
            else self._tracer.start_span(span_name, kind=self._span_kind, attributes=self._attributes or None)
        )
        try:
            async with self.breaker.guard():
                result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._failed(span, exc, start)
            span.record_exception(exc)  # as start_as_current_span does for guard's spans
            raise
        finally:
            if span is not parent:
                span.end()
        self._succeeded(start)
        return result

    def _succeeded(self, start: float | None) -> None:
        self._ok.inc()
        if start is not None:
            self._duration.observe(time.perf_counter() - start)

    def _failed(self, span: trace.Span, exc: BaseException, start: float | None) -> None:
        if isinstance(exc, BreakerOpenError):
            self._open.inc()
            span.set_status(Status(StatusCode.ERROR, str(exc)))
        elif isinstance(exc, GeneratorExit | asyncio.CancelledError):
            self._cancelled.inc()
        else:
            self._error.inc()
            if start is not None:
                self._duration.observe(time.perf_counter() - start)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
