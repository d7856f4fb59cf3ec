"""The admission stage: per-tenant budgets of requests and tokens per minute and spend per day, held to across
router replicas without a Redis round trip per request.

Each budget is a counter per window in Redis. A replica leases a chunk of it (one script call), spends the
chunk locally, and leases again when it runs out; so Redis sees one call per chunk, and the replicas together can
never admit more than the budget. What a replica has leased and not spent when a window ends is lost, which
bounds under-admission to one chunk per replica: chunks default to 1/200 of the budget.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.errors import ResourceExhaustedError

log = logging.getLogger(__name__)

# KEYS[1] the window's counter; ARGV: budget, chunk, ttl (s). Returns how much was granted (0: exhausted).
_LEASE = """
local left = redis.call('GET', KEYS[1])
if not left then
  left = tonumber(ARGV[1])
  redis.call('SET', KEYS[1], left, 'EX', ARGV[3])
else
  left = tonumber(left)
end
local grant = math.min(tonumber(ARGV[2]), left)
if grant > 0 then redis.call('DECRBY', KEYS[1], grant) end
return grant
"""


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """A tenant's budgets; 0 means unlimited."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    spend_usd_per_day: float = 0.0


class QuotaExceededError(ResourceExhaustedError):
    """A tenant's budget for this window is spent; ``retry_after_s`` is when the next window opens."""

    code = "quota_exceeded"

    def __init__(self, tenant: str, budget: str, retry_after_s: float) -> None:
        super().__init__(
            f"tenant {tenant!r} has used its {budget} budget; retry in {math.ceil(retry_after_s)} s",
            tenant=tenant,
            budget=budget,
            retry_after_s=round(retry_after_s, 3),
        )
        self.budget = budget
        self.retry_after_s = retry_after_s


_WINDOWS = {"requests": 60, "tokens": 60, "spend": 86_400}
_MICRO = 1_000_000  # spend is counted in micro-dollars so the counters stay integers


class QuotaLeases:
    """Admits or refuses a tenant's request against its budgets, leasing from Redis in chunks."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        *,
        chunk_fraction: float = 1 / 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._prefix = f"{namespace}:quota:"
        self._script = redis.register_script(_LEASE)
        self._fraction = chunk_fraction
        self._clock = clock
        self._local: dict[tuple[str, str, int], int] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def admit(self, tenant: str, quota: TenantQuota, *, tokens: int = 0) -> None:
        """Take one request and ``tokens`` (the prompt's estimate) from the tenant's budgets, or refuse."""
        await self._take(tenant, "requests", quota.requests_per_minute, 1)
        if tokens:
            await self._take(tenant, "tokens", quota.tokens_per_minute, tokens)
        if quota.spend_usd_per_day:
            await self._take(tenant, "spend", int(quota.spend_usd_per_day * _MICRO), 0)

    async def charge(
        self, tenant: str, quota: TenantQuota, *, tokens: int = 0, cost_usd: float = 0.0
    ) -> None:
        """Charge what a finished call really used beyond its estimate; never refuses (the work is done)."""
        if tokens > 0 and quota.tokens_per_minute:
            await self._take(tenant, "tokens", quota.tokens_per_minute, tokens, strict=False)
        if cost_usd > 0 and quota.spend_usd_per_day:
            await self._take(
                tenant, "spend", int(quota.spend_usd_per_day * _MICRO), int(cost_usd * _MICRO), strict=False
            )

    async def _take(self, tenant: str, budget: str, limit: int, amount: int, *, strict: bool = True) -> None:
        if limit <= 0:
            return
        window_s = _WINDOWS[budget]
        now = self._clock()
        window = int(now // window_s)
        key = (tenant, budget, window)
        if self._local.get(key, 0) >= max(amount, 1):  # the common case: no Redis call
            self._local[key] -= amount
            return
        lock = self._locks.setdefault((tenant, budget), asyncio.Lock())
        async with lock:  # one lease at a time per budget: concurrent callers share the chunk it brings
            while self._local.get(key, 0) < max(amount, 1):
                chunk = max(amount, math.ceil(limit * self._fraction), 1)
                try:
                    granted = int(
                        await self._script(
                            keys=[f"{self._prefix}{tenant}:{budget}:{window}"],
                            args=[limit, chunk, window_s * 2],
                        )
                    )
                except RedisError as exc:
                    # Fail open: an outage of the quota store must not stop every tenant's traffic.
                    log.warning(
                        "quota store unavailable; admitting", extra={"tenant": tenant, "error": str(exc)}
                    )
                    return
                if granted <= 0:
                    if not strict:
                        self._local[key] = (
                            self._local.get(key, 0) - amount
                        )  # overspent: the next lease pays it
                        return
                    raise QuotaExceededError(tenant, budget, (window + 1) * window_s - now)
                self._local[key] = self._local.get(key, 0) + granted
            self._local[key] -= amount
            self._forget_old(window, budget)

    def _forget_old(self, window: int, budget: str) -> None:
        for old in [k for k in self._local if k[1] == budget and k[2] < window]:
            del self._local[old]
