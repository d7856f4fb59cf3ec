"""services.common.breaker.AsyncBreaker: pybreaker's state machine, made correct for coroutines."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

from services.common.breaker import AsyncBreaker
from services.common.errors import BreakerOpenError, InvalidInputError, NotFoundError, UnavailableError


def breaker(fail_max: int = 3, reset_timeout: float = 60.0) -> AsyncBreaker:
    return AsyncBreaker(f"test.{uuid.uuid4().hex[:8]}", fail_max=fail_max, reset_timeout=reset_timeout)


async def fail(b: AsyncBreaker, exc: BaseException | None = None) -> None:
    """One guarded call whose awaited work fails."""
    with pytest.raises(type(exc) if exc is not None else RuntimeError):
        async with b.guard():
            await asyncio.sleep(0)
            raise exc if exc is not None else RuntimeError("upstream down")


async def succeed(b: AsyncBreaker) -> None:
    async with b.guard():
        await asyncio.sleep(0)


def gauge(b: AsyncBreaker) -> float | None:
    """The exported state: 0 closed, 1 half-open, 2 open."""
    return REGISTRY.get_sample_value("openclaw_breaker_state", {"breaker": b.name})


async def test_counts_failures_of_awaited_work_and_opens_at_fail_max() -> None:
    b = breaker(fail_max=3)
    await fail(b)
    await fail(b)
    assert b.state == "closed"
    await fail(b)
    assert b.state == "open"
    assert gauge(b) == 2
    assert b.retry_after() > 0


async def test_success_resets_the_count() -> None:
    b = breaker(fail_max=3)
    await fail(b)
    await fail(b)
    await succeed(b)
    await fail(b)
    await fail(b)
    assert b.state == "closed"


async def test_open_breaker_refuses_without_running_the_body() -> None:
    b = breaker(fail_max=1)
    await fail(b)
    ran = False
    with pytest.raises(BreakerOpenError) as info:
        async with b.guard():
            ran = True
    assert not ran
    assert info.value.breaker == b.name and info.value.retry_after > 0
    assert isinstance(info.value, UnavailableError) and info.value.retryable


async def test_single_half_open_probe_under_concurrency() -> None:
    b = breaker(fail_max=1, reset_timeout=0.0)  # the reset timeout elapses at once: next call probes
    await fail(b)
    assert b.state == "open"
    entered, release = asyncio.Event(), asyncio.Event()
    bodies = 0

    async def probe() -> None:
        nonlocal bodies
        async with b.guard():
            bodies += 1
            entered.set()
            await release.wait()

    task = asyncio.create_task(probe())
    await entered.wait()
    assert b.state == "half-open"

    async def other() -> str:
        nonlocal bodies
        try:
            async with b.guard():
                bodies += 1
        except BreakerOpenError:
            return "refused"
        return "ran"

    results = await asyncio.gather(*(other() for _ in range(20)))
    assert results == ["refused"] * 20
    assert bodies == 1
    release.set()
    await task
    assert b.state == "closed"
    assert gauge(b) == 0
    await succeed(b)


async def test_probe_failure_reopens() -> None:
    b = breaker(fail_max=2, reset_timeout=0.0)
    await fail(b)
    await fail(b)
    await fail(b)  # the probe
    assert b.state == "open"
    assert gauge(b) == 2


async def test_probe_success_closes() -> None:
    b = breaker(fail_max=1, reset_timeout=0.0)
    await fail(b)
    await succeed(b)
    assert b.state == "closed"


@pytest.mark.parametrize("exc", [InvalidInputError("bad field"), NotFoundError("no such model")])
async def test_caller_errors_are_not_counted(exc: Exception) -> None:
    b = breaker(fail_max=2)
    for _ in range(5):
        await fail(b, exc)
    assert b.state == "closed"


async def test_cancellation_is_not_counted() -> None:
    b = breaker(fail_max=1)
    started = asyncio.Event()

    async def slow() -> None:
        async with b.guard():
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(slow())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == "closed"


async def test_never_blocks_the_loop_while_a_call_is_in_flight() -> None:
    """A suspended guarded call holds no lock: other calls complete while it waits, in the same thread."""
    b = breaker(fail_max=5)
    entered, release = asyncio.Event(), asyncio.Event()

    async def held() -> None:
        async with b.guard():
            entered.set()
            await release.wait()

    task = asyncio.create_task(held())
    await entered.wait()
    await asyncio.wait_for(asyncio.gather(*(succeed(b) for _ in range(100))), timeout=10)
    release.set()
    await task


async def test_refusals_never_wait_for_the_probe() -> None:
    """While the probe hangs, other callers are refused at once instead of queueing behind it."""
    b = breaker(fail_max=1, reset_timeout=0.0)
    await fail(b)
    entered = asyncio.Event()

    async def hanging_probe() -> None:
        async with b.guard():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hanging_probe())
    await entered.wait()
    with pytest.raises(BreakerOpenError):
        await asyncio.wait_for(succeed(b), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_probe_leaves_the_breaker_open() -> None:
    b = breaker(fail_max=1, reset_timeout=0.0)
    await fail(b)
    entered = asyncio.Event()

    async def probe() -> None:
        async with b.guard():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(probe())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state != "closed"
    # The abandoned probe proved nothing, so the next call may probe at once, and its success closes.
    await succeed(b)
    assert b.state == "closed"


async def test_forced_open_and_close() -> None:
    b = breaker()
    b.open()
    with pytest.raises(BreakerOpenError):
        await succeed(b)
    b.close()
    await succeed(b)


async def test_release_drops_the_breakers_metric_series() -> None:
    b = breaker(fail_max=1)
    await fail(b)
    names = {
        s.labels.get("breaker")
        for f in REGISTRY.collect()
        for s in f.samples
        if f.name.startswith("openclaw_breaker")
    }
    assert b.name in names
    b.release()
    names = {
        s.labels.get("breaker")
        for f in REGISTRY.collect()
        for s in f.samples
        if f.name.startswith("openclaw_breaker")
    }
    assert b.name not in names


async def test_caller_chosen_timeouts_and_redis_command_errors_do_not_open_the_breaker() -> None:
    from redis.exceptions import ResponseError

    from services.common.errors import CallerTimeoutError

    b = breaker(fail_max=2)
    for exc in (
        CallerTimeoutError("step timeout"),
        ResponseError("Invalid stream ID"),
        CallerTimeoutError("again"),
    ):
        with pytest.raises(type(exc)):
            async with b.guard():
                raise exc
    assert b.state == "closed"


async def test_open_time_doubles_after_each_failed_probe_and_resets_on_success() -> None:
    breaker = AsyncBreaker("growth", fail_max=1, reset_timeout=0.05, max_reset_timeout=0.3, rng=lambda: 0.5)
    times = []
    for _ in range(4):
        with pytest.raises(ConnectionError):
            async with breaker.guard():
                raise ConnectionError("down")
        times.append(breaker.open_time)
        await asyncio.sleep(breaker.open_time + 0.01)
    assert times == [0.05, 0.1, 0.2, 0.3]  # doubled, capped (rng 0.5 = no jitter)
    async with breaker.guard():
        pass
    assert breaker.state == "closed" and breaker.open_time == 0.05


async def test_retry_after_from_the_dependency_sets_a_longer_open_time() -> None:
    breaker = AsyncBreaker("hint", fail_max=1, reset_timeout=0.05)
    breaker.note_retry_after(7.0)
    with pytest.raises(ConnectionError):
        async with breaker.guard():
            raise ConnectionError("429")
    assert breaker.state == "open" and breaker.open_time == 7.0 and 6.5 < breaker.retry_after() <= 7.0
