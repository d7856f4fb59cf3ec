"""Coalescing: identical requests in flight at the same time share one call (or one stream).

The first caller of a key starts the call as its own task; callers that arrive while it runs wait for the same
task. A waiter that is cancelled (its deadline passed, its client went away) leaves without cancelling the call
for the others; only when every waiter has gone is the call cancelled. The call's error is every waiter's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiters = 0


class Coalescer(Generic[K, T]):
    """One task per key at a time; ``run`` answers ``(result, shared)``, shared meaning another caller started it."""

    def __init__(self) -> None:
        self._calls: dict[K, _Call[T]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def run(
        self, key: K, start: Callable[[], Awaitable[T]], *, on_share: Callable[[], None] | None = None
    ) -> tuple[T, bool]:
        """The result of the call in flight for ``key``, starting it if there is none (``on_share`` is called
        when this caller joins a call already in flight)."""
        call = self._calls.get(key)
        shared = call is not None
        if call is not None and on_share is not None:
            on_share()
        if call is None:
            call = _Call(asyncio.ensure_future(start()))
            self._calls[key] = call
            call.task.add_done_callback(functools.partial(self._done, key, call))
        call.waiters += 1
        try:
            return await asyncio.shield(call.task), shared
        finally:
            call.waiters -= 1
            if call.waiters == 0 and not call.task.done():  # every waiter was cancelled: nobody wants it
                if self._calls.get(key) is call:
                    del self._calls[key]  # a caller arriving now starts afresh
                call.task.cancel()

    def _done(self, key: K, call: _Call[T], _task: object) -> None:
        if self._calls.get(key) is call:
            del self._calls[key]
        if not call.task.cancelled():
            call.task.exception()  # retrieved here, so a call whose waiters all left is never "unretrieved"


class _Feed(Generic[T]):
    __slots__ = ("done", "error", "items", "more", "task", "waiters")

    def __init__(self) -> None:
        self.items: list[T] = []
        self.error: BaseException | None = None
        self.done = False
        self.more = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.waiters = 0

    def wake(self) -> None:
        self.more.set()
        self.more = asyncio.Event()


class StreamCoalescer(Generic[K, T]):
    """One stream per key at a time, fanned out: a caller that joins late gets what was sent so far, then the
    rest as it comes. Items are ``(item, shared)``; cancellation and errors work as in Coalescer."""

    def __init__(self) -> None:
        self._feeds: dict[K, _Feed[T]] = {}

    def __len__(self) -> int:
        return len(self._feeds)

    async def stream(
        self,
        key: K,
        start: Callable[[], AsyncGenerator[T, None]],
        *,
        on_share: Callable[[], None] | None = None,
    ) -> AsyncGenerator[tuple[T, bool], None]:
        """The items of the stream in flight for ``key``, starting it if there is none."""
        feed = self._feeds.get(key)
        shared = feed is not None
        if feed is None:
            feed = self._feeds[key] = _Feed()
            feed.task = asyncio.get_running_loop().create_task(self._pump(key, feed, start))
        elif on_share is not None:
            on_share()
        feed.waiters += 1
        try:
            index = 0
            while True:
                if index < len(feed.items):
                    index += 1
                    yield feed.items[index - 1], shared
                    continue
                if feed.done:
                    if feed.error is not None:
                        raise feed.error
                    return
                await feed.more.wait()
        finally:
            feed.waiters -= 1
            if feed.waiters == 0 and feed.task is not None and not feed.task.done():
                if self._feeds.get(key) is feed:
                    del self._feeds[key]  # a caller arriving now starts afresh
                feed.task.cancel()

    async def _pump(self, key: K, feed: _Feed[T], start: Callable[[], AsyncGenerator[T, None]]) -> None:
        try:
            items = start()
            async with contextlib.aclosing(items):
                async for item in items:
                    feed.items.append(item)
                    feed.wake()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every waiter sees it
            feed.error = exc
        finally:
            feed.done = True
            if self._feeds.get(key) is feed:
                del self._feeds[key]
            feed.wake()
