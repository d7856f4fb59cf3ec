"""Circuit breakers for asyncio, using pybreaker as the state machine and listener API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
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
    work and keeps a single probe in flight.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        exclude: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.name = name
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            exclude=[*exclude, _is_caller_error],  # type: ignore[arg-type]
            listeners=[_MetricsListener()],
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

    def _reopen_for_probe(self) -> None:
        """Back to open, with the open period already elapsed so the next call probes at once."""
        self._cb.open()
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
