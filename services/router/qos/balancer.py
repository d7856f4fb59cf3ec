"""Choosing a deployment: power of two random choices on latency × load / weight.

Two random candidates (weighted by ``weight``) among those with a free slot and a closed breaker; the one with
the lower score wins, score = EWMA latency × (in-flight + 1) / weight. P2C gets most of the benefit of
least-loaded without herding every replica onto the same "best" deployment (Mitzenmacher; Envoy, Finagle).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.router.qos.adaptive import AdaptiveLimit


@dataclass(slots=True)
class DeploymentLoad:
    """One deployment's live numbers: its adaptive limit, calls in flight and latency EWMA."""

    name: str
    limit: AdaptiveLimit
    weight: float = 1.0
    in_flight: int = 0
    ewma_s: float = 0.0
    available: Callable[[], bool] = field(default=lambda: True)  # e.g. the breaker is not open
    draining: bool = False

    @property
    def has_slot(self) -> bool:
        return not self.draining and self.in_flight < self.limit.value and self.available()

    def score(self) -> float:
        # An unmeasured deployment scores as fast, so new ones get traffic and are measured.
        return (self.ewma_s or 1e-3) * (self.in_flight + 1) / max(self.weight, 1e-9)

    def observe(self, latency_s: float, alpha: float = 0.2) -> None:
        """Fold in a latency (time to first token for streams, full latency otherwise)."""
        self.ewma_s = latency_s if self.ewma_s == 0.0 else self.ewma_s + alpha * (latency_s - self.ewma_s)


class Balancer:
    """Picks the deployment for the next call, or None when every one is full (the caller queues)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, deployments: Sequence[DeploymentLoad]) -> DeploymentLoad | None:
        candidates = [d for d in deployments if d.has_slot and d.weight > 0]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        weights = [d.weight for d in candidates]
        first = self._rng.choices(range(len(candidates)), weights)[0]
        rest = [i for i in range(len(candidates)) if i != first]
        second = self._rng.choices(rest, [weights[i] for i in rest])[0]
        a, b = candidates[first], candidates[second]
        return a if a.score() <= b.score() else b
