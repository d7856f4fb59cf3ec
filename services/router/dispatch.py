"""The dispatch and recovery stages of one request: the walk over the fallback chain, deployment by deployment.

``Dispatcher.walk`` is an async generator of slots: each one is a deployment with a scheduler slot held for the
caller, who makes the call, sets ``slot.error`` (None when it served) and resumes the walk; the walk then feeds the
outcome to the deployment's breaker, adaptive limit and latency EWMA, records the attempt, releases the slot and
decides what comes next: another deployment of the same model, the next model, or the end. The same walk serves
Chat, Embed and streams (where the caller holds the slot for the whole stream).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, cast

from services.common.errors import BreakerOpenError, OpenClawError, ResourceExhaustedError, UnavailableError
from services.router import metrics
from services.router.chat import Attempt, Route
from services.router.groups import Group, RoutingPolicy, Target
from services.router.providers.base import ProviderError, ProviderRejectedError
from services.router.qos import Balancer, DeadlineShedError, QueueFullError, RetryBudget
from services.router.registry import ModelSpec, ModelTable, Registry

log = logging.getLogger(__name__)

_REJECTIONS = frozenset({"client_error", "content_policy", "context_window_exceeded"})
_OVERLOAD = frozenset({"rate_limited", "timeout"})


def estimate_tokens(texts: Any) -> int:
    """A prompt's size in tokens, roughly (4 characters a token): enough to refuse what fits nowhere."""
    return math.ceil(sum(len(t) for t in texts) / 4)


@dataclass(slots=True)
class Slot:
    """One attempt's deployment, held until the caller reports how the call ended."""

    spec: ModelSpec
    target: Target
    started: float = field(default_factory=time.perf_counter)
    reason: str = ""
    queued_s: float = 0.0
    error: BaseException | None = None
    first_token_s: float | None = None


@dataclass(slots=True)
class Walk:
    """A request's way through the chain: its route, who it is, what it may still do."""

    route: Route
    table: ModelTable
    """The snapshot taken when the request arrived: the whole walk uses it, whatever changes meanwhile."""
    tenant: str
    priority: str
    deadline: float | None
    tokens: int
    calls: int = 0
    rejected: ProviderError | None = None
    stopped: bool = False


class Dispatcher:
    """The walk over a model's chain; the Router adds admission, the calls and the table's live state."""

    registry: Registry
    policy: RoutingPolicy
    budget: RetryBudget
    _balancer: Balancer
    _groups: dict[str, Group]

    def _group(self, spec: ModelSpec) -> Group:
        group = self._groups.get(spec.name)
        if group is None:  # removed while this request was in flight: finish on a private group
            group = Group(spec, self.policy)
        return group

    # -- the walk ----------------------------------------------------------------------------------

    async def walk(self, model: str, walk: Walk) -> AsyncGenerator[Slot, None]:
        """Slots to try in order; after each one the caller sets ``slot.error`` (None: served) and resumes."""
        self.budget.record_request()
        previous = ""
        for spec in walk.table.chain(model):
            if walk.stopped:
                return
            if previous:
                metrics.fallback(previous, spec.name)
            previous = spec.name
            group = self._group(spec)
            tried: set[str] = set()
            while True:
                candidates = [t for n, t in group.targets.items() if n not in tried and t.load.weight > 0]
                fitting = [t for t in candidates if t.fits(walk.tokens)]
                usable = [t for t in fitting if t.available()]
                if not usable:
                    if not tried:
                        self._skip(walk, spec, candidates, fitting)
                    break
                if not any(t.within_rate(walk.tokens) for t in usable):
                    self._record(walk, spec, None, "busy", "every deployment is at its rpm/tpm limit", 0.0)
                    break
                if walk.calls and not self.budget.try_spend():
                    walk.stopped = True
                    metrics.shed(spec.name, "retry_budget")
                    self._record(walk, spec, None, "retry_budget", "the retry budget is spent", 0.0)
                    return
                queued = await self._queue(walk, spec, group)
                if queued is None:
                    break
                # Whatever changed while it queued (a breaker opened, the table moved on, a rate filled) counts.
                ready = [
                    t
                    for n, t in group.targets.items()
                    if n not in tried
                    and t.load.weight > 0
                    and t.fits(walk.tokens)
                    and t.available()
                    and t.within_rate(walk.tokens)
                ]
                if not ready:
                    group.scheduler.release(None)
                    self._record(walk, spec, None, "busy", "no deployment could take it after it queued", 0.0)
                    break
                target, reason = self._choose(group, ready)
                target.take(walk.tokens)
                tried.add(target.deployment.name)
                if walk.calls:
                    metrics.RETRIES.labels(spec.name).inc()
                walk.calls += 1
                slot = Slot(spec, target, reason=reason, queued_s=queued)
                target.load.in_flight += 1
                target.dmetrics.in_flight.inc()
                target.metrics.in_flight.inc()
                try:
                    yield slot
                finally:
                    held = time.perf_counter() - slot.started
                    target.load.in_flight -= 1
                    target.dmetrics.in_flight.dec()
                    target.metrics.in_flight.dec()
                    target.metrics.duration.observe(held)
                    group.scheduler.release(held)
                    group.show_depth()
                if slot.error is None:
                    self._succeeded(walk, slot)
                    return
                if not self._failed_call(walk, slot):
                    return
        return

    def _skip(self, walk: Walk, spec: ModelSpec, candidates: list[Target], fitting: list[Target]) -> None:
        if candidates and not fitting:
            self._record(walk, spec, None, "context_window_exceeded", "the prompt fits no deployment", 0.0)
            return
        waits = [t.breaker.retry_after() for t in fitting] or [0.0]
        self._record(
            walk, spec, None, "breaker_open", f"circuit breaker open for {min(waits):.1f}s more", 0.0
        )

    async def _queue(self, walk: Walk, spec: ModelSpec, group: Group) -> float | None:
        """Wait for a slot of the model; the seconds waited, or None after recording why not."""
        scheduler = group.scheduler
        limit = time.monotonic() + self.policy.queue_timeout_s
        own = walk.deadline is not None and walk.deadline < limit
        deadline = cast(float, walk.deadline) if own else limit
        try:
            grant = await scheduler.acquire(walk.tenant, priority=walk.priority, deadline=deadline)
        except QueueFullError as exc:
            metrics.shed(spec.name, "queue_full")
            self._record(walk, spec, None, "busy", exc.message, 0.0)
            return None
        except DeadlineShedError as exc:
            waited = time.monotonic() - (limit - self.policy.queue_timeout_s)
            group.show_depth()
            walk.route.queue_ms += waited * 1000
            if own:
                metrics.shed(spec.name, "deadline")
                self._record(walk, spec, None, "shed", exc.message, waited * 1000)
            else:
                self._record(
                    walk,
                    spec,
                    None,
                    "busy",
                    f"model {spec.name!r} is busy: no free slot within {self.policy.queue_timeout_s:g}s",
                    waited * 1000,
                )
            return None
        group.queue_wait.observe(grant.queued_s)
        if grant.queued_s:
            group.show_depth()
        walk.route.queue_ms += grant.queued_s * 1000
        return grant.queued_s

    def _choose(self, group: Group, usable: list[Target]) -> tuple[Target, str]:
        if len(usable) == 1:
            return usable[0], "only"
        chosen = self._balancer.choose([t.load for t in usable])
        if chosen is None:  # every deployment is at its own limit: the least loaded takes it
            best = min(usable, key=lambda t: t.load.score())
            return best, "overflow"
        return next(t for t in usable if t.load is chosen), "p2c"

    def _record(
        self, walk: Walk, spec: ModelSpec, target: Target | None, outcome: str, error: str, ms: float
    ) -> None:
        provider = target.deployment.provider if target is not None else spec.provider
        deployment = target.deployment.name if target is not None else ""
        walk.route.attempts.append(Attempt(spec.name, provider, outcome, error, ms, deployment))
        if target is not None:
            target.metrics.outcome(outcome)
        else:
            metrics.REQUESTS.labels(spec.name, spec.provider, outcome).inc()
        metrics.error(spec.name, outcome)
        log.debug("attempt failed", extra={"model": spec.name, "outcome": outcome, "error": error})

    def _succeeded(self, walk: Walk, slot: Slot) -> None:
        target, route = slot.target, walk.route
        elapsed = time.perf_counter() - slot.started
        latency = slot.first_token_s if slot.first_token_s is not None else elapsed
        # A stream's length is not congestion: its latency is its time to first token.
        waiting = group.scheduler.waiting if (group := self._groups.get(slot.spec.name)) is not None else 0
        target.load.limit.on_success(latency, target.load.in_flight + 1, waiting)
        target.load.observe(latency)
        target.dmetrics.latency.observe(latency)
        target.dmetrics.limit.set(target.load.limit.value)
        target.metrics.outcome("ok")
        self._served(route, slot)

    def _served(self, route: Route, slot: Slot) -> None:
        d = slot.target.deployment
        route.model, route.provider, route.simulated = slot.spec.name, d.provider, d.simulated
        route.deployment, route.reason = d.name, slot.reason
        ms = (time.perf_counter() - slot.started) * 1000
        if route.attempts and route.attempts[-1].outcome == "ok":
            route.attempts.pop()  # the stream's last chunk restates the commit point's attempt
        route.attempts.append(
            Attempt(slot.spec.name, d.provider, "ok", "", ms, d.name, slot.reason, slot.queued_s * 1000)
        )

    def _failed_call(self, walk: Walk, slot: Slot) -> bool:
        """Record a failed call and feed recovery; whether the walk goes on."""
        exc, target = slot.error, slot.target
        elapsed_ms = (time.perf_counter() - slot.started) * 1000
        outcome: str
        if isinstance(exc, ProviderError):
            outcome, message = exc.kind, exc.message
        elif isinstance(exc, BreakerOpenError):
            outcome, message = "breaker_open", exc.message
        else:
            outcome, message = "internal_error", f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ProviderError):
            if exc.kind in _OVERLOAD or exc.status == 503:
                target.load.limit.on_overload()
                target.dmetrics.limit.set(target.load.limit.value)
            if exc.retry_after:
                # The provider said how long to stay away. A wait as long as an open breaker's is honoured at
                # once (and shared with the other replicas); a shorter one only sets the floor of the open
                # time should the failures open the breaker, since opening costs at least breaker_reset_s.
                if exc.retry_after >= self.policy.breaker_reset_s:
                    target.breaker.trip(exc.retry_after)
                else:
                    target.breaker.note_retry_after(exc.retry_after)
        d = target.deployment
        walk.route.attempts.append(
            Attempt(
                slot.spec.name,
                d.provider,
                outcome,
                message,
                elapsed_ms,
                d.name,
                slot.reason,
                slot.queued_s * 1000,
            )
        )
        target.metrics.outcome(outcome)
        metrics.error(slot.spec.name, outcome)
        if isinstance(exc, ProviderError):
            if not exc.fallback:
                walk.rejected = exc
                walk.stopped = True  # the caller's own fault: nothing else to try
                return False
            if isinstance(exc, ProviderRejectedError):
                walk.rejected = exc
        return True


async def finish(slots: AsyncIterator[Slot]) -> None:
    """Let the walk record the success and release the slot."""
    with suppress(StopAsyncIteration):
        await anext(slots)


def exhausted(model: str, walk: Walk) -> OpenClawError:
    """The error for a request nothing served, with every attempt summarised."""
    route, rejected = walk.route, walk.rejected
    attempts = [
        {
            "model": a.model,
            "deployment": a.deployment,
            "outcome": a.outcome,
            "error": a.error,
            "duration_ms": round(a.duration_ms, 1),
        }
        for a in route.attempts
    ]
    summary = "; ".join(
        f"{a.model}: {a.outcome}" + (f" ({a.error})" if a.error else "") for a in route.attempts
    )
    outcomes = {a.outcome for a in route.attempts}
    if rejected is not None and outcomes <= _REJECTIONS:
        err: OpenClawError = ProviderError(
            rejected.kind, rejected.status, f"model {model!r} rejected the request: {summary}"
        )
    elif route.attempts and outcomes <= {"busy", "shed"}:
        if outcomes == {"shed"}:
            err = DeadlineShedError(model, f"its deadline cannot be met: {summary}")
        else:
            err = ResourceExhaustedError(f"every model for {model!r} is busy: {summary}", model=model)
    else:
        err = UnavailableError(
            f"all {len(route.attempts)} attempts failed for model {model!r}: {summary}", model=model
        )
    err.details["attempts"] = attempts
    return err
