"""Coalescing: one call (or stream) per key in flight, shared results and errors, cancellation per waiter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from services.router.inflight import Coalescer, StreamCoalescer


class Gate:
    """A call that counts how often it started and finishes when released."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()
        self.cancelled = 0
        self.fail: Exception | None = None

    async def __call__(self) -> str:
        self.started += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise self.fail
        return f"answer {self.started}"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_identical_calls_in_flight_share_one_call() -> None:
    coalescer: Coalescer[str, str] = Coalescer()
    gate = Gate()
    waiters = [asyncio.create_task(coalescer.run("k", gate)) for _ in range(5)]
    await settle()
    gate.release.set()
    results = await asyncio.gather(*waiters)
    assert gate.started == 1
    assert [r[0] for r in results] == ["answer 1"] * 5
    assert sorted(r[1] for r in results) == [False, True, True, True, True]  # one started it, four shared
    assert len(coalescer) == 0


async def test_different_keys_do_not_share() -> None:
    coalescer: Coalescer[str, str] = Coalescer()
    gate = Gate()
    gate.release.set()
    await asyncio.gather(coalescer.run("a", gate), coalescer.run("b", gate))
    assert gate.started == 2


async def test_a_finished_call_is_not_reused() -> None:
    coalescer: Coalescer[str, str] = Coalescer()
    gate = Gate()
    gate.release.set()
    assert (await coalescer.run("k", gate))[0] == "answer 1"
    assert (await coalescer.run("k", gate))[0] == "answer 2"


async def test_the_error_is_every_waiters_error() -> None:
    coalescer: Coalescer[str, str] = Coalescer()
    gate = Gate()
    gate.fail = RuntimeError("provider down")
    waiters = [asyncio.create_task(coalescer.run("k", gate)) for _ in range(3)]
    await settle()
    gate.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert gate.started == 1
    assert all(isinstance(r, RuntimeError) and str(r) == "provider down" for r in results)


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    coalescer: Coalescer[str, str] = Coalescer()
    gate = Gate()
    first = asyncio.create_task(coalescer.run("k", gate))
    second = asyncio.create_task(coalescer.run("k", gate))
    await settle()
    first.cancel()  # the one that started the call goes away
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.release.set()
    assert await second == ("answer 1", True)
    assert gate.cancelled == 0


async def test_when_every_waiter_is_cancelled_the_call_is_cancelled_and_the_next_caller_starts_afresh() -> (
    None
):
    coalescer: Coalescer[str, str] = Coalescer()
    gate = Gate()
    waiters = [asyncio.create_task(coalescer.run("k", gate)) for _ in range(2)]
    await settle()
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await settle()
    assert gate.cancelled == 1
    gate.release.set()
    assert await coalescer.run("k", gate) == ("answer 2", False)


class GatedStream:
    """A stream of ``words`` that waits for a release before its last word (or fails there)."""

    def __init__(self, *words: str) -> None:
        self.words = words
        self.started = 0
        self.closed = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self) -> AsyncGenerator[str, None]:
        self.started += 1
        try:
            for word in self.words[:-1]:
                yield word
            await self.release.wait()
            if self.fail is not None:
                raise self.fail
            yield self.words[-1]
        finally:
            self.closed += 1


async def collect(stream: AsyncGenerator[tuple[str, bool], None]) -> list[tuple[str, bool]]:
    return [item async for item in stream]


async def test_identical_streams_in_flight_share_one_stream_and_late_joiners_get_it_all() -> None:
    coalescer: StreamCoalescer[str, str] = StreamCoalescer()
    source = GatedStream("a", "b", "c")
    shares: list[str] = []
    first = asyncio.create_task(collect(coalescer.stream("k", source)))
    await settle()  # the first two words are out before the others join
    others = [
        asyncio.create_task(collect(coalescer.stream("k", source, on_share=lambda: shares.append("x"))))
        for _ in range(2)
    ]
    await settle()
    source.release.set()
    assert await first == [("a", False), ("b", False), ("c", False)]
    for other in others:
        assert await other == [("a", True), ("b", True), ("c", True)]
    assert source.started == 1 and shares == ["x", "x"]
    assert len(coalescer) == 0


async def test_a_stream_error_reaches_every_reader_after_what_came_before_it() -> None:
    coalescer: StreamCoalescer[str, str] = StreamCoalescer()
    source = GatedStream("a", "b")
    source.fail = RuntimeError("broke mid-stream")
    readers = [asyncio.create_task(collect(coalescer.stream("k", source))) for _ in range(2)]
    await settle()
    source.release.set()
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and str(r) == "broke mid-stream" for r in results)
    assert source.started == 1


async def test_a_reader_that_leaves_does_not_end_the_stream_for_the_others() -> None:
    coalescer: StreamCoalescer[str, str] = StreamCoalescer()
    source = GatedStream("a", "b")
    leaving = coalescer.stream("k", source)
    assert await anext(leaving) == ("a", False)
    staying = asyncio.create_task(collect(coalescer.stream("k", source)))
    await settle()
    await leaving.aclose()  # the reader that started the stream goes away
    source.release.set()
    assert await staying == [("a", True), ("b", True)]
    assert source.started == 1


async def test_when_every_reader_leaves_the_stream_is_closed() -> None:
    coalescer: StreamCoalescer[str, str] = StreamCoalescer()
    source = GatedStream("a", "b")
    reader = coalescer.stream("k", source)
    assert await anext(reader) == ("a", False)
    await reader.aclose()
    await settle()
    assert source.closed == 1 and len(coalescer) == 0
    source.release.set()
    assert await collect(coalescer.stream("k", source)) == [("a", False), ("b", False)]
    assert source.started == 2
