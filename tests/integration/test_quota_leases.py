"""Admission budgets across two router replicas sharing Redis: held within 1 %, with few Redis calls."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from services.router.qos import QuotaExceededError, QuotaLeases, TenantQuota

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0  # a minute boundary: windows are clock minutes

    def __call__(self) -> float:
        return self.now


async def admitted(leases: QuotaLeases, tenant: str, quota: TenantQuota, n: int, **kw: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            await leases.admit(tenant, quota, **kw)
            ok += 1
        except QuotaExceededError:
            pass
    return ok


async def test_two_replicas_hold_a_request_budget_within_one_percent(
    redis: Redis, namespace: str, redis_url: str
) -> None:
    clock = Clock()
    other_redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        a = QuotaLeases(redis, namespace, clock=clock)
        b = QuotaLeases(other_redis, namespace, clock=clock)
        quota = TenantQuota(requests_per_minute=2000)
        counts = await asyncio.gather(*(admitted(r, "acme", quota, 1500) for r in (a, b)))
        total = sum(counts)
        assert 1980 <= total <= 2000, counts  # never over; under by at most a chunk per replica
        with pytest.raises(QuotaExceededError) as info:
            await a.admit("acme", quota)
        assert info.value.budget == "requests" and 0 < info.value.retry_after_s <= 60
        assert info.value.grpc_status.name == "RESOURCE_EXHAUSTED"
        clock.now += 60  # the next minute: a fresh budget
        await a.admit("acme", quota)
    finally:
        await other_redis.aclose()


async def test_leasing_costs_one_redis_call_per_chunk(redis: Redis, namespace: str) -> None:
    leases = QuotaLeases(redis, namespace, clock=Clock())
    real, calls = leases._script, []

    async def counting(**kwargs: object) -> object:
        calls.append(kwargs)
        return await real(**kwargs)  # type: ignore[arg-type]

    leases._script = counting  # type: ignore[assignment]
    quota = TenantQuota(requests_per_minute=10_000)  # chunks of 50
    assert await admitted(leases, "acme", quota, 500) == 500
    assert len(calls) == 10


async def test_token_and_spend_budgets_and_tenants_apart(redis: Redis, namespace: str) -> None:
    clock = Clock()
    leases = QuotaLeases(redis, namespace, clock=clock)
    quota = TenantQuota(tokens_per_minute=1000, spend_usd_per_day=0.01)
    assert await admitted(leases, "acme", quota, 10, tokens=300) == 3
    assert await admitted(leases, "globex", quota, 1, tokens=300) == 1  # another tenant's budget is its own
    await leases.charge("globex", quota, cost_usd=0.02)  # a call that cost more than the day's budget
    with pytest.raises(QuotaExceededError) as info:
        await leases.admit("globex", quota)
    assert info.value.budget == "spend" and info.value.retry_after_s > 3600


async def test_unlimited_budgets_never_touch_redis(redis: Redis, namespace: str) -> None:
    leases = QuotaLeases(redis, namespace)
    await admitted(leases, "acme", TenantQuota(), 100, tokens=10**6)
    assert await redis.keys(f"{namespace}:quota:*") == []
