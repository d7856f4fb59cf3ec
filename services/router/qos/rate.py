"""A deployment's provider limits (requests and tokens per minute) as token buckets, kept by each replica.

Providers enforce rpm/tpm per key; sending past them only buys 429s. A deployment whose bucket cannot cover the
next request is passed over by the balancer (another deployment, or the next model, takes the request), and its
buckets refill continuously, so there is no burst at a window boundary. Each replica keeps its own buckets: with
N replicas behind one key, give each deployment 1/N of the provider's limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class _Bucket:
    __slots__ = ("capacity", "last", "level")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self.last = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.last) * self.capacity / 60.0)
        self.last = now


class DeploymentRate:
    """Requests and tokens per minute of one deployment; 0 means no limit."""

    __slots__ = ("_clock", "_requests", "_tokens")

    def __init__(self, rpm: int = 0, tpm: int = 0, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rpm < 0 or tpm < 0:
            raise ValueError("rpm and tpm must be at least 0")
        self._clock = clock
        now = clock()
        self._requests = _Bucket(rpm, now) if rpm else None
        self._tokens = _Bucket(tpm, now) if tpm else None

    def allows(self, tokens: int) -> bool:
        """Whether one more request of about ``tokens`` prompt tokens fits now."""
        now = self._clock()
        if self._requests is not None:
            self._requests.refill(now)
            if self._requests.level < 1.0:
                return False
        if self._tokens is not None:
            self._tokens.refill(now)
            # A prompt larger than the whole bucket still goes once the bucket is full, or it never would.
            if self._tokens.level < min(float(tokens), self._tokens.capacity):
                return False
        return True

    def take(self, tokens: int) -> None:
        """Count a request sent with about ``tokens`` prompt tokens."""
        if self._requests is not None:
            self._requests.level -= 1.0
        self.spend(tokens)

    def spend(self, tokens: int) -> None:
        """Count tokens used beyond the estimate (the completion); the bucket may go below zero."""
        if self._tokens is not None and tokens > 0:
            self._tokens.level -= tokens
