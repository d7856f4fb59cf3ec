"""The router's Prometheus metrics (names are used by the dashboards: keep them stable).

Label children are bound once per model and kept, so the request path does no label lookups.
"""

from __future__ import annotations

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
