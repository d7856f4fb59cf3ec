"""GCRA rate limits in Redis: exact bursts, Retry-After, one budget across replicas, subjects kept apart."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from services.gateway.ratelimit import Quota, RateLimitedError, RateLimiter

pytestmark = pytest.mark.integration


async def test_a_burst_passes_exactly_then_the_next_request_is_told_when_to_retry(
    redis: Redis, namespace: str
) -> None:
    limiter = RateLimiter(redis, namespace)
    quota = Quota(rate=60, period_s=60, burst=5)  # one per second, five at once
    decisions = [await limiter.check("tenant:acme", quota) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[5]
    assert 0 < refused.retry_after_s <= 1.0
    headers = refused.headers()
    assert headers["Retry-After"] == "1" and headers["RateLimit-Remaining"] == "0"
    assert headers["RateLimit-Limit"] == "5" and headers["RateLimit-Policy"] == "5;w=60"
    assert "Retry-After" not in decisions[0].headers()


async def test_two_replicas_share_one_budget(redis: Redis, namespace: str, redis_url: str) -> None:
    other = Redis.from_url(redis_url)  # a second gateway replica: its own connection, the same Redis
    try:
        a, b = RateLimiter(redis, namespace), RateLimiter(other, namespace)
        quota = Quota(rate=100, period_s=3600)
        results = await asyncio.gather(
            *(lim.check("tenant:acme", quota) for _ in range(75) for lim in (a, b))
        )
        assert sum(d.allowed for d in results) == 100  # 150 attempts, exactly the budget passes
    finally:
        await other.aclose()


async def test_subjects_and_namespaces_do_not_share_budgets(redis: Redis, namespace: str) -> None:
    limiter = RateLimiter(redis, namespace)
    quota = Quota(rate=1, period_s=3600)
    assert (await limiter.check("tenant:acme", quota)).allowed
    assert not (await limiter.check("tenant:acme", quota)).allowed
    assert (await limiter.check("tenant:globex", quota)).allowed
    assert (await limiter.check("key:k1", quota)).allowed
    assert (await RateLimiter(redis, namespace + "-other").check("tenant:acme", quota)).allowed


async def test_cost_takes_several_units_and_enforce_raises_a_429(redis: Redis, namespace: str) -> None:
    limiter = RateLimiter(redis, namespace)
    quota = Quota(rate=10, period_s=3600)
    assert (await limiter.enforce("tenant:acme", quota, cost=7)).remaining == 3
    with pytest.raises(RateLimitedError) as info:
        await limiter.enforce("tenant:acme", quota, cost=4)
    assert info.value.http_status == 429 and "tenant:acme" in info.value.message
    assert (await limiter.check("tenant:acme", quota, cost=3)).allowed


async def test_redis_down_fails_open_by_default_and_closed_when_asked(namespace: str) -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        assert (await RateLimiter(dead, namespace).check("tenant:acme", Quota(rate=1))).allowed
        with pytest.raises(Exception, match=r"(?i)connect"):
            await RateLimiter(dead, namespace, fail_open=False).check("tenant:acme", Quota(rate=1))
    finally:
        await dead.aclose()


def test_a_bad_quota_is_refused() -> None:
    for bad in ({"rate": 0}, {"rate": 5, "period_s": 0}, {"rate": 5, "burst": -1}):
        with pytest.raises(ValueError, match="a quota needs"):
            Quota(**bad)  # type: ignore[arg-type]
