"""Per-model concurrency limit with a bounded FIFO queue: a busy model makes callers wait, not fail."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from services.common.errors import ResourceExhaustedError


class BusyError(ResourceExhaustedError):
    """No slot came free within the queue timeout, or the queue was full."""

    def __init__(self, name: str, reason: str, waited_s: float) -> None:
        super().__init__(f"model {name!r} is busy: {reason}", model=name, waited_s=round(waited_s, 3))
        self.waited_s = waited_s


class Limiter:
    """At most ``limit`` holders at once; others wait in arrival order, up to ``max_queue`` of them.

    A released slot is handed straight to the oldest waiter, so a newcomer cannot overtake the queue.
    The limit may change at run time (a model update); lowering it lets in-flight calls finish.
    """

    __slots__ = ("_waiters", "in_flight", "limit", "max_queue", "name")

    def __init__(self, name: str, limit: int, *, max_queue: int = 1000) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.name = name
        self.limit = limit
        self.max_queue = max_queue
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Callers queued for a slot."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self, timeout_s: float) -> float:
        """Take a slot, waiting up to ``timeout_s``; returns the seconds waited, raises BusyError."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return 0.0
        if len(self._waiters) >= self.max_queue:
            raise BusyError(self.name, f"{self.max_queue} requests already queued", 0.0)
        if timeout_s <= 0:
            raise BusyError(self.name, "no time left to queue", 0.0)
        start = time.perf_counter()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we gave up: pass it on.
                self.release()
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                waited = time.perf_counter() - start
                raise BusyError(
                    self.name, f"no free slot within {timeout_s:g}s ({self.limit} in flight)", waited
                ) from None
            raise
        return time.perf_counter() - start

    def release(self) -> None:
        """Give a slot back: to the oldest waiter, or to the pool."""
        if self.in_flight <= self.limit:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self.in_flight -= 1

    def resize(self, limit: int) -> None:
        """Change the limit; a higher one admits queued callers at once."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        while self.in_flight < self.limit and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)
