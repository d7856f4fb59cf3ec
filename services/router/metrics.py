"""The router's Prometheus metrics (names are used by the dashboards: keep them stable).

Label children are bound once per model and kept, so the request path does no label lookups.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_QUEUE_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "openclaw_router_requests_total",
    "Attempts against a model, by outcome (ok, busy, breaker_open, or a provider error kind).",
    ["model", "provider", "outcome"],
)
DURATION = Histogram(
    "openclaw_router_request_duration_seconds",
    "Duration of provider calls (whole completion, streams included).",
    ["model", "provider"],
    buckets=_LATENCY_BUCKETS,
)
TTFT = Histogram(
    "openclaw_router_time_to_first_token_seconds",
    "Time from receiving a streamed request to its first token.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
TOKENS = Counter("openclaw_router_tokens_total", "Tokens reported by providers.", ["model", "kind"])
IN_FLIGHT = Gauge("openclaw_router_in_flight", "Provider calls in progress.", ["model"])
QUEUE_WAIT = Histogram(
    "openclaw_router_queue_wait_seconds",
    "Time spent waiting for a model's concurrency slot.",
    ["model"],
    buckets=_QUEUE_BUCKETS,
)
FALLBACKS = Counter(
    "openclaw_router_fallbacks_total", "Requests passed on to a fallback model.", ["from_model", "to_model"]
)


class ModelMetrics:
    """The metric children of one model, bound once."""

    __slots__ = (
        "_outcomes",
        "completion_tokens",
        "duration",
        "in_flight",
        "model",
        "prompt_tokens",
        "provider",
        "queue_wait",
        "ttft",
    )

    def __init__(self, model: str, provider: str) -> None:
        self.model = model
        self.provider = provider
        self._outcomes: dict[str, Counter] = {}
        self.duration = DURATION.labels(model, provider)
        self.ttft = TTFT.labels(model)
        self.in_flight = IN_FLIGHT.labels(model)
        self.queue_wait = QUEUE_WAIT.labels(model)
        self.prompt_tokens = TOKENS.labels(model, "prompt")
        self.completion_tokens = TOKENS.labels(model, "completion")

    def outcome(self, outcome: str) -> None:
        """Count one attempt."""
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = REQUESTS.labels(self.model, self.provider, outcome)
        child.inc()

    def tokens(self, prompt: int, completion: int) -> None:
        """Count the tokens of one completion."""
        if prompt:
            self.prompt_tokens.inc(prompt)
        if completion:
            self.completion_tokens.inc(completion)


def fallback(from_model: str, to_model: str) -> None:
    """Count one hand-over to a fallback model."""
    FALLBACKS.labels(from_model, to_model).inc()


# -- QoS: deployments, queues, recovery ------------------------------------------------------------

ERRORS = Counter(
    "openclaw_router_errors_total",
    "Failed attempts by error class (rate_limited, server_error, timeout, breaker_open, busy, shed...).",
    ["model", "class"],
)
RETRIES = Counter(
    "openclaw_router_retries_total",
    "Attempts after the first of a request (same or another model).",
    ["model"],
)
SHED = Counter(
    "openclaw_router_shed_total",
    "Requests refused before any provider call: deadline, queue_full, quota, retry_budget.",
    ["model", "reason"],
)
QUEUE_DEPTH = Gauge(
    "openclaw_router_queue_depth", "Requests waiting for a model's slot.", ["model", "priority"]
)
DEPLOYMENT_IN_FLIGHT = Gauge(
    "openclaw_router_deployment_in_flight",
    "Provider calls in progress per deployment.",
    ["model", "deployment"],
)
DEPLOYMENT_LIMIT = Gauge(
    "openclaw_router_deployment_limit",
    "Current adaptive concurrency limit per deployment (never above max_concurrency).",
    ["model", "deployment"],
)
DEPLOYMENT_BREAKER = Gauge(
    "openclaw_router_deployment_breaker_state",
    "Breaker state per deployment: 0 closed, 1 half-open, 2 open.",
    ["model", "deployment"],
)
DEPLOYMENT_LATENCY = Histogram(
    "openclaw_router_deployment_latency_seconds",
    "Provider call latency per deployment (time to first token for streams).",
    ["model", "deployment"],
    buckets=_LATENCY_BUCKETS,
)
BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}


class DeploymentMetrics:
    """The metric children of one deployment, bound once."""

    __slots__ = ("breaker", "in_flight", "labels", "latency", "limit")

    def __init__(self, model: str, deployment: str) -> None:
        self.labels = (model, deployment)
        self.in_flight = DEPLOYMENT_IN_FLIGHT.labels(model, deployment)
        self.limit = DEPLOYMENT_LIMIT.labels(model, deployment)
        self.breaker = DEPLOYMENT_BREAKER.labels(model, deployment)
        self.latency = DEPLOYMENT_LATENCY.labels(model, deployment)

    def remove(self) -> None:
        """Drop the series of a deployment that left the table (labels stay bounded by the table)."""
        for family in (DEPLOYMENT_IN_FLIGHT, DEPLOYMENT_LIMIT, DEPLOYMENT_BREAKER, DEPLOYMENT_LATENCY):
            with contextlib.suppress(KeyError):
                family.remove(*self.labels)


def error(model: str, kind: str) -> None:
    """Count one failed attempt by class."""
    ERRORS.labels(model, kind).inc()


def shed(model: str, reason: str) -> None:
    """Count one request refused before any provider call."""
    SHED.labels(model, reason).inc()
