"""A deployment's concurrency limit that adapts: additive increase while healthy, multiplicative decrease on
429s, timeouts or latency well above its baseline, never above the configured ``max_concurrency``.

The shape is Netflix concurrency-limits' AIMD with a latency gradient: the baseline is an EWMA of observed
latency; latency that stays above ``tolerance`` x baseline for one baseline period counts as congestion (a pause
of our own process, GC or a noisy neighbour, stretches every call in flight at once, and halving the limit for
that would only make callers wait). Decreases are spaced by at least one baseline latency, and by the slow
call's own latency, so a burst of 429s or one generation of slow calls halves the limit once, not to the floor.
A provider that became slower for good is learnt as the new baseline within a few dozen calls. The limit grows
while it is in use: half of it busy, or callers queued (headroom can keep a class below the limit and must not
also keep the limit from growing: together they once pinned a model at one call at a time).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class AdaptiveLimit:
    """The current limit (``value``), moved by ``on_success`` and ``on_overload``."""

    __slots__ = (
        "_backoff",
        "_baseline",
        "_clock",
        "_last_decrease",
        "_limit",
        "_slow_since",
        "_tolerance",
        "decreases",
        "max_limit",
        "min_limit",
    )

    def __init__(
        self,
        max_limit: int,
        *,
        initial: int | None = None,
        min_limit: int = 1,
        backoff: float = 0.5,
        tolerance: float = 2.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_limit < 1 or not 1 <= min_limit <= max_limit or not 0 < backoff < 1 or tolerance <= 1:
            raise ValueError("need 1 <= min_limit <= max_limit, 0 < backoff < 1 and tolerance > 1")
        self.max_limit = max_limit
        self.min_limit = min_limit
        self._limit = float(min(max_limit, max(min_limit, initial if initial is not None else max_limit)))
        self._backoff = backoff
        self._tolerance = tolerance
        self._baseline = 0.0
        self._slow_since: float | None = None
        self._last_decrease = float("-inf")
        self._clock = clock
        self.decreases = 0

    @property
    def value(self) -> int:
        return max(self.min_limit, min(self.max_limit, int(self._limit)))

    @property
    def baseline_s(self) -> float:
        return self._baseline

    def on_success(self, latency_s: float, in_flight: int, waiting: int = 0) -> None:
        """A call finished normally after ``latency_s`` with ``in_flight`` calls running (itself included) and
        ``waiting`` callers queued for a slot."""
        if self._baseline == 0.0:
            self._baseline = latency_s
            return
        if latency_s > self._tolerance * self._baseline:
            now = self._clock()
            if self._slow_since is None:
                self._slow_since = now
            elif now - self._slow_since >= self._baseline:
                # One halving per generation of calls: the calls in flight now all started under the old limit.
                self._decrease(spacing_s=latency_s)
            # A provider that became slower for good (longer prompts, a busier model) is a new normal, not
            # congestion: learn it within a few dozen calls, or the limit stays collapsed while it drifts.
            self._baseline += 0.05 * (latency_s - self._baseline)
            return
        self._slow_since = None
        self._baseline += 0.05 * (latency_s - self._baseline)
        # Grow only when the limit is actually in use: half of it busy, or callers queued for it (headroom
        # may keep a class from filling the limit, and must not also keep the limit from growing).
        if in_flight * 2 >= self._limit or waiting > 0:
            self._limit = min(float(self.max_limit), self._limit + 1.0 / max(self._limit, 1.0))

    def on_overload(self) -> None:
        """The provider said it is overloaded (429, 503) or the call timed out."""
        self._decrease()

    def set_max(self, max_limit: int) -> None:
        """A model update changed ``max_concurrency``: a limit that was not backed off follows it up at once."""
        at_max = self._limit >= self.max_limit
        self.max_limit = max(1, max_limit)
        self.min_limit = min(self.min_limit, self.max_limit)
        self._limit = float(self.max_limit) if at_max else min(self._limit, float(self.max_limit))

    def _decrease(self, spacing_s: float = 0.0) -> None:
        now = self._clock()
        if now - self._last_decrease < max(self._baseline, spacing_s, 0.05):
            return
        self._last_decrease = now
        self._limit = max(float(self.min_limit), self._limit * self._backoff)
        self.decreases += 1
