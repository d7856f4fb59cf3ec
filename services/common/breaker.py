"""Circuit breakers for asyncio, using pybreaker as the state machine and listener API."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pybreaker
from prometheus_client import Counter, Gauge
from redis.exceptions import ResponseError

from services.common.errors import BreakerOpenError, CallerTimeoutError, OpenClawError

BREAKER_STATE = Gauge(
    "openclaw_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["breaker"]
)
BREAKER_TRANSITIONS = Counter(
    "openclaw_breaker_transitions_total", "Circuit breaker state changes.", ["breaker", "state"]
)
_STATE_VALUE = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}


class _MetricsListener(pybreaker.CircuitBreakerListener):
    """Mirrors every state change into Prometheus."""

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        name = cb.name or "unnamed"
        BREAKER_STATE.labels(name).set(_STATE_VALUE.get(new_state.name, 0))
        BREAKER_TRANSITIONS.labels(name, new_state.name).inc()


class _OwnerListener(pybreaker.CircuitBreakerListener):
    """Tells the owning AsyncBreaker about transitions (open-time growth, replica sync)."""

    def __init__(self, owner: AsyncBreaker) -> None:
        self._owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self._owner._transition(old_state.name if old_state is not None else None, new_state.name)


Observer = Callable[["AsyncBreaker", str], None]
ProbeGate = Callable[[str], Awaitable[bool]]


def _is_caller_error(exc: BaseException) -> bool:
    """Errors the caller caused (bad input, unknown names, walking away) say nothing about the dependency's health."""
    if isinstance(exc, GeneratorExit | asyncio.CancelledError | CallerTimeoutError | ResponseError):
        # ResponseError: Redis answered, refusing the command (a bad stream id, say): it is up.
        return True
    return isinstance(exc, OpenClawError) and not exc.retryable and exc.http_status < 500


class AsyncBreaker:
    """A circuit breaker safe for coroutines: failures are counted and half-open admits one probe.

    pybreaker counts nothing when it decorates a coroutine function and lets every concurrent
    call through while half-open; this wrapper enters pybreaker's ``calling()`` around the awaited
    work and keeps a single probe in flight. Each reopening after a failed probe doubles the open time
    (up to ``max_reset_timeout``, with jitter so replicas do not probe in step), and an open time the
    dependency asked for (Retry-After) is honoured. Observers (the Redis sync) hear every transition, and an
    optional probe gate lets one replica of many probe.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        max_reset_timeout: float | None = None,
        jitter: float = 0.2,
        exclude: tuple[type[BaseException], ...] = (),
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self._base_reset = reset_timeout
        self._max_reset = max_reset_timeout if max_reset_timeout is not None else reset_timeout * 16
        self._jitter = jitter
        self._rng = rng
        self._trips = 0
        self._retry_hint = 0.0
        self._observers: list[Observer] = []
        self.probe_gate: ProbeGate | None = None
        self.adopting = False
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            exclude=[*exclude, _is_caller_error],  # type: ignore[arg-type]
            listeners=[_MetricsListener(), _OwnerListener(self)],
            name=name,
            throw_new_error_on_trip=False,
        )
        self._probe_in_flight = False
        BREAKER_STATE.labels(name).set(0)

    @property
    def state(self) -> str:
        """One of "closed", "open", "half-open"."""
        return str(self._cb.current_state)

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through (0 if it would now)."""
        opened_at = self._cb._state_storage.opened_at
        if opened_at is None:
            return 0.0
        elapsed = (datetime.now(UTC) - opened_at).total_seconds()
        return max(0.0, float(self._cb.reset_timeout) - elapsed)

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Run the body under the breaker; raises BreakerOpenError instead of running it when open."""
        state = self.state
        probe = False
        if state == pybreaker.STATE_OPEN:
            wait = self.retry_after()
            if wait > 0:
                raise BreakerOpenError(self.name, wait)
        if state != pybreaker.STATE_CLOSED:
            if self._probe_in_flight:
                raise BreakerOpenError(self.name, max(self.retry_after(), 0.05))
            self._probe_in_flight = True
            probe = True
            if self.probe_gate is not None and not await self._gate():
                self._probe_in_flight = False
                raise BreakerOpenError(self.name, max(self.retry_after(), 0.5))
        try:
            try:
                with self._cb.calling():
                    yield
            except pybreaker.CircuitBreakerError as exc:
                raise BreakerOpenError(self.name, max(self.retry_after(), 0.05)) from exc
            except (GeneratorExit, asyncio.CancelledError):
                if probe:
                    # pybreaker counts an excluded error as a success; an abandoned probe proved nothing.
                    self._reopen_for_probe()
                raise
        finally:
            if probe:
                self._probe_in_flight = False

    async def _gate(self) -> bool:
        """Whether this replica may probe (another one may be probing already); fail open on errors."""
        assert self.probe_gate is not None
        try:
            return await self.probe_gate(self.name)
        except Exception:
            return True

    @property
    def open_time(self) -> float:
        """How long the breaker stays open this time (grown after failed probes, or Retry-After)."""
        return float(self._cb.reset_timeout)

    def observe(self, observer: Observer) -> None:
        """Call ``observer(breaker, new_state)`` on every transition."""
        self._observers.append(observer)

    def trip(self, retry_after_s: float = 0.0) -> None:
        """Open now, for at least ``retry_after_s`` (the dependency said how long to stay away)."""
        self._retry_hint = max(self._retry_hint, retry_after_s)
        self._cb.open()

    def note_retry_after(self, retry_after_s: float) -> None:
        """Remember a Retry-After: if this failure opens the breaker, it stays open at least that long."""
        self._retry_hint = max(self._retry_hint, retry_after_s)

    def adopt_open(self, remaining_s: float) -> None:
        """Open because another replica's breaker for the same dependency opened (no observer is told)."""
        if remaining_s <= 0:
            return
        self.adopting = True
        try:
            self._retry_hint = max(self._retry_hint, remaining_s)
            if self.state != pybreaker.STATE_OPEN:
                self._cb.open()
            else:
                self._cb.reset_timeout = max(self.retry_after(), remaining_s)
                self._cb._state_storage.opened_at = datetime.now(UTC)
        finally:
            self.adopting = False

    def adopt_close(self) -> None:
        """Close because another replica's probe succeeded."""
        if self.state == pybreaker.STATE_CLOSED:
            return
        self.adopting = True
        try:
            self._cb.close()
        finally:
            self.adopting = False

    def _transition(self, old: str | None, new: str) -> None:
        if new == pybreaker.STATE_OPEN:
            self._trips = self._trips + 1 if old == pybreaker.STATE_HALF_OPEN else 0
            grown = min(self._max_reset, self._base_reset * 2**self._trips)
            if self._trips:  # the first open time is the configured one; later ones spread replicas' probes
                grown *= 1 + self._jitter * (2 * self._rng() - 1)
            self._cb.reset_timeout = max(grown, self._retry_hint)
            self._retry_hint = 0.0
        elif new == pybreaker.STATE_CLOSED:
            self._trips = 0
            self._cb.reset_timeout = self._base_reset
        for observer in self._observers:
            observer(self, str(new))

    def _reopen_for_probe(self) -> None:
        """Back to open, with the open period already elapsed so the next call probes at once."""
        trips = self._trips
        self._cb.open()
        self._trips = trips  # an abandoned probe is not a failed one: no growth
        self._cb._state_storage.opened_at = datetime.now(UTC) - timedelta(
            seconds=float(self._cb.reset_timeout)
        )

    def release(self) -> None:
        """Drop this breaker's metric series (a bounded cache evicted it), keeping label sets bounded."""
        with contextlib.suppress(KeyError):
            BREAKER_STATE.remove(self.name)
        for state in _STATE_VALUE:
            with contextlib.suppress(KeyError):
                BREAKER_TRANSITIONS.remove(self.name, state)

    def open(self) -> None:
        """Force the breaker open (operators and tests)."""
        self._cb.open()

    def close(self) -> None:
        """Force the breaker closed."""
        self._cb.close()
