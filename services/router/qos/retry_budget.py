"""A retry budget: retries and fallbacks together may add at most ``ratio`` extra attempts over a sliding window.

Per-request retry counts multiply under failure (3 retries × 2 fallbacks = 9× the load exactly when providers are
struggling); a budget over all requests caps the extra load at, say, 20 %, plus a small floor per second so a
quiet router can still retry (Finagle's RetryBudget, gRPC's retry throttling).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class RetryBudget:
    """``record_request`` for every first attempt; ``try_spend`` before every retry or fallback attempt."""

    def __init__(
        self,
        ratio: float = 0.2,
        *,
        min_per_s: float = 5.0,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= ratio <= 10 or min_per_s < 0 or window_s <= 0:
            raise ValueError("need 0 <= ratio <= 10, min_per_s >= 0 and window_s > 0")
        self.ratio = ratio
        self._floor = min_per_s * window_s
        self._window = window_s
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self.refused = 0

    def record_request(self) -> None:
        self._requests.append(self._clock())

    def try_spend(self) -> bool:
        """Take one retry from the budget if it allows; False means: do not retry, fail now."""
        now = self._clock()
        self._expire(now)
        if len(self._retries) + 1 > self.ratio * len(self._requests) + self._floor:
            self.refused += 1
            return False
        self._retries.append(now)
        return True

    def _expire(self, now: float) -> None:
        horizon = now - self._window
        for events in (self._requests, self._retries):
            while events and events[0] <= horizon:
                events.popleft()
