"""The gateway's Prometheus metrics; names are a contract with the dashboards, so they change only on purpose."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "openclaw_gateway_http_requests_total",
    "HTTP requests served, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "openclaw_gateway_http_request_duration_seconds",
    "Time from request start to the end of the response, by route template and method.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TASKS_SUBMITTED = Counter(
    "openclaw_gateway_tasks_submitted_total",
    "Task submissions, by outcome: accepted, replayed (idempotent retry), rejected (bad input), unavailable.",
    ["outcome"],
)
AUTH_FAILURES = Counter(
    "openclaw_gateway_auth_failures_total",
    "Requests refused for want of a valid token, by reason.",
    ["reason"],
)

# Route label for requests that matched no route: raw paths would explode the label's cardinality.
UNMATCHED_ROUTE = "unmatched"
