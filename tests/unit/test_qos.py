"""The router's QoS stages with a fake clock: fair queueing, reserved shares, deadlines, AIMD limits, P2C."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from services.router.qos import (
    AdaptiveLimit,
    Balancer,
    DeadlineShedError,
    DeploymentLoad,
    DeploymentRate,
    FairScheduler,
    QueueFullError,
    RetryBudget,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def queue_up(s: FairScheduler, order: list[str], label: str, **kwargs: object) -> asyncio.Task[None]:
    async def run() -> None:
        await s.acquire(**kwargs)  # type: ignore[arg-type]
        order.append(label)

    task = asyncio.create_task(run())
    await settle()
    return task


async def drain(s: FairScheduler, order: list[str], n: int) -> None:
    """Release n slots one at a time, letting the granted waiter record itself each time."""
    for _ in range(n):
        s.release(0.1)
        await settle()


# -- scheduler ------------------------------------------------------------------------------------------


async def test_free_capacity_is_granted_at_once_and_then_requests_queue() -> None:
    s = FairScheduler("m", lambda: 2)
    assert (await s.acquire("a")).queued_s == 0.0
    await s.acquire("a")
    order: list[str] = []
    await queue_up(s, order, "third", tenant="a")
    assert s.waiting == 1 and order == []
    await drain(s, order, 1)
    assert order == ["third"] and s.in_flight == 2


async def test_tenants_share_a_class_fairly_whoever_floods_it() -> None:
    s = FairScheduler("m", lambda: 1)
    await s.acquire("x")
    order: list[str] = []
    for i in range(6):
        await queue_up(s, order, f"flood{i}", tenant="flood", priority="batch")
    for i in range(2):
        await queue_up(s, order, f"calm{i}", tenant="calm", priority="batch")
    await drain(s, order, 8)
    # The calm tenant's two requests are interleaved with the flood, not stuck behind six of them.
    assert order[:4] == ["flood0", "calm0", "flood1", "calm1"]
    assert order[4:] == ["flood2", "flood3", "flood4", "flood5"]


async def test_weights_give_proportional_shares() -> None:
    s = FairScheduler("m", lambda: 1)
    await s.acquire("x")
    order: list[str] = []
    for _ in range(6):
        await queue_up(s, order, "gold", tenant="gold", weight=2.0, priority="agent")
        await queue_up(s, order, "std", tenant="std", weight=1.0, priority="agent")
    await drain(s, order, 6)
    assert Counter(order[:6]) == {"gold": 4, "std": 2}


async def test_classes_get_their_reserved_shares_and_batch_is_not_starved() -> None:
    s = FairScheduler("m", lambda: 1)
    await s.acquire("x")
    order: list[str] = []
    for _ in range(20):
        await queue_up(s, order, "interactive", tenant="t", priority="interactive")
        await queue_up(s, order, "batch", tenant="t", priority="batch")
    await drain(s, order, 21)
    first = Counter(order[:21])
    assert first["interactive"] >= 17 and first["batch"] >= 2  # ~ 0.6 : 0.1 of the contended slots


async def test_an_idle_class_lends_its_share() -> None:
    s = FairScheduler("m", lambda: 1)
    await s.acquire("x")
    order: list[str] = []
    for i in range(4):
        await queue_up(s, order, f"b{i}", tenant="t", priority="batch")
    await drain(s, order, 4)
    assert order == ["b0", "b1", "b2", "b3"]  # alone, batch gets every slot


async def test_requests_that_cannot_meet_their_deadline_are_shed_at_once() -> None:
    clock = Clock()
    s = FairScheduler("m", lambda: 1, clock=clock)
    await s.acquire("x")
    s.release(2.0)  # slots are held ~2 s
    await s.acquire("x")
    with pytest.raises(DeadlineShedError, match="already passed on arrival"):
        await s.acquire("t", deadline=clock.now - 1)
    with pytest.raises(DeadlineShedError, match=r"estimated wait 2\.000s is past its deadline"):
        await s.acquire("t", deadline=clock.now + 0.5)
    assert s.waiting == 0  # shed without ever being queued


async def test_a_queued_request_is_shed_the_moment_its_deadline_passes() -> None:
    loop = asyncio.get_running_loop()
    s = FairScheduler("m", lambda: 1, clock=loop.time)
    await s.acquire("x")
    with pytest.raises(DeadlineShedError, match="passed while it was queued"):
        await s.acquire("t", deadline=loop.time() + 0.05)
    assert s.waiting == 0
    s.release()
    assert s.in_flight == 0  # the shed request never took the slot


async def test_a_full_queue_refuses_with_a_retry_delay() -> None:
    s = FairScheduler("m", lambda: 1, max_queue=2)
    await s.acquire("x")
    s.release(1.0)
    await s.acquire("x")
    order: list[str] = []
    await queue_up(s, order, "1", tenant="t")
    await queue_up(s, order, "2", tenant="t")
    with pytest.raises(QueueFullError) as info:
        await s.acquire("t")
    assert info.value.retry_after_s > 0 and info.value.grpc_status.name == "RESOURCE_EXHAUSTED"
    await drain(s, order, 2)


async def test_a_cancelled_waiter_leaves_the_queue_and_capacity_growth_admits_waiters() -> None:
    cap = [1]
    s = FairScheduler("m", lambda: cap[0])
    await s.acquire("x")
    order: list[str] = []
    gone = await queue_up(s, order, "gone", tenant="t")
    await queue_up(s, order, "kept1", tenant="t")
    await queue_up(s, order, "kept2", tenant="t")
    gone.cancel()
    await settle()
    assert s.waiting == 2
    cap[0] = 3
    s.dispatch()
    await settle()
    assert order == ["kept1", "kept2"] and s.in_flight == 3


async def test_batch_leaves_headroom_so_interactive_finds_a_free_slot_during_a_flood() -> None:
    s = FairScheduler("m", lambda: 8)
    order: list[str] = []
    for _ in range(6):  # 8 slots less a quarter: batch alone fills 6
        await s.acquire("bob", priority="batch")
    await queue_up(s, order, "batch-7", tenant="bob", priority="batch")
    assert s.in_flight == 6 and s.waiting_by_priority()["batch"] == 1
    await s.acquire("ann", priority="agent")  # agent leaves a tenth: 7 of 8
    await queue_up(s, order, "agent-2", tenant="ann", priority="agent")
    assert (await s.acquire("alice", priority="interactive")).queued_s == 0.0  # the last slot, at once
    assert s.in_flight == 8 and order == []
    await drain(s, order, 1)
    assert order == []  # 7 in flight: agent's and batch's limits are both reached
    await drain(s, order, 2)
    assert order == ["agent-2"]  # under 7: the agent's share first
    await drain(s, order, 1)
    assert order == ["agent-2", "batch-7"]
    one = FairScheduler("one", lambda: 1)
    assert (await one.acquire("bob", priority="batch")).queued_s == 0.0  # a 1-slot model still serves batch


def test_headroom_must_be_a_fraction_per_class() -> None:
    with pytest.raises(ValueError, match="headroom"):
        FairScheduler("m", lambda: 1, headroom={"interactive": 0.0, "agent": 0.1, "batch": 1.0})


# -- adaptive limit -------------------------------------------------------------------------------------


def test_aimd_grows_while_used_and_halves_once_per_burst_of_overload() -> None:
    clock = Clock()
    limit = AdaptiveLimit(32, initial=4, clock=clock)
    for _ in range(40):
        limit.on_success(0.1, in_flight=limit.value)
    grown = limit.value
    assert grown > 4
    for _ in range(10):  # ten 429s from the same moment
        limit.on_overload()
    assert limit.value == grown // 2 and limit.decreases == 1
    clock.now += 1.0
    limit.on_overload()
    assert limit.value == grown // 4


def test_aimd_never_exceeds_max_nor_grows_when_idle_and_backs_off_on_slow_calls() -> None:
    clock = Clock()
    limit = AdaptiveLimit(8, initial=8, clock=clock)
    for _ in range(100):
        limit.on_success(0.1, in_flight=8)
    assert limit.value == 8
    idle = AdaptiveLimit(8, initial=2, clock=clock)
    for _ in range(100):
        idle.on_success(0.1, in_flight=0)
    assert idle.value == 2
    for _ in range(2):  # latency 3x the baseline that stays up for a baseline period: congestion
        limit.on_success(0.3, in_flight=8)
        clock.now += 0.11
    assert limit.value == 4 and limit.decreases == 1


def test_a_pause_that_stretches_the_calls_in_flight_does_not_halve_the_limit() -> None:
    clock = Clock()
    limit = AdaptiveLimit(8, initial=8, clock=clock)
    for _ in range(50):
        limit.on_success(0.05, in_flight=8)
        clock.now += 0.01
    for _ in range(8):  # our process stalled 150 ms: every call in flight ends at once, 4x slower
        limit.on_success(0.2, in_flight=8)
    clock.now += 0.05
    for _ in range(8):
        limit.on_success(0.05, in_flight=8)
        clock.now += 0.01
    assert limit.value == 8 and limit.decreases == 0


def test_adaptive_limit_rejects_nonsense_and_follows_max_changes() -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(0)
    limit = AdaptiveLimit(10)
    limit.set_max(3)
    assert limit.value == 3
    limit.set_max(20)  # an operator raising max_concurrency means now, not after 17 rounds of growth
    assert limit.value == 20
    limit.on_overload()
    limit.set_max(40)  # a backed-off limit keeps backing off: the provider said it is overloaded
    assert limit.value == 10


# -- balancer -------------------------------------------------------------------------------------------


def test_p2c_prefers_the_faster_less_loaded_deployment() -> None:
    fast = DeploymentLoad("fast", AdaptiveLimit(100), ewma_s=0.05)
    slow = DeploymentLoad("slow", AdaptiveLimit(100), ewma_s=0.5)
    balancer = Balancer(random.Random(1))
    picks = Counter(balancer.choose([fast, slow]).name for _ in range(1000))  # type: ignore[union-attr]
    # Drawn with replacement: the slow one wins only when it is drawn twice (1 in 4).
    assert 650 < picks["fast"] < 850 and picks["fast"] + picks["slow"] == 1000
    fast.in_flight = 30  # 0.05 × 31 > 0.5 × 1: now the slow one is better
    picks = Counter(balancer.choose([fast, slow]).name for _ in range(1000))  # type: ignore[union-attr]
    assert 650 < picks["slow"] < 850


def test_full_open_and_draining_deployments_are_skipped() -> None:
    full = DeploymentLoad("full", AdaptiveLimit(1), in_flight=1)
    broken = DeploymentLoad("broken", AdaptiveLimit(5), available=lambda: False)
    leaving = DeploymentLoad("leaving", AdaptiveLimit(5), draining=True)
    ok = DeploymentLoad("ok", AdaptiveLimit(5), ewma_s=9.0)
    balancer = Balancer(random.Random(2))
    assert balancer.choose([full, broken, leaving, ok]) is ok
    assert balancer.choose([full, broken, leaving]) is None


def test_weights_split_traffic_between_equal_deployments() -> None:
    a = DeploymentLoad("a", AdaptiveLimit(1000), weight=9.0, ewma_s=0.1)
    b = DeploymentLoad("b", AdaptiveLimit(1000), weight=1.0, ewma_s=0.1)
    balancer = Balancer(random.Random(3))
    picks: Counter[str] = Counter()
    for _ in range(2000):
        chosen = balancer.choose([a, b])
        assert chosen is not None
        picks[chosen.name] += 1
    # Equally fast and idle: the weights are the shares (a canary at weight 1 of 10 gets about 10 %).
    assert 120 < picks["b"] < 280


# -- provider rate limits ------------------------------------------------------------------------------


def test_rpm_and_tpm_buckets_refill_continuously() -> None:
    clock = Clock()
    rate = DeploymentRate(rpm=2, tpm=1000, clock=clock)
    assert rate.allows(400)
    rate.take(400)
    rate.take(400)
    assert not rate.allows(1)  # two requests: rpm spent
    clock.now += 30  # half a minute refills one request and 500 tokens
    assert rate.allows(500) and not rate.allows(800)
    rate.take(100)
    rate.spend(900)  # the completion: the token bucket goes below zero
    clock.now += 30
    assert not rate.allows(300)  # one request back, but only 200 tokens: the completion was paid for
    clock.now += 60
    assert rate.allows(5000)  # a prompt bigger than the bucket goes once it is full
    with pytest.raises(ValueError):
        DeploymentRate(rpm=-1)


# -- retry budget ---------------------------------------------------------------------------------------


def test_retry_budget_caps_extra_attempts_at_the_ratio_over_the_window() -> None:
    clock = Clock()
    budget = RetryBudget(0.2, min_per_s=0, window_s=10, clock=clock)
    for _ in range(100):
        budget.record_request()
    granted = sum(budget.try_spend() for _ in range(50))
    assert granted == 20 and budget.refused == 30
    clock.now += 11  # the window slides past: no requests, no retries
    assert not budget.try_spend()
    for _ in range(10):
        budget.record_request()
    assert budget.try_spend() and budget.try_spend() and not budget.try_spend()


def test_retry_budget_floor_lets_a_quiet_router_retry() -> None:
    budget = RetryBudget(0.2, min_per_s=1, window_s=10, clock=Clock())
    assert sum(budget.try_spend() for _ in range(20)) == 10


def test_a_provider_that_turns_slower_for_good_does_not_pin_the_limit_at_the_floor() -> None:
    """A limit at 4 sees 2 ms calls one at a time (the callers were busy elsewhere); then 16 agent-class callers
    arrive as the provider turns to 50 ms a call. The limit dips, and within a few simulated seconds all 16 run
    at once (it once stayed at 2: agent headroom left one slot usable, and one busy slot of 2.5 did not count
    as in use, so the limit never grew again)."""
    clock = Clock()
    limit = AdaptiveLimit(1000, initial=4, clock=clock)
    for _ in range(1000):
        limit.on_success(0.002, in_flight=1)
        clock.now += 0.002
    callers, headroom = 16, 0.1
    end = clock.now + 6.0
    while clock.now < end:
        running = min(callers, max(1, int(limit.value * (1 - headroom))))
        for _ in range(running):
            limit.on_success(0.05, in_flight=running, waiting=callers - running)
        clock.now += 0.05
    assert min(callers, max(1, int(limit.value * (1 - headroom)))) == callers


def test_waiting_callers_count_as_use_for_growth() -> None:
    limit = AdaptiveLimit(8, initial=2, clock=Clock())
    for _ in range(20):
        limit.on_success(0.1, in_flight=0, waiting=0)
    assert limit.value == 2  # idle: no growth
    for _ in range(20):
        limit.on_success(0.1, in_flight=0, waiting=3)
    assert limit.value > 2
