"""The queueing stage: who gets the next free slot of a model when it is busy.

- Priority classes (interactive, agent, batch) each have a reserved share of dispatches while they compete; a
  class with nothing queued lends its share to the others (work-conserving).
- Inside a class, tenants share by weight with start-time fair queueing on virtual time, so a tenant flooding
  its class gets its share and no more, and a newly active tenant cannot cash in credit from while it was idle.
- A request that can no longer meet its deadline is shed at once: on arrival if the estimated wait is already
  too long, and the moment its deadline passes while queued, never after the work was done.
- The queue is bounded: a full queue refuses with the estimated wait as the retry delay.
- Headroom: the lower classes may not take the last slots of a model (batch leaves a quarter free, agent a
  tenth, always at least one slot each), so an interactive request arriving during a flood finds a slot free
  instead of waiting a whole call for one; slots are never taken back from a call, so only headroom can give
  that. The price is that a model busy with batch work alone runs at three quarters of its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from services.common.errors import ResourceExhaustedError, TimeoutError_

PRIORITIES = ("interactive", "agent", "batch")
DEFAULT_SHARES: Mapping[str, float] = {"interactive": 0.6, "agent": 0.3, "batch": 0.1}
DEFAULT_HEADROOM: Mapping[str, float] = {"interactive": 0.0, "agent": 0.1, "batch": 0.25}
"""The share of a model's slots each class leaves free for the classes above it."""


class QueueFullError(ResourceExhaustedError):
    """The model's queue is full; retry after the estimated wait."""

    def __init__(self, name: str, queued: int, retry_after_s: float) -> None:
        super().__init__(
            f"model {name!r} is busy: {queued} requests already queued",
            model=name,
            retry_after_s=round(retry_after_s, 3),
        )
        self.retry_after_s = retry_after_s


class DeadlineShedError(TimeoutError_):
    """The request cannot finish before its deadline, so it is not run at all."""

    code = "deadline_shed"
    retryable = False

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name!r}: shed, {reason}", model=name)


@dataclass(slots=True)
class Grant:
    """A slot, and how the request got it (for the response metadata)."""

    priority: str
    queued_s: float


@dataclass(eq=False, slots=True)
class _Ticket:
    tenant: str
    priority: str
    cost: float
    weight: float
    deadline: float | None
    enqueued: float
    future: asyncio.Future[None] = field(repr=False)


class _Class:
    """One priority class: per-tenant FIFO queues and their virtual times."""

    __slots__ = ("queues", "share", "vtime", "vtimes")

    def __init__(self, share: float) -> None:
        self.share = share
        self.vtime = 0.0
        self.queues: dict[str, deque[_Ticket]] = {}
        self.vtimes: dict[str, float] = {}

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def push(self, ticket: _Ticket) -> None:
        queue = self.queues.get(ticket.tenant)
        if queue is None:
            # A tenant becoming active starts at the class' current virtual time: no saved-up credit.
            floor = min((self.vtimes[t] for t in self.queues), default=self.vtimes.get(ticket.tenant, 0.0))
            self.vtimes[ticket.tenant] = max(self.vtimes.get(ticket.tenant, 0.0), floor)
            queue = self.queues[ticket.tenant] = deque()
        queue.append(ticket)

    def pop(self) -> _Ticket:
        tenant = min(self.queues, key=lambda t: (self.vtimes[t], self.queues[t][0].enqueued))
        queue = self.queues[tenant]
        ticket = queue.popleft()
        self.vtimes[tenant] += ticket.cost / ticket.weight
        if not queue:
            del self.queues[tenant]
        return ticket

    def remove(self, ticket: _Ticket) -> None:
        queue = self.queues.get(ticket.tenant)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(ticket)
            if not queue:
                del self.queues[ticket.tenant]


class FairScheduler:
    """Slots of one model; ``capacity`` is read on every decision so adaptive limits apply at once."""

    def __init__(
        self,
        name: str,
        capacity: Callable[[], int],
        *,
        shares: Mapping[str, float] = DEFAULT_SHARES,
        headroom: Mapping[str, float] = DEFAULT_HEADROOM,
        max_queue: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if set(shares) != set(PRIORITIES) or any(v <= 0 for v in shares.values()):
            raise ValueError(f"shares must give each of {', '.join(PRIORITIES)} a positive share")
        if set(headroom) != set(PRIORITIES) or any(not 0 <= v < 1 for v in headroom.values()):
            raise ValueError(f"headroom must give each of {', '.join(PRIORITIES)} a fraction in [0, 1)")
        self._headroom = dict(headroom)
        self.name = name
        self._capacity = capacity
        self._classes = {p: _Class(shares[p]) for p in PRIORITIES}
        self.max_queue = max_queue
        self._clock = clock
        self.in_flight = 0
        self._service_s = 0.0  # EWMA of how long a slot is held, for wait estimates

    @property
    def waiting(self) -> int:
        return sum(len(c) for c in self._classes.values())

    def waiting_by_priority(self) -> dict[str, int]:
        return {p: len(c) for p, c in self._classes.items()}

    def estimated_wait_s(self, priority: str) -> float:
        """How long a new request of this class would wait, from the queue ahead of it and slot hold times."""
        if self.in_flight < self._capacity() and not self.waiting:
            return 0.0
        ahead = self.waiting * (1.0 - self._classes[priority].share) + len(self._classes[priority])
        return (ahead + 1) * self._service_s / max(1, self._capacity())

    async def acquire(
        self,
        tenant: str,
        *,
        priority: str = "interactive",
        weight: float = 1.0,
        cost: float = 1.0,
        deadline: float | None = None,
    ) -> Grant:
        """Wait for a slot; ``deadline`` is on this scheduler's clock. Release with ``release(held_s)``."""
        if priority not in self._classes:
            raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        now = self._clock()
        if deadline is not None and deadline <= now:
            raise DeadlineShedError(self.name, "its deadline had already passed on arrival")
        capacity = self._capacity()
        if self.in_flight < self._limit(priority, capacity) and not self._contended(capacity):
            self.in_flight += 1
            return Grant(priority, 0.0)
        estimate = self.estimated_wait_s(priority)
        if self.waiting >= self.max_queue:
            raise QueueFullError(self.name, self.waiting, estimate)
        if deadline is not None and now + estimate > deadline:
            raise DeadlineShedError(
                self.name,
                f"the estimated wait {estimate:.3f}s is past its deadline (in {deadline - now:.3f}s)",
            )
        ticket = _Ticket(
            tenant, priority, cost, weight, deadline, now, asyncio.get_running_loop().create_future()
        )
        self._classes[priority].push(ticket)
        try:
            if deadline is None:
                await ticket.future
            else:
                async with asyncio.timeout(max(0.0, deadline - self._clock())):
                    await ticket.future
        except BaseException as exc:
            if ticket.future.done() and not ticket.future.cancelled():
                self.release(None)  # granted just as we gave up: pass the slot on
            else:
                ticket.future.cancel()
                self._classes[priority].remove(ticket)
            if isinstance(exc, TimeoutError):
                raise DeadlineShedError(self.name, "its deadline passed while it was queued") from None
            raise
        return Grant(priority, self._clock() - now)

    def release(self, held_s: float | None = None) -> None:
        """Give a slot back (``held_s``: how long it was held); the next request by class share and fairness."""
        if held_s is not None:
            self._service_s = (
                held_s if self._service_s == 0.0 else self._service_s + 0.1 * (held_s - self._service_s)
            )
        self.in_flight -= 1
        self.dispatch()

    def _limit(self, priority: str, capacity: int) -> int:
        """Slots a class may fill: the capacity less its headroom, at least one."""
        return max(1, int(capacity * (1.0 - self._headroom[priority])))

    def _contended(self, capacity: int) -> bool:
        """Whether a queued request could take a free slot now (then a newcomer must queue behind it)."""
        return any(c.queues and self.in_flight < self._limit(p, capacity) for p, c in self._classes.items())

    def dispatch(self) -> None:
        """Hand free slots to queued requests (also after the capacity grew)."""
        while True:
            capacity = self._capacity()
            if self.in_flight >= capacity:
                return
            ticket = self._next(capacity)
            if ticket is None:
                return
            if ticket.future.done():
                continue  # gave up (deadline, cancel) between being queued and now
            self.in_flight += 1
            ticket.future.set_result(None)

    def _next(self, capacity: int) -> _Ticket | None:
        active = [
            c for p, c in self._classes.items() if c.queues and self.in_flight < self._limit(p, capacity)
        ]
        if not active:
            return None
        # Reserved shares: the class furthest behind its share goes next (stride scheduling over classes).
        chosen = min(active, key=lambda c: c.vtime)
        floor = chosen.vtime
        for c in self._classes.values():
            if not c.queues and c.vtime < floor:
                c.vtime = floor  # an idle class does not bank credit
        chosen.vtime += 1.0 / chosen.share
        return chosen.pop()
