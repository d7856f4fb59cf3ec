"""The auto-pipelining Redis client against the real Redis: batches, per-command errors, scripts, blocking reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from services.common.redis_client import AutoPipelinedRedis, open_redis


@pytest.fixture
async def client(redis_url: str, namespace: str) -> AsyncIterator[Redis]:
    redis = open_redis(redis_url)
    assert isinstance(redis, AutoPipelinedRedis)
    yield redis
    async for key in redis.scan_iter(match=f"{namespace}:*", count=500):
        await redis.delete(key)
    await redis.aclose()


async def commands_processed(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_commands_processed"])


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times any client wrote to a Redis socket (one per round trip, whatever it carries)."""
    sent: list[int] = []
    original = AbstractConnection.send_packed_command

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


async def test_commands_of_one_turn_go_out_together_and_each_gets_its_own_reply(
    client: Redis, namespace: str, redis_url: str, writes: list[int]
) -> None:
    keys = [f"{namespace}:k{i}" for i in range(50)]
    await asyncio.gather(*(client.set(key, str(i)) for i, key in enumerate(keys)))
    writes.clear()
    values = await asyncio.gather(*(client.get(key) for key in keys))
    assert values == [str(i) for i in range(50)]
    assert len(writes) <= 2  # one pipeline (and perhaps a health check), not fifty round trips
    plain = open_redis(redis_url, auto_pipeline=False)
    writes.clear()
    assert await asyncio.gather(*(plain.get(key) for key in keys)) == values
    assert len(writes) >= 50
    await plain.aclose()
    hashes = await asyncio.gather(
        client.hset(f"{namespace}:h", mapping={"a": "1", "b": "2"}), client.hgetall(f"{namespace}:h")
    )
    assert hashes == [2, {"a": "1", "b": "2"}]  # replies decoded by each command's own callback


async def test_one_failing_command_fails_alone(client: Redis, namespace: str) -> None:
    await client.set(f"{namespace}:word", "not a number")
    results = await asyncio.gather(
        client.incr(f"{namespace}:n"),
        client.incr(f"{namespace}:word"),
        client.incr(f"{namespace}:n"),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], ResponseError) and "not an integer" in str(results[1])


async def test_scripts_load_themselves_when_batched(client: Redis, namespace: str) -> None:
    script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    await client.script_flush()  # every call below first meets NOSCRIPT
    results = await asyncio.gather(*(script(keys=[f"{namespace}:s"], args=[1]) for _ in range(10)))
    assert sorted(results) == list(range(1, 11))


async def test_a_blocking_read_does_not_hold_up_the_commands_issued_beside_it(
    client: Redis, namespace: str
) -> None:
    stream = f"{namespace}:stream"
    # Issued in the same turn: were the XREAD batched with the SET, the SET would wait out the 5 s block.
    reader = asyncio.ensure_future(client.xread({stream: "$"}, block=5000, count=1))
    setter = asyncio.ensure_future(client.set(f"{namespace}:x", "1"))
    async with asyncio.timeout(2):
        assert await setter is True
        await asyncio.sleep(0.05)  # the XREAD is waiting by now
        await client.xadd(stream, {"f": "v"})
        got = await reader
    assert got and got[0][1][0][1] == {"f": "v"}


async def test_a_caller_that_gives_up_does_not_disturb_the_others(client: Redis, namespace: str) -> None:
    before = await commands_processed(client)
    doomed = asyncio.ensure_future(client.set(f"{namespace}:doomed", "1"))
    kept = asyncio.ensure_future(client.set(f"{namespace}:kept", "1"))
    doomed.cancel()  # before the batch is sent: its command never goes out
    assert await kept is True
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert await client.exists(f"{namespace}:doomed") == 0
    assert await client.get(f"{namespace}:kept") == "1"
    # SET kept, EXISTS, GET and the INFO calls only: the cancelled SET was never sent.
    assert await commands_processed(client) - before <= 5


async def test_a_dead_server_fails_every_command_of_the_batch_with_a_connection_error() -> None:
    down = open_redis("redis://127.0.0.1:1/0")
    results = await asyncio.gather(down.get("a"), down.get("b"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError | OSError) or "connect" in str(r).lower() for r in results)
    assert all(isinstance(r, Exception) for r in results)
    await down.aclose()


def test_a_batch_a_stopped_loop_never_sent_does_not_hold_up_the_next_loop(
    redis_url: str, namespace: str
) -> None:
    redis = open_redis(redis_url)
    first = asyncio.new_event_loop()
    late = redis.set(f"{namespace}:late", "1")

    def queue_then_stop() -> None:
        late.send(None)  # runs up to its wait on the batch: queued, the batch's flush scheduled
        first.stop()  # the loop stops before that flush runs

    first.call_soon(queue_then_stop)
    first.run_forever()
    first.close()
    late.close()

    async def use() -> str | None:
        await redis.set(f"{namespace}:after", "ok")
        value = await redis.get(f"{namespace}:after")
        await redis.delete(f"{namespace}:after")
        await redis.aclose()
        return value

    assert asyncio.run(asyncio.wait_for(use(), 5)) == "ok"
