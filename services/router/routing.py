"""Dispatch: a request goes through admission, queueing, dispatch and recovery, over the model's fallback chain.

1. **admission** (when tenants and Redis are configured): the tenant may use the model, and its token and spend
   budgets are leased from Redis in chunks (``qos.admission``); a spent budget is RESOURCE_EXHAUSTED with a delay;
2. for each model of the chain (the model, then its fallbacks breadth first, each once), skip it at once when
   every deployment's breaker is open or the prompt fits none of their context windows;
3. **queueing**: wait for a slot of the model in its fair scheduler (priority class, fair share between tenants,
   bounded queue); a request that cannot meet its deadline is shed at once ("shed"); one that waited the whole
   queue timeout moves on ("busy");
4. **dispatch**: the better of two deployments by latency x load / weight, each under its adaptive limit;
5. **recovery**: a failed attempt feeds the deployment's breaker and limit (429s and timeouts halve it,
   Retry-After opens the breaker for that long); fallback-worthy failures try another deployment of the same
   model, then the next model; every attempt after the first spends the global retry budget.

Streams fail over only until the first delta has been handed to the caller (the commit point, flagged in the
route of that chunk); after that an error ends the stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any, TypeVar, cast

from opentelemetry.trace import Span

from services.common.breaker import AsyncBreaker
from services.common.breaker_sync import BreakerSync
from services.common.errors import (
    BreakerOpenError,
    InvalidInputError,
    ResourceExhaustedError,
    UnavailableError,
)
from services.common.tenants import TenantDirectory
from services.router import metrics
from services.router.chat import ChatDelta, ChatRequest, ChatResult, EmbedRequest, EmbedResult, Route
from services.router.dispatch import Dispatcher, Slot, Walk, estimate_tokens, exhausted, finish
from services.router.groups import HOP_NAME, Group, RoutingPolicy, Target
from services.router.providers.base import EmbeddingAdapter, ProviderAdapter, ProviderError
from services.router.qos import PRIORITIES, Balancer, QuotaLeases, RetryBudget, TenantQuota
from services.router.registry import ModelSpec, ModelTable, Registry

__all__ = ["HOP_NAME", "Router", "RoutingPolicy"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_REJECTIONS = frozenset({"client_error", "content_policy", "context_window_exceeded"})
_OVERLOAD = frozenset({"rate_limited", "timeout"})


class Router(Dispatcher):
    """Routes chat and embedding requests over the registry's current table."""

    def __init__(
        self,
        registry: Registry,
        adapters: Mapping[str, ProviderAdapter],
        policy: RoutingPolicy | None = None,
        *,
        tenants: TenantDirectory | None = None,
        quotas: QuotaLeases | None = None,
        breaker_sync: BreakerSync | None = None,
    ) -> None:
        self.registry = registry
        self.policy = policy or RoutingPolicy()
        self.tenants = tenants
        self.quotas = quotas
        self.breaker_sync = breaker_sync
        self.budget = RetryBudget(self.policy.retry_ratio, min_per_s=self.policy.retry_min_per_s)
        self._balancer = Balancer()
        self._adapters = dict(adapters)
        self._groups: dict[str, Group] = {}
        for spec in registry.snapshot.models.values():
            self._add_group(spec)
        registry.subscribe(self._on_change)

    # -- state -------------------------------------------------------------------------------------

    def _add_group(self, spec: ModelSpec) -> None:
        group = self._groups[spec.name] = Group(spec, self.policy)
        for target in group.targets.values():
            self._attach(target)

    def _attach(self, target: Target) -> None:
        if self.breaker_sync is not None:
            self.breaker_sync.attach(target.breaker)

    def _detach(self, target: Target) -> None:
        if self.breaker_sync is not None:
            self.breaker_sync.detach(target.breaker.name)
        target.dmetrics.remove()

    def _on_change(self, old: ModelTable, new: ModelTable) -> None:
        for name in old.models.keys() - new.models.keys():
            group = self._groups.pop(name, None)
            if group is not None:
                for target in group.targets.values():
                    target.load.draining = True
                    self._detach(target)
        for name, spec in new.models.items():
            if old.get(name) is spec:
                continue
            group = self._groups.get(name)
            if group is None:
                self._add_group(spec)
            else:
                for target in group.follow(spec, self._detach):
                    self._attach(target)

    def breaker(self, model: str, deployment: str = "default") -> AsyncBreaker:
        """The circuit breaker of a deployment (operators and tests)."""
        return self._groups[model].targets[deployment].breaker

    def group(self, model: str) -> Group:
        """The live state of a model group (operators and tests)."""
        return self._groups[model]

    # -- admission ---------------------------------------------------------------------------------

    async def _admit(self, model: str, tenant: str, tokens: int) -> TenantQuota | None:
        """The tenant's quota after taking this request from it; refusals are typed errors."""
        if self.tenants is None or not tenant:
            return None
        policy = self.tenants.policy(tenant)
        policy.check_model(model)
        if self.quotas is None:
            return None
        q = policy.quotas
        quota = TenantQuota(tokens_per_minute=q.tokens_per_minute, spend_usd_per_day=q.spend_usd_per_day)
        try:
            await self.quotas.admit(tenant, quota, tokens=tokens)
        except ResourceExhaustedError:
            metrics.shed(model, "quota")
            raise
        return quota

    async def _charge(
        self, tenant: str, quota: TenantQuota | None, target: Target, prompt: int, out: int
    ) -> None:
        if quota is None or self.quotas is None:
            return
        d = target.deployment
        cost = prompt * d.input_cost_per_token + out * d.output_cost_per_token
        try:
            await self.quotas.charge(tenant, quota, tokens=out, cost_usd=cost)
        except Exception:  # the answer is already made: a metering hiccup must not fail it
            log.warning("quota charge failed", exc_info=True, extra={"tenant": tenant})

    def _start(self, model: str, tenant: str, priority: str, deadline: float | None, texts: Any) -> Walk:
        priority = priority or self.policy.default_priority
        if priority not in PRIORITIES:
            raise InvalidInputError(
                f"priority: must be one of {', '.join(PRIORITIES)} (got {priority!r})", field="priority"
            )
        table = self.registry.snapshot
        chain = table.chain(model)
        tokens = estimate_tokens(texts)
        windows = [t.context_window for s in chain for t in s.targets]
        if windows and all(0 < w <= tokens for w in windows):
            raise InvalidInputError(
                f"messages: the prompt (about {tokens} tokens) is longer than the context window of every "
                f"candidate model (largest: {max(windows)} tokens)",
                field="messages",
                tokens=tokens,
            )
        route = Route(priority=priority, table_version=table.version)
        return Walk(route, table, tenant, priority, deadline, tokens)

    # -- chat --------------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, deadline: float | None = None) -> tuple[ChatResult, Route]:
        """One completion from the first deployment in the chain that can serve it."""

        async def call(slot: Slot, span_attrs: dict[str, Any]) -> tuple[ChatResult, int, int]:
            target = slot.target
            async with target.hop.guard(f"chat {target.spec.provider_model}", **span_attrs) as span:
                result = await self._adapter(target.spec).chat(target.spec, request)
                u = result.usage
                _record_usage(span, target, result.model, u.prompt_tokens, u.completion_tokens)
            return result, u.prompt_tokens, u.completion_tokens

        texts = [m.content for m in request.messages]
        return await self._first(request.model, request.tenant, request.priority, deadline, texts, call)

    async def embed(
        self, request: EmbedRequest, *, deadline: float | None = None
    ) -> tuple[EmbedResult, Route]:
        """Vectors from the first deployment in the chain that can serve them."""

        async def call(slot: Slot, span_attrs: dict[str, Any]) -> tuple[EmbedResult, int, int]:
            target = slot.target
            adapter: Any = self._adapter(target.spec)
            if not callable(getattr(adapter, "embed", None)):
                raise ProviderError(
                    "client_error",
                    0,
                    f"provider {target.spec.provider!r} of model {slot.spec.name!r} serves no embeddings",
                )
            attrs = {**span_attrs, "gen_ai.operation.name": "embeddings"}
            async with target.hop.guard(f"embeddings {target.spec.provider_model}", **attrs) as span:
                result: EmbedResult = await cast(EmbeddingAdapter, adapter).embed(target.spec, request)
                _record_usage(span, target, result.model, result.usage.prompt_tokens, 0)
            return result, result.usage.prompt_tokens, 0

        return await self._first(
            request.model, request.tenant, request.priority, deadline, request.inputs, call
        )

    async def _first(
        self,
        model: str,
        tenant: str,
        priority: str,
        deadline: float | None,
        texts: Any,
        call: Callable[[Slot, dict[str, Any]], Awaitable[tuple[T, int, int]]],
    ) -> tuple[T, Route]:
        walk = self._start(model, tenant, priority, deadline, texts)
        quota = await self._admit(model, tenant, walk.tokens)
        async with aclosing(self.walk(model, walk)) as slots:
            async for slot in slots:
                try:
                    result, prompt, out = await call(slot, slot.target.attrs)
                except (ProviderError, BreakerOpenError) as exc:
                    slot.error = exc
                    continue
                except asyncio.CancelledError:  # the caller went away (deadline, disconnect)
                    slot.target.metrics.outcome("cancelled")
                    raise
                except Exception as exc:  # a bug or an unforeseen answer: count it, try the next one
                    log.warning("provider call crashed", exc_info=True, extra={"model": slot.spec.name})
                    slot.error = exc
                    continue
                target = slot.target
                await self._charge(tenant, quota, target, prompt, out)
                slot.error = None
                await finish(slots)
                return result, walk.route
        raise exhausted(model, walk)

    # -- stream ------------------------------------------------------------------------------------

    async def stream(
        self, request: ChatRequest, *, deadline: float | None = None
    ) -> AsyncGenerator[ChatDelta, None]:
        """Deltas from the first deployment that starts answering; the first and last carry the route."""
        received = time.perf_counter()
        texts = [m.content for m in request.messages]
        walk = self._start(request.model, request.tenant, request.priority, deadline, texts)
        quota = await self._admit(request.model, request.tenant, walk.tokens)
        route = walk.route
        async with aclosing(self.walk(request.model, walk)) as slots:
            async for slot in slots:
                target = slot.target
                committed = False
                try:
                    async with target.hop.guard(f"chat {target.spec.provider_model}", **target.attrs) as span:
                        deltas = self._adapter(target.spec).stream(target.spec, request)
                        async with aclosing(deltas):
                            async for delta in deltas:
                                if not committed:  # the commit point: no failover from here on
                                    committed = True
                                    slot.first_token_s = time.perf_counter() - slot.started
                                    target.metrics.ttft.observe(time.perf_counter() - received)
                                    span.add_event("first_token")
                                    route.committed = True
                                    self._served(route, slot)
                                    delta.route = route
                                if delta.finish_reason:
                                    if delta.usage is not None:
                                        u = delta.usage
                                        _record_usage(
                                            span, target, delta.model, u.prompt_tokens, u.completion_tokens
                                        )
                                        await self._charge(
                                            request.tenant,
                                            quota,
                                            target,
                                            u.prompt_tokens,
                                            u.completion_tokens,
                                        )
                                    self._served(route, slot)
                                    delta.route = route
                                yield delta
                except (ProviderError, BreakerOpenError) as exc:
                    if committed:
                        slot.error = exc
                        raise ProviderError(
                            exc.kind if isinstance(exc, ProviderError) else "server_error",
                            exc.status if isinstance(exc, ProviderError) else 0,
                            f"stream from model {slot.spec.name!r} broke after it began: {exc.message}",
                        ) from exc
                    slot.error = exc
                    continue
                except (asyncio.CancelledError, GeneratorExit):
                    target.metrics.outcome("cancelled")
                    slot.error = None
                    raise
                except Exception as exc:
                    log.warning("provider stream crashed", exc_info=True, extra={"model": slot.spec.name})
                    slot.error = exc
                    if committed:
                        raise UnavailableError(f"stream from model {slot.spec.name!r} broke: {exc}") from exc
                    continue
                slot.error = None
                await finish(slots)
                return
        raise exhausted(request.model, walk)

    def _adapter(self, spec: ModelSpec) -> ProviderAdapter:
        adapter = self._adapters.get(spec.provider)
        if adapter is None:
            raise ProviderError("misconfigured", 0, f"no adapter for provider {spec.provider!r}")
        return adapter


def _record_usage(span: Span, target: Target, model: str, prompt: int, completion: int) -> None:
    span.set_attribute("gen_ai.response.model", model)
    span.set_attribute("gen_ai.usage.input_tokens", prompt)
    span.set_attribute("gen_ai.usage.output_tokens", completion)
    target.metrics.tokens(prompt, completion)
    target.spend(completion)
