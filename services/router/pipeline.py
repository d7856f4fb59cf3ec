"""What happens around routing: the context-window check, the response cache, coalescing, micro-batching, metering.

The servicer calls the pipeline; the pipeline calls the Router only when the answer is not already known:

1. a prompt that fits none of the candidate models' known context windows is refused before any call;
2. a cacheable request (see ``services.router.cache``) is answered from the tenant's cache when it can be;
3. identical cacheable requests of one tenant in flight together share one provider call (or stream);
4. Embed requests are micro-batched (``services.router.batcher``);
5. every provider call that served is metered (tokens and cost per tenant, model and deployment).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing

from redis.asyncio import Redis

from services.common.audit import AuditLog
from services.common.encryption import Keyring, Sealer
from services.common.errors import OpenClawError
from services.common.redis_client import open_redis
from services.router.audit import ModelCallAudit
from services.router.batcher import EmbedBatcher
from services.router.cache import (
    COALESCED,
    CachePolicy,
    ResponseCache,
    answer_of,
    bypass,
    cache_mode,
    request_digest,
)
from services.router.catalogue import (
    Catalogue,
    CatalogueEntry,
    ensure_fits,
    load_catalogue,
)
from services.router.chat import ChatDelta, ChatRequest, ChatResult, EmbedRequest, EmbedResult, Route, Usage
from services.router.inflight import Coalescer, StreamCoalescer
from services.router.metering import Meter
from services.router.routing import Router
from services.router.settings import RouterSettings

DEFAULT_DEPLOYMENT = "default"


class Pipeline:
    """Chat, ChatStream and Embed as the servicer sees them."""

    def __init__(
        self,
        router: Router,
        *,
        catalogue: Catalogue | None = None,
        cache: ResponseCache | None = None,
        policy: CachePolicy | None = None,
        meter: Meter | None = None,
        coalesce: bool = True,
        embed_window_s: float = 0.005,
        embed_max_inputs: int = 256,
        closers: Sequence[Callable[[], Awaitable[None]]] = (),
        audit: ModelCallAudit | None = None,
    ) -> None:
        self.router = router
        self.audit = audit
        self._audit_start: asyncio.Task[None] | None = None
        self.catalogue = catalogue if catalogue is not None else load_catalogue()
        self.cache = cache
        self.policy = cache.policy if cache is not None else (policy or CachePolicy())
        self.meter = meter
        # Keyed by tenant, request and priority: a batch-class caller never holds up an interactive one.
        self._coalescer: Coalescer[tuple[str, str, str], tuple[ChatResult, Route]] | None = (
            Coalescer() if coalesce else None
        )
        self._streams: StreamCoalescer[tuple[str, str, str], ChatDelta] | None = (
            StreamCoalescer() if coalesce else None
        )
        self.batcher = EmbedBatcher(self._embed_call, window_s=embed_window_s, max_inputs=embed_max_inputs)
        self._closers = list(closers)

    # -- chat --------------------------------------------------------------------------------------

    async def chat(
        self, request: ChatRequest, *, deadline: float | None = None, cache: str = ""
    ) -> tuple[ChatResult, Route]:
        """One completion: from the tenant's cache, a call in flight, or the router (audited either way)."""
        try:
            result, route = await self._chat(request, deadline=deadline, cache=cache)
        except OpenClawError as exc:
            await self._audit(request, "model.chat", exc.code)
            raise
        await self._audit(request, "model.chat", "ok", route, result.usage)
        return result, route

    async def _chat(
        self, request: ChatRequest, *, deadline: float | None = None, cache: str = ""
    ) -> tuple[ChatResult, Route]:
        mode = cache_mode(cache)
        self._precheck(request)
        ttl = self.policy.ttl(request, mode)
        if not ttl:
            if self.cache is not None:
                bypass(request.model)
            result, route = await self._serve(request, deadline)
            route.cache = "bypass" if self.cache is not None else ""
            return result, route
        digest = request_digest(request)
        if self.cache is not None:
            hit = await self.cache.get(request.tenant, digest, request.model)
            if hit is not None:
                return hit.result, hit.route("hit")
        if self._coalescer is None:
            return await self._serve_and_store(request, deadline, digest, ttl)
        (result, route), shared = await self._coalescer.run(
            (request.tenant, digest, request.priority),
            lambda: self._serve_and_store(request, deadline, digest, ttl),
            on_share=COALESCED.labels(request.model).inc,
        )
        if shared:
            route = dataclasses.replace(route, attempts=list(route.attempts), cache="coalesced")
        return result, route

    async def _serve_and_store(
        self, request: ChatRequest, deadline: float | None, digest: str, ttl: float
    ) -> tuple[ChatResult, Route]:
        result, route = await self._serve(request, deadline)
        if self.cache is not None:
            route.cache = "miss"
            await self.cache.put(request.tenant, digest, answer_of(result, route), ttl)
        return result, route

    async def _serve(self, request: ChatRequest, deadline: float | None) -> tuple[ChatResult, Route]:
        result, route = await self.router.chat(request, deadline=deadline)
        self._record(request.tenant, route, result.usage)
        return result, route

    async def stream(
        self, request: ChatRequest, *, deadline: float | None = None, cache: str = ""
    ) -> AsyncGenerator[ChatDelta, None]:
        """Deltas: a cached answer replayed, or the router's stream (stored when it completes); audited at its end."""
        last: ChatDelta | None = None
        deltas = self._stream(request, deadline=deadline, cache=cache)
        try:
            async with aclosing(deltas):
                async for delta in deltas:
                    if delta.finish_reason:
                        last = delta
                    yield delta
        except OpenClawError as exc:
            await self._audit(request, "model.chat_stream", exc.code)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            # The caller walked away: record without awaiting (a closing generator must not wait).
            self._audit_nowait(request, "model.chat_stream", "cancelled")
            raise
        route = last.route if last is not None else None
        usage = (last.usage or Usage()) if last is not None else None
        await self._audit(request, "model.chat_stream", "ok", route, usage)

    async def _stream(
        self, request: ChatRequest, *, deadline: float | None = None, cache: str = ""
    ) -> AsyncGenerator[ChatDelta, None]:
        mode = cache_mode(cache)
        self._precheck(request)
        ttl = self.policy.ttl(request, mode)
        digest = request_digest(request) if ttl else ""
        status = ""
        if self.cache is not None:
            if ttl:
                hit = await self.cache.get(request.tenant, digest, request.model)
                if hit is not None:
                    for delta in hit.replay():
                        yield delta
                    return
                status = "miss"
            else:
                bypass(request.model)
                status = "bypass"
        if not ttl or self._streams is None:
            async for delta in self._stream_through(request, deadline, status, digest, ttl):
                yield delta
            return
        shared_deltas = self._streams.stream(
            (request.tenant, digest, request.priority),
            lambda: self._stream_through(request, deadline, status, digest, ttl),
            on_share=COALESCED.labels(request.model).inc,
        )
        async with aclosing(shared_deltas):
            async for delta, shared in shared_deltas:
                if shared and delta.route is not None:  # the route is the caller's own: say it was shared
                    route = dataclasses.replace(
                        delta.route, attempts=list(delta.route.attempts), cache="coalesced"
                    )
                    delta = dataclasses.replace(delta, route=route)
                yield delta

    async def _stream_through(
        self, request: ChatRequest, deadline: float | None, status: str, digest: str, ttl: float
    ) -> AsyncGenerator[ChatDelta, None]:
        """The router's stream, metered and (when ``ttl``) stored once it completes."""
        text: list[str] = []
        tools = False
        final: ChatDelta | None = None
        first_id = ""
        deltas = self.router.stream(request, deadline=deadline)
        async with aclosing(deltas):
            async for delta in deltas:
                if delta.route is not None:
                    delta.route.cache = status
                first_id = first_id or delta.id
                text.append(delta.text)
                tools = tools or bool(delta.tool_calls)
                if delta.finish_reason:
                    final = delta
                yield delta
        if final is None or final.route is None:
            return
        usage = final.usage or Usage()
        self._record(request.tenant, final.route, usage)
        if ttl and self.cache is not None and not tools:  # streamed tool calls may come in fragments
            result = ChatResult(
                id=final.id or first_id,
                model=final.model,
                content="".join(text),
                finish_reason=final.finish_reason,
                usage=Usage(usage.prompt_tokens, usage.completion_tokens),
                created=int(time.time()),
            )
            await self.cache.put(request.tenant, digest, answer_of(result, final.route), ttl)

    def _precheck(self, request: ChatRequest) -> None:
        """Refuse, before the cache and any call: a model the tenant may not use, a prompt that fits nowhere."""
        if self.router.tenants is not None and request.tenant:
            # Checked here too, so a cached answer never outlives the tenant's access to the model.
            self.router.tenants.policy(request.tenant).check_model(request.model)
        windows: list[tuple[str, int | None]] = []
        for spec in self.router.registry.snapshot.chain(request.model):
            targets = spec.targets  # a model group: each deployment has its own window
            for target in targets:
                entry = self.catalogue.for_model(target, model_name=spec.name)
                label = spec.name if len(targets) == 1 else f"{spec.name}/{target.name}"
                windows.append((label, entry.context_window if entry is not None else None))
        ensure_fits(request.model, windows, request.messages)

    # -- embeddings --------------------------------------------------------------------------------

    async def embed(
        self, request: EmbedRequest, *, deadline: float | None = None
    ) -> tuple[EmbedResult, Route]:
        """Vectors, through a micro-batch when other requests for the same model come along."""
        try:
            self.router.registry.snapshot.require(
                request.model
            )  # an unknown model fails alone, not its batch
            result, route = await self.batcher.embed(request, deadline)
        except OpenClawError as exc:
            await self._audit(request, "model.embed", exc.code)
            raise
        await self._audit(request, "model.embed", "ok", route, result.usage)
        return result, route

    async def _embed_call(self, request: EmbedRequest, deadline: float | None) -> tuple[EmbedResult, Route]:
        result, route = await self.router.embed(request, deadline=deadline)
        self._record(request.tenant, route, result.usage)
        return result, route

    # -- metering ----------------------------------------------------------------------------------

    def _record(self, tenant: str, route: Route, usage: Usage) -> None:
        if self.meter is None:
            return
        deployment = route.deployment or DEFAULT_DEPLOYMENT
        entry = self.price(route.model, deployment)
        cost = entry.cost(usage.prompt_tokens, usage.completion_tokens) if entry is not None else 0.0
        self.meter.record(tenant, route.model, deployment, usage.prompt_tokens, usage.completion_tokens, cost)

    def price(self, model: str, deployment: str = DEFAULT_DEPLOYMENT) -> CatalogueEntry | None:
        """The prices of a served model's deployment: its own cost fields, else the catalogue's entry."""
        spec = self.router.registry.snapshot.get(model)
        if spec is None:
            return None
        target = next((t for t in spec.targets if t.name == deployment), None)
        if target is not None:
            return self.catalogue.for_model(target, model_name=spec.name)
        return self.catalogue.for_model(spec)

    def start(self) -> None:
        """Start the background parts (the usage flush, the audit writer)."""
        if self.meter is not None:
            self.meter.start()
        if self.audit is not None:
            self._audit_start = asyncio.get_running_loop().create_task(self.audit.log.start())

    def _audit_nowait(self, request: ChatRequest, action: str, outcome: str) -> None:
        if self.audit is not None:
            event = self.audit.event(
                tenant=request.tenant, action=action, model=request.model, user=request.user, outcome=outcome
            )
            if event is not None:
                self.audit.log.record_nowait(event)

    async def _audit(
        self,
        request: ChatRequest | EmbedRequest,
        action: str,
        outcome: str,
        route: Route | None = None,
        usage: Usage | None = None,
    ) -> None:
        if self.audit is None:
            return
        cost = None
        if route is not None and usage is not None and route.cache not in ("hit",):
            entry = self.price(route.model, route.deployment or DEFAULT_DEPLOYMENT)
            cost = entry.cost(usage.prompt_tokens, usage.completion_tokens) if entry is not None else None
        event = self.audit.event(
            tenant=request.tenant,
            action=action,
            model=request.model,
            user=request.user,
            outcome=outcome,
            route=route,
            usage=usage,
            cost_usd=cost,
            request=request if isinstance(request, ChatRequest) else None,
        )
        if event is not None:
            await self.audit.log.record(event)

    async def close(self) -> None:
        """Send the open embedding batches, write the pending usage and audit records, close what it owns."""
        await self.batcher.close()
        if self.meter is not None:
            await self.meter.stop()
        if self.audit is not None:
            await self.audit.log.stop()
        for close in self._closers:
            await close()


def build_pipeline(settings: RouterSettings, router: Router, *, redis: Redis | None = None) -> Pipeline:
    """The pipeline the settings describe; opens (and will close) its own Redis client unless given one."""
    catalogue = load_catalogue(settings.catalogue or None)
    policy = CachePolicy(settings.cache_ttl_seconds, dict(settings.cache_models))
    closers: list[Callable[[], Awaitable[None]]] = []
    if redis is None and (settings.cache_ttl_seconds > 0 or settings.metering):
        redis = open_redis(settings.redis_url)
        closers.append(redis.aclose)
    cache: ResponseCache | None = None
    if redis is not None and settings.cache_ttl_seconds > 0:
        cache = ResponseCache(redis, settings.namespace, policy, sealer=_sealer(settings, redis))
    tenants = router.tenants
    meter = Meter(
        redis if settings.metering else None,
        settings.namespace,
        retention_days=settings.usage_retention_days,
        tenant_label=tenants.metric_label if tenants is not None else None,
    )
    audit = (
        ModelCallAudit(
            AuditLog(redis, settings.namespace, settings.audit_key_bytes(), service="router"), tenants
        )
        if redis is not None and settings.audit
        else None
    )
    return Pipeline(
        router,
        audit=audit,
        catalogue=catalogue,
        cache=cache,
        policy=policy,
        meter=meter,
        coalesce=settings.coalesce,
        embed_window_s=settings.embed_batch_window_ms / 1000,
        embed_max_inputs=settings.embed_batch_max_inputs,
        closers=closers,
    )


def _sealer(settings: RouterSettings, redis: Redis) -> Sealer | None:
    """A Sealer under the configured master keys (``OPENCLAW_MASTER_KEYS``), or None when there are none."""
    master = settings.master_key_set()
    return Sealer(Keyring(redis, settings.namespace, master)) if master is not None else None
