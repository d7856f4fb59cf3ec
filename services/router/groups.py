"""The live state of model groups: per deployment a breaker, an adaptive limit and a latency EWMA; per model a
fair scheduler whose capacity is the sum of its deployments' current limits.

This state belongs to names, not to table versions: a model update keeps its queue and the breakers of the
deployments it keeps. A deployment that leaves the table drains: it gets no new work, and requests already on it
finish (they hold the object).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from services.common.breaker import AsyncBreaker
from services.common.hop import Hop
from services.router import metrics
from services.router.deployments import SINGLE, Deployment
from services.router.qos import PRIORITIES, AdaptiveLimit, DeploymentLoad, DeploymentRate, FairScheduler
from services.router.registry import ModelSpec

HOP_NAME = "router.provider"


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    """Limits that apply to every model."""

    queue_timeout_s: float = 10.0
    max_queue: int = 1000
    breaker_fail_max: int = 5
    breaker_reset_s: float = 30.0
    retry_ratio: float = 0.2
    """Retries and fallbacks may add this share of extra attempts (plus ``retry_min_per_s``)."""
    retry_min_per_s: float = 5.0
    default_priority: str = "interactive"


def adapter_spec(spec: ModelSpec, deployment: Deployment) -> ModelSpec:
    """The spec a provider adapter is called with for one deployment (adapters know nothing of groups)."""
    return dataclasses.replace(
        spec,
        provider=deployment.provider,
        endpoint=deployment.endpoint,
        provider_model=deployment.provider_model,
        max_concurrency=deployment.max_concurrency,
        api_key=deployment.api_key,
        api_key_env=deployment.api_key_env,
        credential=deployment.credential,
        timeout_seconds=deployment.timeout_seconds,
        simulated=deployment.simulated,
        deployments=(),
    )


def span_attributes(spec: ModelSpec, deployment: str) -> dict[str, Any]:
    """GenAI client span attributes of one deployment."""
    url = urlsplit(spec.endpoint)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": spec.provider,
        "gen_ai.request.model": spec.provider_model,
        "server.address": url.hostname or "",
        "openclaw.model": spec.name,
        "openclaw.deployment": deployment,
        "openclaw.simulated": spec.simulated,
    }
    if url.port:
        attrs["server.port"] = url.port
    return attrs


class Target:
    """One deployment of a model group and its live numbers."""

    __slots__ = ("attrs", "deployment", "dmetrics", "hop", "load", "metrics", "rate", "spec")

    def __init__(self, model: ModelSpec, deployment: Deployment, policy: RoutingPolicy) -> None:
        single = not model.deployments and deployment.name == SINGLE
        # A one-endpoint model keeps the breaker name it always had, so dashboards and alerts still match.
        key = model.name if single else f"{model.name}/{deployment.name}"
        breaker = AsyncBreaker(
            f"{HOP_NAME}.{key}", fail_max=policy.breaker_fail_max, reset_timeout=policy.breaker_reset_s
        )
        self.hop = Hop(HOP_NAME, breaker=breaker)
        self.deployment = deployment
        self.spec = adapter_spec(model, deployment)
        self.metrics = metrics.ModelMetrics(model.name, deployment.provider)
        self.dmetrics = metrics.DeploymentMetrics(model.name, deployment.name)
        self.load = DeploymentLoad(
            deployment.name,
            AdaptiveLimit(deployment.max_concurrency),
            weight=deployment.weight,
            available=self.available,
        )
        self.attrs = span_attributes(self.spec, deployment.name)
        self.rate = (
            DeploymentRate(deployment.rpm, deployment.tpm) if deployment.rpm or deployment.tpm else None
        )
        self.dmetrics.limit.set(self.load.limit.value)
        self.dmetrics.breaker.set(0)
        breaker.observe(self._breaker_changed)

    @property
    def breaker(self) -> AsyncBreaker:
        return self.hop.breaker

    def available(self) -> bool:
        """Whether the breaker lets a call through now (closed, or open with its wait over: a probe)."""
        breaker = self.hop.breaker
        return breaker.state != "open" or breaker.retry_after() <= 0

    def within_rate(self, tokens: int) -> bool:
        """Whether the provider's rpm/tpm for this deployment leave room for another request."""
        return self.rate is None or self.rate.allows(tokens)

    def take(self, tokens: int) -> None:
        """Count a request against the deployment's rpm/tpm."""
        if self.rate is not None:
            self.rate.take(tokens)

    def spend(self, tokens: int) -> None:
        """Count completion tokens against the deployment's tpm."""
        if self.rate is not None:
            self.rate.spend(tokens)

    def fits(self, tokens: int) -> bool:
        """Whether a prompt of about ``tokens`` fits the context window (unknown windows always fit)."""
        window = self.deployment.context_window
        return window == 0 or tokens < window

    def follow(self, model: ModelSpec, deployment: Deployment) -> None:
        """Adopt a changed definition of the same deployment."""
        old = self.deployment
        self.deployment = deployment
        self.spec = adapter_spec(model, deployment)
        self.load.weight = deployment.weight
        self.load.limit.set_max(deployment.max_concurrency)
        if (deployment.rpm, deployment.tpm) != (old.rpm, old.tpm):
            self.rate = (
                DeploymentRate(deployment.rpm, deployment.tpm) if deployment.rpm or deployment.tpm else None
            )
        self.dmetrics.limit.set(self.load.limit.value)
        if deployment.provider != old.provider:
            self.metrics = metrics.ModelMetrics(model.name, deployment.provider)
        moved = (deployment.provider, deployment.endpoint) != (old.provider, old.endpoint)
        if moved and self.hop.breaker.state != "closed":
            self.hop.breaker.close()  # a new endpoint deserves a fresh start
        self.attrs = span_attributes(self.spec, deployment.name)

    def _breaker_changed(self, breaker: AsyncBreaker, state: str) -> None:
        self.dmetrics.breaker.set(metrics.BREAKER_VALUES.get(state, 0))


class Group:
    """One model name: its deployments and the scheduler in front of them."""

    __slots__ = ("depth", "name", "policy", "queue_wait", "scheduler", "targets")

    def __init__(self, spec: ModelSpec, policy: RoutingPolicy) -> None:
        self.name = spec.name
        self.policy = policy
        self.targets: dict[str, Target] = {d.name: Target(spec, d, policy) for d in spec.targets}
        self.scheduler = FairScheduler(spec.name, self.capacity, max_queue=policy.max_queue)
        self.depth = {p: metrics.QUEUE_DEPTH.labels(spec.name, p) for p in PRIORITIES}
        self.queue_wait = metrics.QUEUE_WAIT.labels(spec.name)

    def capacity(self) -> int:
        """Slots of the group now: the adaptive limits of the deployments that take work (at least 1)."""
        total = sum(t.load.limit.value for t in self.targets.values() if t.load.weight > 0 and t.available())
        return max(total, 1)  # a group whose breakers are all open still lets a probe queue

    def follow(self, spec: ModelSpec, on_removed: Callable[[Target], None]) -> list[Target]:
        """Adopt a changed model definition; returns the deployments that were added."""
        wanted: Mapping[str, Deployment] = {d.name: d for d in spec.targets}
        for name in list(self.targets.keys() - wanted.keys()):
            target = self.targets.pop(name)
            target.load.draining = True  # requests already on it finish; nothing new is sent
            on_removed(target)
        added = []
        for name, deployment in wanted.items():
            current = self.targets.get(name)
            if current is None:
                self.targets[name] = current = Target(spec, deployment, self.policy)
                added.append(current)
            elif current.deployment != deployment or current.spec.name != spec.name:
                current.follow(spec, deployment)
            else:
                current.spec = adapter_spec(spec, deployment)
        self.scheduler.dispatch()  # a grown group admits queued requests at once
        return added

    def show_depth(self) -> None:
        """Publish the queue depth per class."""
        for priority, count in self.scheduler.waiting_by_priority().items():
            self.depth[priority].set(count)
