"""Breakers shared by two replicas through Redis: one opens, both are open; one probes; both close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from services.common.breaker import AsyncBreaker
from services.common.breaker_sync import BreakerSync
from services.common.errors import BreakerOpenError

pytestmark = pytest.mark.integration


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def fail(breaker: AsyncBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(ConnectionError):
            async with breaker.guard():
                raise ConnectionError("provider down")


@pytest.fixture
async def replicas(
    redis: Redis, namespace: str, redis_url: str
) -> AsyncIterator[list[tuple[AsyncBreaker, BreakerSync]]]:
    out = []
    clients = []
    for name in ("a", "b"):
        client = Redis.from_url(redis_url, decode_responses=True)
        clients.append(client)
        breaker = AsyncBreaker(f"{namespace}.provider", fail_max=2, reset_timeout=0.3)
        sync = BreakerSync(client, namespace, replica=name)
        sync.attach(breaker)
        await sync.start()
        out.append((breaker, sync))
    yield out
    for _, sync in out:
        await sync.stop()
    for client in clients:
        await client.aclose()


async def test_an_open_on_one_replica_opens_the_other(
    replicas: list[tuple[AsyncBreaker, BreakerSync]],
) -> None:
    (a, _), (b, _) = replicas
    await fail(a, 2)
    assert a.state == "open"
    await wait_for(lambda: b.state == "open", "replica b to adopt the open breaker")
    with pytest.raises(BreakerOpenError):
        async with b.guard():
            pass
    assert 0 < b.retry_after() <= 0.3


async def test_only_one_replica_probes_and_its_success_closes_both(
    replicas: list[tuple[AsyncBreaker, BreakerSync]],
) -> None:
    (a, _), (b, _) = replicas
    await fail(a, 2)
    await wait_for(lambda: b.state == "open", "b open")
    await asyncio.sleep(0.35)  # the open time passes on both
    release = asyncio.Event()
    results: dict[str, str] = {}

    async def probe(name: str, breaker: AsyncBreaker) -> None:
        try:
            async with breaker.guard():
                results[name] = "probed"
                await release.wait()
        except BreakerOpenError:
            results[name] = "refused"

    tasks = [asyncio.create_task(probe("a", a)), asyncio.create_task(probe("b", b))]
    await wait_for(lambda: len(results) == 2, "both replicas to try")
    assert sorted(results.values()) == ["probed", "refused"]
    release.set()
    await asyncio.gather(*tasks)
    await wait_for(lambda: a.state == "closed" and b.state == "closed", "both replicas to close")


async def test_retry_after_sets_the_open_time_everywhere(
    replicas: list[tuple[AsyncBreaker, BreakerSync]],
) -> None:
    (a, _), (b, _) = replicas
    a.trip(retry_after_s=5.0)
    assert a.open_time >= 5.0
    await wait_for(lambda: b.state == "open", "b open")
    assert 4.0 < b.retry_after() <= 5.0


async def test_a_replica_starting_later_adopts_an_open_breaker(
    replicas: list[tuple[AsyncBreaker, BreakerSync]], namespace: str, redis_url: str
) -> None:
    (a, _), _ = replicas
    a.trip(retry_after_s=3.0)
    late_client = Redis.from_url(redis_url, decode_responses=True)
    late = AsyncBreaker(f"{namespace}.provider", fail_max=2, reset_timeout=0.3)
    sync = BreakerSync(late_client, namespace, replica="late")
    sync.attach(late)
    try:
        await wait_for(lambda: a.state == "open", "a open")
        await asyncio.sleep(0.05)  # let a's publish land in Redis
        await sync.start()
        assert late.state == "open" and late.retry_after() > 2.0
    finally:
        await sync.stop()
        await late_client.aclose()
