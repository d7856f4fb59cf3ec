"""Dispatch: admit a request to a model (breaker, concurrency queue), call its provider, walk the fallbacks.

For each model in the chain (the model, then its fallbacks breadth first, each once):

1. skip it at once if its circuit breaker is open;
2. wait for one of its ``max_concurrency`` slots, in a bounded queue, up to the queue timeout ("busy");
3. call the provider through the model's Hop (breaker + ``openclaw_hop_*`` metrics + a GenAI client span);
4. on a fallback-worthy failure (rate limited, 5xx, timeout, unreachable, breaker open, busy) try the next
   model; on the caller's own fault (bad request, content policy) stop.

Streams fail over only until the first delta has been handed to the caller (the commit point); after
that an error ends the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from opentelemetry.trace import Span

from services.common.breaker import AsyncBreaker
from services.common.errors import (
    BreakerOpenError,
    OpenClawError,
    ResourceExhaustedError,
    UnavailableError,
)
from services.common.hop import Hop
from services.router import metrics
from services.router.chat import Attempt, ChatDelta, ChatRequest, ChatResult, EmbedRequest, EmbedResult, Route
from services.router.limiter import BusyError, Limiter
from services.router.providers.base import (
    EmbeddingAdapter,
    ProviderAdapter,
    ProviderError,
    ProviderRejectedError,
)
from services.router.registry import ModelSpec, ModelTable, Registry

log = logging.getLogger(__name__)

HOP_NAME = "router.provider"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """Limits that apply to every model."""

    queue_timeout_s: float = 10.0
    max_queue: int = 1000
    breaker_fail_max: int = 5
    breaker_reset_s: float = 30.0


class _Runtime:
    """The mutable state of one model that outlives table versions: its queue, breaker and metrics."""

    __slots__ = ("_spec", "attrs", "hop", "limiter", "metrics")

    def __init__(self, spec: ModelSpec, policy: RoutingPolicy) -> None:
        self.limiter = Limiter(spec.name, spec.max_concurrency, max_queue=policy.max_queue)
        breaker = AsyncBreaker(
            f"{HOP_NAME}.{spec.name}", fail_max=policy.breaker_fail_max, reset_timeout=policy.breaker_reset_s
        )
        self.hop = Hop(HOP_NAME, breaker=breaker)
        self._spec = spec
        self.metrics = metrics.ModelMetrics(spec.name, spec.provider)
        self.attrs = _span_attributes(spec)

    def follow(self, spec: ModelSpec) -> None:
        """Adopt a changed definition of the same model."""
        old, self._spec = self._spec, spec
        if spec.max_concurrency != self.limiter.limit:
            self.limiter.resize(spec.max_concurrency)
        if spec.provider != old.provider:
            self.metrics = metrics.ModelMetrics(spec.name, spec.provider)
        if (spec.provider, spec.endpoint) != (
            old.provider,
            old.endpoint,
        ) and self.hop.breaker.state != "closed":
            self.hop.breaker.close()  # a new deployment deserves a fresh start
        self.attrs = _span_attributes(spec)


def _span_attributes(spec: ModelSpec) -> dict[str, Any]:
    url = urlsplit(spec.endpoint)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": spec.provider,
        "gen_ai.request.model": spec.provider_model,
        "server.address": url.hostname or "",
        "openclaw.model": spec.name,
        "openclaw.simulated": spec.simulated,
    }
    if url.port:
        attrs["server.port"] = url.port
    return attrs


def _served(route: Route, spec: ModelSpec, started: float) -> None:
    """Record the model that answers, with its attempt so far."""
    route.model, route.provider, route.simulated = spec.name, spec.provider, spec.simulated
    route.attempts.append(Attempt(spec.name, spec.provider, "ok", "", (time.perf_counter() - started) * 1000))


def _record_usage(span: Span, rt: _Runtime, model: str, prompt: int, completion: int) -> None:
    span.set_attribute("gen_ai.response.model", model)
    span.set_attribute("gen_ai.usage.input_tokens", prompt)
    span.set_attribute("gen_ai.usage.output_tokens", completion)
    rt.metrics.tokens(prompt, completion)


class Router:
    """Routes chat requests over the registry's current table."""

    def __init__(
        self,
        registry: Registry,
        adapters: Mapping[str, ProviderAdapter],
        policy: RoutingPolicy | None = None,
    ) -> None:
        self.registry = registry
        self.policy = policy or RoutingPolicy()
        self._adapters = dict(adapters)
        self._runtimes: dict[str, _Runtime] = {}
        for spec in registry.snapshot.models.values():
            self._runtimes[spec.name] = _Runtime(spec, self.policy)
        registry.subscribe(self._on_change)

    # -- state -------------------------------------------------------------------------------------

    def _on_change(self, old: ModelTable, new: ModelTable) -> None:
        for name in old.models.keys() - new.models.keys():
            self._runtimes.pop(name, None)
        for name, spec in new.models.items():
            if old.get(name) is spec:
                continue
            runtime = self._runtimes.get(name)
            if runtime is None:
                self._runtimes[name] = _Runtime(spec, self.policy)
            else:
                runtime.follow(spec)

    def _runtime(self, spec: ModelSpec) -> _Runtime:
        runtime = self._runtimes.get(spec.name)
        if runtime is None:  # removed while this request was in flight: finish on a private runtime
            runtime = _Runtime(spec, self.policy)
        return runtime

    def breaker(self, model: str) -> AsyncBreaker:
        """The circuit breaker of a model (operators and tests)."""
        return self._runtimes[model].hop.breaker

    def limiter(self, model: str) -> Limiter:
        """The concurrency limiter of a model (operators and tests)."""
        return self._runtimes[model].limiter

    # -- admission ---------------------------------------------------------------------------------

    async def _admit(self, spec: ModelSpec, rt: _Runtime, route: Route, deadline: float | None) -> bool:
        """Take a slot of the model, or record why not (breaker open, busy) and return False."""
        breaker = rt.hop.breaker
        if breaker.state == "open":
            wait = breaker.retry_after()
            if wait > 0:
                self._failed(
                    route, spec, rt, "breaker_open", f"circuit breaker open for {wait:.1f}s more", 0.0
                )
                return False
        if rt.limiter.try_acquire():
            rt.metrics.queue_wait.observe(0.0)
            return True
        timeout = self.policy.queue_timeout_s
        if deadline is not None:
            timeout = min(timeout, deadline - time.monotonic())
        try:
            waited = await rt.limiter.acquire(timeout)
        except BusyError as exc:
            rt.metrics.queue_wait.observe(exc.waited_s)
            route.queue_ms += exc.waited_s * 1000
            self._failed(route, spec, rt, "busy", exc.message, exc.waited_s * 1000)
            return False
        rt.metrics.queue_wait.observe(waited)
        route.queue_ms += waited * 1000
        return True

    def _failed(
        self, route: Route, spec: ModelSpec, rt: _Runtime, outcome: str, error: str, ms: float
    ) -> None:
        route.attempts.append(Attempt(spec.name, spec.provider, outcome, error, ms))
        rt.metrics.outcome(outcome)
        log.debug("attempt failed", extra={"model": spec.name, "outcome": outcome, "error": error})

    def _adapter(self, spec: ModelSpec) -> ProviderAdapter:
        adapter = self._adapters.get(spec.provider)
        if adapter is None:
            raise ProviderError("misconfigured", 0, f"no adapter for provider {spec.provider!r}")
        return adapter

    def _chain(self, model: str) -> Iterator[ModelSpec]:
        """The model, then its fallbacks; each step to a fallback is counted."""
        previous = ""
        for spec in self.registry.snapshot.chain(model):
            if previous:
                metrics.fallback(previous, spec.name)
            previous = spec.name
            yield spec

    # -- chat --------------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> tuple[ChatResult, Route]:
        """One completion from the first model in the chain that can serve it."""

        async def call(spec: ModelSpec, rt: _Runtime) -> ChatResult:
            async with rt.hop.guard(f"chat {spec.provider_model}", **rt.attrs) as span:
                result = await self._adapter(spec).chat(spec, request)
                u = result.usage
                _record_usage(span, rt, result.model, u.prompt_tokens, u.completion_tokens)
            return result

        return await self._first(request.model, deadline, call)

    async def embed(
        self, request: EmbedRequest, *, deadline: float | None = None
    ) -> tuple[EmbedResult, Route]:
        """Vectors from the first model in the chain that can serve them."""

        async def call(spec: ModelSpec, rt: _Runtime) -> EmbedResult:
            adapter: Any = self._adapter(spec)
            if not callable(getattr(adapter, "embed", None)):
                raise ProviderError(
                    "client_error",
                    0,
                    f"provider {spec.provider!r} of model {spec.name!r} serves no embeddings",
                )
            attrs = {**rt.attrs, "gen_ai.operation.name": "embeddings"}
            async with rt.hop.guard(f"embeddings {spec.provider_model}", **attrs) as span:
                result: EmbedResult = await cast(EmbeddingAdapter, adapter).embed(spec, request)
                _record_usage(span, rt, result.model, result.usage.prompt_tokens, 0)
            return result

        return await self._first(request.model, deadline, call)

    async def _first(
        self, model: str, deadline: float | None, call: Callable[[ModelSpec, _Runtime], Awaitable[T]]
    ) -> tuple[T, Route]:
        """The answer of the first model in the chain that gives one; fallbacks walked by error class."""
        route = Route()
        rejected: ProviderError | None = None
        for spec in self._chain(model):
            rt = self._runtime(spec)
            if not await self._admit(spec, rt, route, deadline):
                continue
            rt.metrics.in_flight.inc()
            start = time.perf_counter()
            try:
                result = await call(spec, rt)
            except (ProviderError, BreakerOpenError) as exc:
                elapsed = time.perf_counter() - start
                rt.metrics.duration.observe(elapsed)
                outcome = exc.kind if isinstance(exc, ProviderError) else "breaker_open"
                self._failed(route, spec, rt, outcome, exc.message, elapsed * 1000)
                if isinstance(exc, ProviderError) and not exc.fallback:
                    rejected = exc
                    break
                if isinstance(exc, ProviderRejectedError):
                    rejected = exc
                continue
            except asyncio.CancelledError:  # the caller went away (deadline, disconnect)
                rt.metrics.outcome("cancelled")
                raise
            except Exception as exc:  # a bug or an unforeseen answer: count it, try the next model
                log.warning("provider call crashed", exc_info=True, extra={"model": spec.name})
                elapsed = time.perf_counter() - start
                self._failed(
                    route, spec, rt, "internal_error", f"{type(exc).__name__}: {exc}", elapsed * 1000
                )
                continue
            finally:
                rt.metrics.in_flight.dec()
                rt.limiter.release()
            rt.metrics.duration.observe(time.perf_counter() - start)
            rt.metrics.outcome("ok")
            _served(route, spec, start)
            return result, route
        raise _exhausted(model, route, rejected)

    # -- stream ------------------------------------------------------------------------------------

    async def stream(
        self, request: ChatRequest, *, deadline: float | None = None
    ) -> AsyncGenerator[ChatDelta, None]:
        """Deltas from the first model that starts answering; the first and last carry the route."""
        received = time.perf_counter()
        route = Route()
        rejected: ProviderError | None = None
        for spec in self._chain(request.model):
            rt = self._runtime(spec)
            if not await self._admit(spec, rt, route, deadline):
                continue
            rt.metrics.in_flight.inc()
            start = time.perf_counter()
            committed = False
            outcome = "cancelled"
            try:
                async with rt.hop.guard(f"chat {spec.provider_model}", **rt.attrs) as span:
                    deltas = self._adapter(spec).stream(spec, request)
                    async with aclosing(deltas):
                        async for delta in deltas:
                            if not committed:  # the commit point: no failover from here on
                                committed = True
                                rt.metrics.ttft.observe(time.perf_counter() - received)
                                span.add_event("first_token")
                                _served(route, spec, start)
                                delta.route = route
                            if delta.finish_reason:
                                if delta.usage is not None:
                                    u = delta.usage
                                    _record_usage(span, rt, delta.model, u.prompt_tokens, u.completion_tokens)
                                route.attempts.pop()
                                _served(route, spec, start)
                                delta.route = route
                            yield delta
                outcome = "ok"
            except (ProviderError, BreakerOpenError) as exc:
                elapsed_ms = (time.perf_counter() - start) * 1000
                outcome = exc.kind if isinstance(exc, ProviderError) else "breaker_open"
                if committed:
                    raise ProviderError(
                        exc.kind if isinstance(exc, ProviderError) else "server_error",
                        exc.status if isinstance(exc, ProviderError) else 0,
                        f"stream from model {spec.name!r} broke after it began: {exc.message}",
                    ) from exc
                route.attempts.append(Attempt(spec.name, spec.provider, outcome, exc.message, elapsed_ms))
                log.debug(
                    "attempt failed", extra={"model": spec.name, "outcome": outcome, "error": exc.message}
                )
                if isinstance(exc, ProviderError) and not exc.fallback:
                    rejected = exc
                    break
                if isinstance(exc, ProviderRejectedError):
                    rejected = exc
                continue
            except Exception as exc:
                log.warning("provider stream crashed", exc_info=True, extra={"model": spec.name})
                outcome = "internal_error"
                if committed:
                    raise UnavailableError(f"stream from model {spec.name!r} broke: {exc}") from exc
                route.attempts.append(
                    Attempt(spec.name, spec.provider, outcome, f"{type(exc).__name__}: {exc}")
                )
                continue
            finally:
                rt.metrics.in_flight.dec()
                rt.limiter.release()
                rt.metrics.duration.observe(time.perf_counter() - start)
                rt.metrics.outcome(outcome)
            return
        raise _exhausted(request.model, route, rejected)


def _exhausted(model: str, route: Route, rejected: ProviderError | None) -> OpenClawError:
    """The error for a request no model served, with every attempt summarised."""
    attempts = [
        {"model": a.model, "outcome": a.outcome, "error": a.error, "duration_ms": round(a.duration_ms, 1)}
        for a in route.attempts
    ]
    summary = "; ".join(
        f"{a.model}: {a.outcome}" + (f" ({a.error})" if a.error else "") for a in route.attempts
    )
    if rejected is not None and all(a.outcome in _REJECTIONS for a in route.attempts):
        err: OpenClawError = ProviderError(
            rejected.kind, rejected.status, f"model {model!r} rejected the request: {summary}"
        )
    elif route.attempts and all(a.outcome == "busy" for a in route.attempts):
        err = ResourceExhaustedError(f"every model for {model!r} is busy: {summary}", model=model)
    else:
        err = UnavailableError(
            f"all {len(route.attempts)} attempts failed for model {model!r}: {summary}", model=model
        )
    err.details["attempts"] = attempts
    return err


_REJECTIONS = frozenset({"client_error", "content_policy", "context_window_exceeded"})
