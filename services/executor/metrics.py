"""The executor's Prometheus metrics (names are relied on by dashboards and alerts: do not rename)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OUTCOMES = ("succeeded", "failed", "cancelled", "retried", "dead_lettered", "deferred")

TASKS = Counter(
    "openclaw_executor_tasks_total",
    "Task deliveries handled, by outcome (succeeded|failed|cancelled|retried|dead_lettered|deferred).",
    ["outcome"],
)
TASK_DURATION = Histogram(
    "openclaw_executor_task_duration_seconds",
    "Time from a task's start on a worker to its outcome, per attempt.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
STEP_DURATION = Histogram(
    "openclaw_executor_step_duration_seconds",
    "Duration of one step, by operation and outcome (succeeded|failed).",
    ["step_type", "outcome"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
IN_FLIGHT = Gauge("openclaw_executor_tasks_in_flight", "Deliveries being handled by this process.")

for _outcome in OUTCOMES:
    TASKS.labels(_outcome)
