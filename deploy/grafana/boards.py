"""The per-service dashboards: gateway, executor and router (written by generate.py)."""

from __future__ import annotations

from typing import Any

from panels import (
    DEAD_QUEUES,
    HTTP,
    ROUTER_ERRORS,
    TASK_QUEUES,
    TASKS,
    breakers,
    dashboard,
    hop_panels,
    quantiles,
    rate_by,
    ts,
    variable,
)


def gateway() -> dict[str, Any]:
    requests = "openclaw_gateway_http_requests_total"
    http = [
        ts(
            "Requests/s by route and status",
            (
                rate_by("route, method, status", requests, '{route=~"$route"}'),
                "{{method}} {{route}} {{status}}",
            ),
            unit="reqps",
            w=12,
        ),
        ts(
            "Error responses/s by route",
            (
                rate_by("route, method, status", requests, '{route=~"$route", status=~"[45].."}'),
                "{{method}} {{route}} {{status}}",
            ),
            unit="reqps",
            desc="4xx are callers' mistakes (bad input, auth); 5xx are ours.",
            w=12,
        ),
        ts(
            "Latency p50 / p95 / p99 by route",
            *quantiles(HTTP, "route, method", '{route=~"$route"}', 0.5, 0.95, 0.99),
            unit="s",
            desc="Long-polls (GET /v1/tasks/{task_id}?wait=) and SSE streams are slow by design.",
            w=24,
        ),
    ]
    protocols = [
        ts(
            "Requests/s by protocol",
            (rate_by("protocol", "openclaw_gateway_requests_total"), "{{protocol}}"),
            unit="reqps",
            desc="HTTP/1.1 and HTTP/2 requests, WebSocket request frames, MQTT request messages, gRPC calls.",
        ),
        ts(
            "Open WebSocket connections",
            ("sum by (instance) (openclaw_gateway_websocket_connections)", "{{instance}}"),
            desc="Connections open on /v1/ws, per gateway replica.",
        ),
        ts(
            "MQTT messages/s",
            (
                rate_by("direction, outcome", "openclaw_gateway_mqtt_messages_total"),
                "{{direction}} {{outcome}}",
            ),
            unit="ops",
            desc="in: requests received; out: replies published.",
        ),
    ]
    tasks = [
        ts(
            "Task submissions/s by outcome",
            (rate_by("outcome", "openclaw_gateway_tasks_submitted_total"), "{{outcome}}"),
            unit="ops",
            desc="accepted, replayed (idempotent retry), rejected (bad input), unavailable.",
            w=12,
        ),
        ts(
            "Auth failures/s by reason",
            (rate_by("reason", "openclaw_gateway_auth_failures_total"), "{{reason}}"),
            unit="ops",
            desc="Refused credentials: a spike is a misconfigured client or an attack.",
            w=12,
        ),
    ]
    governance = [
        ts(
            "Rate-limited requests/s",
            (rate_by("subject", "openclaw_gateway_rate_limited_total"), "{{subject}}"),
            unit="reqps",
            desc="Answered 429 with Retry-After: a tenant or API key over its quota.",
        ),
        ts(
            "Forbidden/s by reason",
            (rate_by("reason", "openclaw_gateway_forbidden_total"), "{{reason}}"),
            unit="reqps",
            desc="Refused by role or tenant policy (operation, model, channel not allowed).",
        ),
        ts(
            "Shed/s by reason",
            (rate_by("reason", "openclaw_gateway_shed_total"), "{{reason}}"),
            unit="reqps",
            desc="Load shedding: the task queue too deep, a route at its concurrency limit.",
        ),
        ts(
            "Chat webhook messages/s",
            (rate_by("kind, outcome", "openclaw_gateway_channel_events_total"), "{{kind}} {{outcome}}"),
            unit="ops",
            desc="queued, duplicate (a platform retry or another replica), ignored, pairing, refused, bad_signature.",
            w=16,
        ),
        ts(
            "Audit records dropped/s",
            ("sum(rate(openclaw_gateway_audit_dropped_total[5m]))", "dropped"),
            unit="ops",
            desc="Requests served without their audit record because the audit writer was stalled (Redis down).",
        ),
    ]
    return dashboard(
        "openclaw-gateway",
        "OpenClaw gateway",
        "Requests by route and protocol, connections, submissions, auth failures, and the calls to RabbitMQ, Redis, router.",
        [
            ("HTTP API", http),
            ("Protocols and connections", protocols),
            ("Tasks and auth", tasks),
            ("Governance and chat channels", governance),
            ("Dependencies", hop_panels('{hop=~"gateway\\\\..+"}', '{breaker=~"gateway\\\\..+"}', "gateway")),
        ],
        [variable("route", "Route", requests)],
    )


def executor() -> dict[str, Any]:
    steps = "openclaw_executor_step_duration_seconds"
    tasks = [
        ts(
            "Task outcomes/s",
            (rate_by("outcome", TASKS), "{{outcome}}"),
            unit="ops",
            desc="succeeded, failed, cancelled, retried, dead_lettered, deferred (put back for later).",
        ),
        ts(
            "Task duration",
            *quantiles("openclaw_executor_task_duration_seconds", "", "", 0.5, 0.95, 0.99),
            unit="s",
        ),
        ts(
            "Tasks in flight per replica",
            ("sum by (instance) (openclaw_executor_tasks_in_flight)", "{{instance}}"),
            desc="Deliveries each executor holds; bounded by the AMQP prefetch.",
        ),
    ]
    step_sel = '{step_type=~"$step_type"}'
    step_panels = [
        ts(
            "Steps/s by operation and outcome",
            (rate_by("step_type, outcome", f"{steps}_count", step_sel), "{{step_type}} {{outcome}}"),
            unit="ops",
        ),
        ts("Step duration p95 by operation", *quantiles(steps, "step_type", step_sel, 0.95), unit="s"),
        ts(
            "Step failure ratio by operation",
            (
                rate_by("step_type", f"{steps}_count", '{step_type=~"$step_type", outcome="failed"}')
                + " / "
                + rate_by("step_type", f"{steps}_count", step_sel),
                "{{step_type}}",
            ),
            unit="percentunit",
        ),
    ]
    retries = [
        ts(
            "Retries, deferrals and dead letters/s",
            (rate_by("outcome", TASKS, '{outcome=~"retried|deferred|dead_lettered"}'), "{{outcome}}"),
            unit="ops",
            desc="retried: sent to a delay queue; deferred: could not run now; dead_lettered: gave up.",
        ),
        ts(
            "Dead-letter queue depth",
            (f"rabbitmq_detailed_queue_messages{DEAD_QUEUES}", "{{queue}}"),
            desc="Messages waiting for a replay (docs/runbook.md, 'Replaying dead letters').",
        ),
        ts(
            "Task error ratio",
            ("openclaw:task_error:ratio_rate5m", "5 m"),
            ("openclaw:task_error:ratio_rate1h", "1 h"),
            unit="percentunit",
            desc="Failed and dead-lettered among ended tasks; the objective allows 0.1 %.",
        ),
    ]
    queue = [
        ts(
            "Task queue: ready / unacked",
            (f"rabbitmq_detailed_queue_messages_ready{TASK_QUEUES}", "{{queue}} ready"),
            (f"rabbitmq_detailed_queue_messages_unacked{TASK_QUEUES}", "{{queue}} unacked"),
            desc="Ready tasks wait for an executor; unacked ones are being run.",
        ),
        ts(
            "Consumers per task queue",
            (f"rabbitmq_detailed_queue_consumers{TASK_QUEUES}", "{{queue}}"),
            desc="One per executor replica; zero means nothing takes tasks.",
        ),
        ts(
            "Estimated wait for the last ready task",
            (
                f"sum(rabbitmq_detailed_queue_messages_ready{TASK_QUEUES}) / "
                f'sum(rate({TASKS}{{outcome!="deferred"}}[10m]))',
                "wait",
            ),
            unit="s",
            desc="Ready tasks divided by the executors' pace; the OpenClawTaskQueueBacklogOld alert fires above 5 min.",
        ),
    ]
    return dashboard(
        "openclaw-executor",
        "OpenClaw executor",
        "Tasks by outcome, step durations by operation, retries and dead letters, the task queue, and dependencies.",
        [
            ("Tasks", tasks),
            ("Steps", step_panels),
            ("Retries and dead letters", retries),
            ("Task queue (RabbitMQ exporter)", queue),
            (
                "Dependencies",
                hop_panels('{hop=~"executor\\\\..+"}', '{breaker=~"executor\\\\..+"}', "executor"),
            ),
        ],
        [variable("step_type", "Operation", f"{steps}_count")],
    )


def router() -> dict[str, Any]:
    requests = "openclaw_router_requests_total"
    model = '{model=~"$model"}'
    traffic = [
        ts(
            "Attempts/s by model and outcome",
            (rate_by("model, provider, outcome", requests, model), "{{model}} ({{provider}}) {{outcome}}"),
            unit="reqps",
        ),
        ts(
            "Errors/s by model and class",
            (
                rate_by("model, outcome", requests, f'{{model=~"$model", {ROUTER_ERRORS}}}'),
                "{{model}} {{outcome}}",
            ),
            unit="reqps",
            desc="Provider error kinds (timeout, rate_limited, server_error, ...); busy and breaker_open are below.",
        ),
        ts(
            "Provider error ratio by model",
            ('model:openclaw_router_provider_errors:ratio_rate5m{model=~"$model"}', "{{model}}"),
            unit="percentunit",
            desc="Failed provider calls among those sent; the OpenClawProviderErrorRateHigh alert fires above 5 %.",
        ),
    ]
    latency = [
        ts(
            "Provider call latency",
            *quantiles("openclaw_router_request_duration_seconds", "model", model, 0.5, 0.95, 0.99),
            unit="s",
        ),
        ts(
            "Time to first token",
            *quantiles("openclaw_router_time_to_first_token_seconds", "model", model, 0.5, 0.95),
            unit="s",
            desc="Streaming requests only.",
        ),
        ts(
            "Queue wait p95",
            *quantiles("openclaw_router_queue_wait_seconds", "model", model, 0.95),
            unit="s",
            desc="Time waiting for one of the model's max_concurrency slots.",
        ),
    ]
    capacity = [
        ts(
            "In flight by model", ('sum by (model) (openclaw_router_in_flight{model=~"$model"})', "{{model}}")
        ),
        ts(
            "Refused: busy and breaker open/s",
            (
                rate_by("model, outcome", requests, '{model=~"$model", outcome=~"busy|breaker_open"}'),
                "{{model}} {{outcome}}",
            ),
            unit="reqps",
            desc="busy: no concurrency slot within the wait; breaker_open: the model's breaker refused the call.",
        ),
        ts(
            "Fallbacks/s",
            (
                rate_by("from_model, to_model", "openclaw_router_fallbacks_total"),
                "{{from_model}} → {{to_model}}",
            ),
            unit="ops",
            desc="Requests moved down a model's fallback chain.",
        ),
        breakers(
            "Breaker per model",
            '{breaker=~"router\\\\.provider\\\\..+"}',
            "0 closed, 1 half-open, 2 open; breaker router.provider.<model>.",
            w=24,
        ),
    ]
    tokens = [
        ts(
            "Tokens/s by model and kind",
            (rate_by("model, kind", "openclaw_router_tokens_total", model), "{{model}} {{kind}}"),
            desc="prompt and completion tokens as the providers report them.",
            w=12,
        ),
        ts(
            "Tokens per hour by model",
            ('sum by (model) (increase(openclaw_router_tokens_total{model=~"$model"}[1h]))', "{{model}}"),
            desc="Multiply by each model's price for spend; no price table is exported yet.",
            w=12,
        ),
    ]
    qos = [
        ts(
            "Queue depth by priority",
            (
                'sum by (model, priority) (openclaw_router_queue_depth{model=~"$model"})',
                "{{model}} {{priority}}",
            ),
            desc="Requests waiting for a slot, per class (interactive, agent, batch).",
        ),
        ts(
            "Shed/s by reason",
            (rate_by("model, reason", "openclaw_router_shed_total", model), "{{model}} {{reason}}"),
            unit="reqps",
            desc="Refused before running: deadline unreachable, queue full, quota spent.",
        ),
        ts(
            "Errors/s by class",
            (rate_by("model, class", "openclaw_router_errors_total", model), "{{model}} {{class}}"),
            unit="reqps",
        ),
        ts(
            "Retries/s",
            (rate_by("model", "openclaw_router_retries_total", model), "{{model}}"),
            unit="ops",
            desc="Extra attempts within a model's deployments; capped by the global retry budget.",
        ),
        ts(
            "In flight vs adaptive limit by deployment",
            (
                'sum by (model, deployment) (openclaw_router_deployment_in_flight{model=~"$model"})',
                "{{model}}/{{deployment}} in flight",
            ),
            (
                'sum by (model, deployment) (openclaw_router_deployment_limit{model=~"$model"})',
                "{{model}}/{{deployment}} limit",
            ),
            desc="The limit follows 429s and latency (AIMD), never above max_concurrency.",
            w=16,
        ),
        ts(
            "Latency p95 by deployment",
            *quantiles("openclaw_router_deployment_latency_seconds", "model, deployment", model, 0.95),
            unit="s",
        ),
        ts(
            "Breaker state by deployment",
            (
                'max by (model, deployment) (openclaw_router_deployment_breaker_state{model=~"$model"})',
                "{{model}}/{{deployment}}",
            ),
            desc="0 closed, 1 half-open, 2 open; shared across router replicas.",
        ),
    ]
    cache = [
        ts(
            "Cache lookups/s by outcome",
            (
                rate_by("model, outcome", "openclaw_router_cache_requests_total", model),
                "{{model}} {{outcome}}",
            ),
            unit="ops",
            desc="hit, miss, bypass; a hit makes no provider call.",
        ),
        ts(
            "Coalesced requests/s",
            (rate_by("model", "openclaw_router_coalesced_requests_total", model), "{{model}}"),
            unit="ops",
            desc="Identical requests in flight together that shared one provider call.",
        ),
        ts(
            "Embeddings batching",
            (rate_by("model", "openclaw_router_embed_batched_requests_total", model), "{{model}} requests"),
            (rate_by("model", "openclaw_router_embed_batches_total", model), "{{model}} provider calls"),
            unit="ops",
        ),
        ts(
            "Spend per hour by model and deployment (USD)",
            (
                'sum by (model, deployment) (increase(openclaw_router_cost_usd_total{model=~"$model"}[1h]))',
                "{{model}}/{{deployment}}",
            ),
            unit="currencyUSD",
            desc="Priced from the deployment's cost fields or the model catalogue; per tenant through GetUsage.",
            w=24,
        ),
    ]
    return dashboard(
        "openclaw-router",
        "OpenClaw router",
        "Per model: attempts and errors by class, latency, time to first token, queue wait, breakers, tokens.",
        [
            ("Traffic and errors", traffic),
            ("Latency", latency),
            ("Capacity and breakers", capacity),
            ("Tokens", tokens),
            ("QoS: queues, shedding, deployments", qos),
            ("Cache, coalescing, batching and spend", cache),
        ],
        [variable("model", "Model", requests)],
    )


def tenants() -> dict[str, Any]:
    """Usage and spend per tenant: tenants defined in the tenant directory by name, the rest as 'other'."""
    tenant = '{tenant=~"$tenant"}'
    usage = [
        ts(
            "Requests/s by tenant",
            (rate_by("tenant", "openclaw_gateway_tenant_requests_total", tenant), "{{tenant}}"),
            unit="reqps",
            desc="Every admitted request at the gateway, all protocols.",
            w=12,
        ),
        ts(
            "Refused or failed requests/s by tenant",
            (
                rate_by(
                    "tenant, outcome",
                    "openclaw_gateway_tenant_requests_total",
                    '{tenant=~"$tenant", outcome!="ok"}',
                ),
                "{{tenant}} {{outcome}}",
            ),
            unit="reqps",
            desc="rate_limited, permission_denied, invalid_input, not_found ... per tenant.",
            w=12,
        ),
    ]
    spend = [
        ts(
            "Tokens/s by tenant",
            (rate_by("tenant, kind", "openclaw_router_tenant_tokens_total", tenant), "{{tenant}} {{kind}}"),
            desc="Prompt and completion tokens of the model calls the router served.",
            w=12,
        ),
        ts(
            "Spend per hour by tenant (USD)",
            (
                'sum by (tenant) (increase(openclaw_router_tenant_cost_usd_total{tenant=~"$tenant"}[1h]))',
                "{{tenant}}",
            ),
            unit="currencyUSD",
            desc="Compare with each tenant's spend_usd_per_day quota; exact per-day figures come from GetUsage.",
            w=12,
        ),
    ]
    return dashboard(
        "openclaw-tenants",
        "OpenClaw tenants",
        "Per tenant: requests and refusals at the gateway, tokens and spend at the router.",
        [("Requests", usage), ("Tokens and spend", spend)],
        [variable("tenant", "Tenant", "openclaw_gateway_tenant_requests_total")],
    )
