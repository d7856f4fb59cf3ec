"""The gateway's Prometheus metrics; names are a contract with the dashboards, so they change only on purpose."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
REQUESTS = Counter(
    "openclaw_gateway_requests_total",
    "Requests by protocol: http/1.1 and http/2 requests, websocket request frames, mqtt request messages, "
    "grpc calls.",
    ["protocol"],
)
WEBSOCKET_CONNECTIONS = Gauge(
    "openclaw_gateway_websocket_connections",
    "WebSocket connections open on /v1/ws.",
)
MQTT_MESSAGES = Counter(
    "openclaw_gateway_mqtt_messages_total",
    "MQTT messages: direction in (requests received) or out (replies published), by outcome ok or error.",
    ["direction", "outcome"],
)

# Route label for requests that matched no route: raw paths would explode the label's cardinality.
UNMATCHED_ROUTE = "unmatched"
RATE_LIMITED = Counter(
    "openclaw_gateway_rate_limited_total",
    "Requests refused by a rate limit (429), by subject kind: tenant or api_key.",
    ["subject"],
)
FORBIDDEN = Counter(
    "openclaw_gateway_forbidden_total",
    "Authenticated requests refused by authorization, by reason: role, tenant, policy.",
    ["reason"],
)
SHED = Counter(
    "openclaw_gateway_shed_total",
    "Requests refused to protect the service (503), by reason: queue_depth or route_<class> at its limit.",
    ["reason"],
)
AUDIT_DROPPED = Counter(
    "openclaw_gateway_audit_dropped_total",
    "Audit records the gateway could not queue (the audit writer far behind, e.g. Redis down); alert on any.",
)

TENANT_REQUESTS = Counter(
    "openclaw_gateway_tenant_requests_total",
    "Requests by tenant and outcome (ok or the error code); tenants not defined in the tenant directory count as "
    "'other'.",
    ["tenant", "outcome"],
)
