"""Choosing a deployment: power of two random choices on latency × load, drawn by weight.

Two candidates are drawn at random, with replacement and in proportion to ``weight``, among those with a free
slot and a closed breaker; the one with the lower score wins, score = EWMA latency × (in-flight + 1). P2C gets
most of the benefit of least-loaded without herding every replica onto the same "best" deployment (Mitzenmacher;
Envoy, Finagle). Weights act in the draw only, so they are traffic shares between equally fast deployments: a
canary at weight 0.05 next to one at 1 gets about 5 % of the requests whatever the load, not 0 % at low load
(which dividing the score by the weight would give).
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
        return (self.ewma_s or 1e-3) * (self.in_flight + 1)

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
        a, b = self._rng.choices(candidates, [d.weight for d in candidates], k=2)
        return a if a.score() <= b.score() else b
