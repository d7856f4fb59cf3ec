"""Exact-match response cache in Redis, partitioned by tenant, sealed at rest when master keys are configured.

The key is a hash of the canonical request: the model, the messages and every parameter that changes the
answer (temperature, max_tokens, top_p, stop and the pass-through ``extra``: tools, response_format, seed...).
``user``, ``request_id`` and the tenant are not part of the hash; the tenant is part of the Redis key and of
the sealed value's associated data, so one tenant can never read another's answer.

Policy: a request is cached when it is deterministic enough (``temperature`` is 0) or the caller opts in
(``cache: "on"``); ``cache: "off"`` neither reads nor writes. A model whose TTL is 0 is never cached. Redis
trouble never fails a request: the cache then counts an ``error`` and the request goes to the provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Literal
from urllib.parse import quote

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.encryption import DecryptionError, Sealer
from services.common.errors import InvalidInputError
from services.router.chat import ChatDelta, ChatRequest, ChatResult, Route, ToolCall, Usage

log = logging.getLogger(__name__)

CacheMode = Literal["auto", "on", "off"]
MODES: tuple[str, ...] = ("auto", "on", "off")
MAX_VALUE_BYTES = 1 << 20
"""Answers larger than this are not cached (a cache of huge values costs more than it saves)."""
_REPLAY_PIECE = re.compile(r"\S+\s*|\s+")

CACHE_REQUESTS = Counter(
    "openclaw_router_cache_requests_total",
    "Response cache lookups by outcome (hit, miss, bypass, error).",
    ["model", "outcome"],
)
COALESCED = Counter(
    "openclaw_router_coalesced_requests_total",
    "Requests that joined an identical request's provider call already in flight instead of making their own.",
    ["model"],
)


def cache_mode(value: str, *, field: str = "cache") -> CacheMode:
    """The request's cache mode ("" means auto); InvalidInputError names the field otherwise."""
    mode = value.strip().lower() or "auto"
    if mode not in MODES:
        raise InvalidInputError(f"{field}: must be one of {', '.join(MODES)} (got {value!r})", field=field)
    return mode  # type: ignore[return-value]


def request_digest(request: ChatRequest) -> str:
    """SHA-256 of the canonical request: the fields that change the answer, in a fixed order."""
    canonical = {
        "model": request.model,
        "messages": [
            [
                m.role,
                m.content,
                m.name,
                m.tool_call_id,
                [[c.id, c.type, c.name, c.arguments] for c in m.tool_calls],
            ]
            for m in request.messages
        ],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "top_p": request.top_p,
        "stop": list(request.stop),
        "extra": request.extra,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How long answers are kept: a global TTL and per-model TTLs (0 turns caching off)."""

    ttl_s: float = 3600.0
    model_ttls: dict[str, float] | None = None

    def ttl(self, request: ChatRequest, mode: CacheMode) -> float:
        """Seconds to keep this request's answer; 0 when it must not be cached."""
        if mode == "off":
            return 0.0
        ttl = self.ttl_s
        if self.model_ttls and request.model in self.model_ttls:
            ttl = self.model_ttls[request.model]
        if ttl <= 0:
            return 0.0
        if mode == "on" or request.temperature == 0:
            return ttl
        return 0.0


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A stored completion and the model that produced it."""

    result: ChatResult
    model: str
    provider: str
    simulated: bool

    def route(self, cache: str) -> Route:
        """The route a cached answer reports: the model that first produced it, no attempts."""
        return Route(model=self.model, provider=self.provider, simulated=self.simulated, cache=cache)

    def to_json(self) -> str:
        """The stored form."""
        result = self.result
        data = {
            "id": result.id,
            "model": result.model,
            "content": result.content,
            "finish_reason": result.finish_reason,
            "usage": [result.usage.prompt_tokens, result.usage.completion_tokens],
            "tool_calls": [asdict(call) for call in result.tool_calls],
            "created": result.created,
            "route": [self.model, self.provider, self.simulated],
        }
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> CachedAnswer:
        """Parse the stored form; ValueError (or KeyError/TypeError) when it is not one."""
        data = json.loads(text)
        model, provider, simulated = data["route"]
        result = ChatResult(
            id=str(data["id"]),
            model=str(data["model"]),
            content=str(data["content"]),
            finish_reason=str(data["finish_reason"]),
            usage=Usage(int(data["usage"][0]), int(data["usage"][1])),
            tool_calls=tuple(ToolCall(**call) for call in data["tool_calls"]),
            created=int(data["created"]),
        )
        return cls(result, str(model), str(provider), bool(simulated))

    def replay(self, cache: str = "hit") -> list[ChatDelta]:
        """The answer as stream deltas: the text word by word, tool calls whole, usage on the last."""
        result = self.result
        route = self.route(cache)
        pieces = _REPLAY_PIECE.findall(result.content) or [""]
        deltas = [ChatDelta(text=piece, id=result.id, model=result.model) for piece in pieces]
        if result.tool_calls:
            deltas.append(ChatDelta(tool_calls=result.tool_calls, id=result.id, model=result.model))
        deltas[0].route = route
        last = ChatDelta(
            finish_reason=result.finish_reason or "stop",
            usage=Usage(result.usage.prompt_tokens, result.usage.completion_tokens),
            id=result.id,
            model=result.model,
            route=route,
        )
        return [*deltas, last]


class ResponseCache:
    """Answers in Redis under ``{ns}:router:cache:{tenant}:{digest}``, sealed per tenant when a Sealer is given."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        policy: CachePolicy,
        *,
        sealer: Sealer | None = None,
        timeout_s: float = 0.25,
    ) -> None:
        self._redis = redis
        self._prefix = f"{namespace}:router:cache:"
        self.policy = policy
        self._sealer = sealer
        self._timeout = timeout_s

    def key(self, tenant: str, digest: str) -> str:
        """The Redis key of one tenant's answer (the tenant quoted, so no tenant name reaches another's keys)."""
        return f"{self._prefix}{quote(tenant, safe='')}:{digest}"

    async def get(self, tenant: str, digest: str, model: str) -> CachedAnswer | None:
        """The tenant's stored answer, or None (miss, unreadable value, or Redis out of reach)."""
        key = self.key(tenant, digest)
        try:
            async with asyncio.timeout(self._timeout):
                raw: str | None = await self._redis.get(key)
                if raw is None:
                    CACHE_REQUESTS.labels(model, "miss").inc()
                    return None
                if self._sealer is not None:
                    raw = await self._sealer.open_text(tenant, raw, key)
            answer = CachedAnswer.from_json(raw)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("response cache read failed", extra={"model": model, "error": str(exc)})
            CACHE_REQUESTS.labels(model, "error").inc()
            return None
        except (DecryptionError, ValueError, KeyError, TypeError) as exc:
            # Sealed under a key we lack, written before sealing was configured, or corrupt: a miss.
            log.warning("response cache value unreadable", extra={"model": model, "error": str(exc)})
            CACHE_REQUESTS.labels(model, "error").inc()
            return None
        CACHE_REQUESTS.labels(model, "hit").inc()
        return answer

    async def put(self, tenant: str, digest: str, answer: CachedAnswer, ttl_s: float) -> bool:
        """Store the answer for ``ttl_s`` seconds; False when it was not stored (too big, Redis trouble)."""
        text = answer.to_json()
        if len(text) > MAX_VALUE_BYTES:
            return False
        key = self.key(tenant, digest)
        try:
            async with asyncio.timeout(self._timeout):
                if self._sealer is not None:
                    text = await self._sealer.seal_text(tenant, text, key)
                await self._redis.set(key, text, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("response cache write failed", extra={"model": answer.model, "error": str(exc)})
            return False
        return True


def bypass(model: str) -> None:
    """Count a request the policy keeps out of the cache."""
    CACHE_REQUESTS.labels(model, "bypass").inc()


def answer_of(result: ChatResult, route: Route) -> CachedAnswer:
    """What to store for a served request."""
    return CachedAnswer(result, route.model, route.provider, route.simulated)
