"""Request rate limits shared by every gateway replica: GCRA in one Redis script, with the RateLimit headers.

GCRA (the generic cell rate algorithm, as in redis-cell and go-redis/redis_rate) keeps one timestamp per
subject, the theoretical arrival time, so a limit costs one key and one round trip, bursts are bounded exactly,
and replicas agree because the script runs atomically on Redis' clock, not on each replica's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.errors import ResourceExhaustedError

log = logging.getLogger(__name__)

# KEYS[1] the subject's TAT key; ARGV: emission interval (µs), burst tolerance (µs), cost.
# Returns {allowed, remaining, retry_after_us, reset_after_us}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local increment = interval * tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + increment
local allow_at = new_tat - tolerance
local diff = now - allow_at
if diff < 0 then
  return {0, 0, allow_at - now, tat - now}
end
local ttl = math.ceil((new_tat - now) / 1000)
if ttl > 0 then redis.call('SET', KEYS[1], new_tat, 'PX', ttl) end
return {1, math.floor(diff / interval), -1, new_tat - now}
"""


@dataclass(frozen=True, slots=True)
class Quota:
    """``rate`` requests per ``period_s``, of which up to ``burst`` may come at once."""

    rate: int
    period_s: float = 60.0
    burst: int = 0

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.period_s <= 0 or self.burst < 0:
            raise ValueError(f"a quota needs rate > 0, period_s > 0 and burst >= 0, got {self}")

    @property
    def capacity(self) -> int:
        """The most requests allowed at once (the burst, or the whole rate if no burst is set)."""
        return self.burst or self.rate

    def policy(self) -> str:
        """The ``RateLimit-Policy`` value (IETF httpapi draft): limit and window."""
        return f"{self.capacity};w={math.ceil(self.period_s)}"


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether one request may pass, and what the RateLimit headers tell the client."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float = 0.0
    policy: str = ""

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if self.policy:
            out["RateLimit-Policy"] = self.policy
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return out


class RateLimitedError(ResourceExhaustedError):
    """Too many requests for this tenant or key; ``retry_after`` (seconds) says when one will pass."""

    code = "rate_limited"

    def __init__(self, decision: Decision, subject: str) -> None:
        super().__init__(
            f"rate limit exceeded for {subject}: retry in {max(1, math.ceil(decision.retry_after_s))} s",
            retry_after=max(1, math.ceil(decision.retry_after_s)),
        )
        self.decision = decision


class RateLimiter:
    """Checks a subject (``tenant:acme``, ``key:k123``) against a quota; fails open if Redis is down."""

    def __init__(self, redis: Redis, namespace: str, *, fail_open: bool = True) -> None:
        self._redis = redis
        self._prefix = f"{namespace}:ratelimit:"
        self._script = redis.register_script(_GCRA)
        self._fail_open = fail_open

    async def check(self, subject: str, quota: Quota, *, cost: int = 1) -> Decision:
        """Take ``cost`` from the subject's budget if it allows; the decision either way."""
        interval_us = quota.period_s * 1_000_000 / quota.rate
        tolerance_us = interval_us * quota.capacity
        try:
            allowed, remaining, retry_us, reset_us = await self._script(
                keys=[self._prefix + subject], args=[interval_us, tolerance_us, cost]
            )
        except RedisError as exc:
            if not self._fail_open:
                raise
            # Availability over strictness (Kong's fault_tolerant default): an outage must not refuse all traffic.
            log.warning("rate limiter unavailable; letting the request through", extra={"error": str(exc)})
            return Decision(True, quota.capacity, quota.capacity, 0.0, policy=quota.policy())
        return Decision(
            allowed=bool(allowed),
            limit=quota.capacity,
            remaining=int(remaining),
            reset_s=max(0.0, float(reset_us) / 1e6),
            retry_after_s=max(0.0, float(retry_us) / 1e6),
            policy=quota.policy(),
        )

    async def enforce(self, subject: str, quota: Quota, *, cost: int = 1) -> Decision:
        """Like ``check``, raising RateLimitedError (429 with Retry-After) when refused."""
        decision = await self.check(subject, quota, cost=cost)
        if not decision.allowed:
            raise RateLimitedError(decision, subject)
        return decision
