"""Write OpenClaw's Grafana dashboards (deploy/grafana/dashboards/*.json): the overview here, the rest in boards.py.

    python deploy/grafana/generate.py            # rewrite the JSON after editing a dashboard
    python deploy/grafana/generate.py --check    # exit 1 if a committed dashboard differs from its code

tests/unit/deploy/ runs the check and verifies that every query names a metric in deploy/metrics.txt or a
recording rule in deploy/prometheus/rules. A panel appears only for a metric the code exports today.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from boards import executor, gateway, router, tenants
from panels import (
    HTTP,
    RATE,
    RED,
    SUBMIT,
    SUBMIT_BUDGET,
    SUBMIT_FAST,
    TASK_BAD,
    TASK_BUDGET,
    TASK_ENDED,
    TASKS,
    breakers,
    dashboard,
    quantiles,
    rate_by,
    stat,
    ts,
    variable,
)

OUT = Path(__file__).resolve().parent / "dashboards"


def overview() -> dict[str, Any]:
    slo = [
        stat(
            "Task success rate",
            f"1 - sum(increase({TASK_BAD}[$__range])) / sum(increase({TASK_ENDED}[$__range]))",
            "percentunit",
            "Over the time range. Objective 99.9 %: failed and dead-lettered tasks count against it.",
            w=5,
            steps=[{"color": "red", "value": None}, {"color": "green", "value": 0.999}],
        ),
        stat(
            "Task submit time, average",
            f"sum(rate({HTTP}_sum{SUBMIT}[$__range])) / sum(rate({HTTP}_count{SUBMIT}[$__range]))",
            "s",
            "POST /v1/tasks over the time range (202 after the broker's confirm). Objective: under 500 ms.",
            w=5,
            steps=RED,
        ),
        stat(
            "Tasks ended/s",
            f"sum(rate({TASK_ENDED}[{RATE}]))",
            "ops",
            "Throughput: tasks that succeeded, failed or were dead-lettered.",
            w=4,
        ),
        stat(
            "Task error budget left (30 d)",
            f"1 - (sum(increase({TASK_BAD}[30d])) / sum(increase({TASK_ENDED}[30d]))) / {TASK_BUDGET}",
            "percentunit",
            "Share of the 30-day budget (0.1 % of tasks) not yet spent; negative once overspent.",
            w=5,
            steps=[
                {"color": "red", "value": None},
                {"color": "yellow", "value": 0},
                {"color": "green", "value": 0.25},
            ],
        ),
        stat(
            "Submit latency budget left (30 d)",
            f"1 - (1 - sum(increase({HTTP}_bucket{SUBMIT_FAST}[30d])) / sum(increase({HTTP}_count{SUBMIT}[30d])))"
            f" / {SUBMIT_BUDGET}",
            "percentunit",
            "Share of the 30-day budget (1 % of submissions slower than 500 ms) not yet spent.",
            w=5,
            steps=[
                {"color": "red", "value": None},
                {"color": "yellow", "value": 0},
                {"color": "green", "value": 0.25},
            ],
        ),
        ts(
            "Task error budget burn rate",
            *[
                (f"openclaw:task_error:ratio_rate{w} / {TASK_BUDGET}", f"over {w}")
                for w in ("5m", "1h", "6h")
            ],
            desc="1 spends the budget in exactly 30 days. Pages at 14.4 (1 h and 5 m) or 6 (6 h and 30 m).",
        ),
        ts(
            "Submit latency budget burn rate",
            *[
                (f"openclaw:task_submit_slow:ratio_rate{w} / {SUBMIT_BUDGET}", f"over {w}")
                for w in ("5m", "1h", "6h")
            ],
            desc="Share of submissions slower than 500 ms, in units of the 1 % budget.",
        ),
        ts(
            "Task submit time",
            ("openclaw:task_submit_latency_seconds:avg_rate5m", "average (5 m)"),
            *quantiles(HTTP, "", SUBMIT, 0.99),
            unit="s",
            desc="POST /v1/tasks: the average the objective is about, and the slowest 1 %.",
        ),
        ts(
            "Firing alerts",
            ('sum by (alertname, severity) (ALERTS{alertstate="firing"})', "{{alertname}} ({{severity}})"),
            desc="Rules in deploy/prometheus/rules; what each means is in docs/runbook.md.",
            w=24,
        ),
    ]
    glance = [
        stat(
            "Gateway requests/s",
            "sum(rate(openclaw_gateway_http_requests_total[$__rate_interval]))",
            "reqps",
            "HTTP requests per second across all routes.",
        ),
        stat(
            "Gateway 5xx ratio",
            'sum(rate(openclaw_gateway_http_requests_total{status=~"5.."}[$__rate_interval])) / '
            "sum(rate(openclaw_gateway_http_requests_total[$__rate_interval]))",
            "percentunit",
            "Share of HTTP responses with a 5xx status.",
        ),
        stat(
            "Tasks succeeded/s",
            f'sum(rate({TASKS}{{outcome="succeeded"}}[{RATE}]))',
            "ops",
            "Executor tasks finishing successfully per second.",
        ),
        stat(
            "Open breakers",
            "sum(openclaw_breaker_state == bool 2)",
            "none",
            "Circuit breakers currently open.",
        ),
    ]
    hop = '{hop=~"$hop"}'
    hops = [
        ts(
            "Hop requests/s by outcome",
            (rate_by("hop, outcome", "openclaw_hop_requests_total", hop), "{{hop}} {{outcome}}"),
            unit="reqps",
            desc="Calls per hop and outcome (ok, error, breaker_open).",
        ),
        ts(
            "Hop error ratio",
            (
                rate_by("hop", "openclaw_hop_requests_total", '{hop=~"$hop", outcome!="ok"}')
                + " / "
                + rate_by("hop", "openclaw_hop_requests_total", hop),
                "{{hop}}",
            ),
            unit="percentunit",
            desc="Share of calls per hop that failed or were refused by an open breaker.",
        ),
        ts(
            "Hop latency p50 / p99",
            *quantiles("openclaw_hop_duration_seconds", "hop", hop, 0.5, 0.99),
            unit="s",
        ),
        breakers(
            "Breaker state", "", "0 closed, 1 half-open, 2 open; one lane per breaker (max over instances)."
        ),
        ts(
            "Calls refused by open breakers/s",
            (rate_by("hop", "openclaw_hop_requests_total", '{outcome="breaker_open"}'), "{{hop}}"),
            unit="reqps",
            desc="Calls short-circuited without reaching the dependency.",
        ),
    ]
    processes = [
        ts("Targets up", ("up", "{{job}} {{instance}}"), desc="1 when Prometheus can scrape the target."),
        ts(
            "Resident memory",
            ('process_resident_memory_bytes{job=~"gateway|router|executor"}', "{{job}} {{instance}}"),
            unit="bytes",
        ),
        ts(
            "CPU",
            (
                f'rate(process_cpu_seconds_total{{job=~"gateway|router|executor"}}[{RATE}])',
                "{{job}} {{instance}}",
            ),
            desc="CPU seconds per second.",
        ),
    ]
    return dashboard(
        "openclaw-overview",
        "OpenClaw overview",
        "SLOs, then rate, errors and latency per hop. Details: the gateway, executor and router dashboards.",
        [
            ("Service level objectives", slo),
            ("At a glance", glance),
            ("Hops (every outbound call: gateway, executor, router)", hops),
            ("Processes", processes),
        ],
        [variable("hop", "Hop", "openclaw_hop_requests_total")],
    )


DASHBOARDS = [overview, gateway, executor, router, tenants]


def main(argv: list[str]) -> int:
    """Write every dashboard, or with --check report (exit 1) those whose file differs."""
    stale = []
    for build in DASHBOARDS:
        board = build()
        path = OUT / f"{board['uid']}.json"
        text = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
        if "--check" not in argv:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            stale.append(path.name)
    if stale:
        print("stale dashboards (run python deploy/grafana/generate.py):", ", ".join(stale))
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
