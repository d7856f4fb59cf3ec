"""Building blocks of the dashboards that generate.py writes: panels, rows, variables, the dashboard frame."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"
BREAKER_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "closed", "color": "green", "index": 0},
            "1": {"text": "half-open", "color": "yellow", "index": 1},
            "2": {"text": "open", "color": "red", "index": 2},
        },
    }
]


@dataclass
class Panel:
    """One panel: its kind, queries as (expr, legend) and display settings."""

    kind: str
    title: str
    queries: list[tuple[str, str]]
    unit: str = "short"
    description: str = ""
    width: int = 8
    height: int = 8
    extra: dict[str, Any] = field(default_factory=dict)


def ts(title: str, *queries: tuple[str, str], unit: str = "short", desc: str = "", w: int = 8) -> Panel:
    return Panel("timeseries", title, list(queries), unit, desc, w)


def stat(title: str, expr: str, unit: str, desc: str, w: int = 6, steps: list[Any] | None = None) -> Panel:
    panel = Panel("stat", title, [(expr, "")], unit, desc, w, 4)
    panel.extra["steps"] = steps or [{"color": "blue", "value": None}]
    return panel


def breakers(title: str, selector: str, desc: str, w: int = 16) -> Panel:
    panel = Panel(
        "state-timeline", title, [(f"max by (breaker) (openclaw_breaker_state{selector})", "{{breaker}}")]
    )
    panel.description, panel.width = desc, w
    return panel


def quantiles(metric: str, by: str, selector: str, *qs: float) -> list[tuple[str, str]]:
    """histogram_quantile queries for each q, grouped by the labels in `by`."""
    legend = " ".join(f"{{{{{label}}}}}" for label in by.split(", ") if label) if by else ""
    group = f"{by}, le" if by else "le"
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{selector}[{RATE}])))",
            f"{legend} p{round(q * 100)}".strip(),
        )
        for q in qs
    ]


def variable(name: str, label: str, metric: str) -> dict[str, Any]:
    query = f"label_values({metric}, {name})"
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": PROMETHEUS,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "options": [],
    }


def _render(panel: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"datasource": PROMETHEUS, "expr": expr, "legendFormat": legend, "refId": chr(65 + i), "range": True}
        for i, (expr, legend) in enumerate(panel.queries)
    ]
    out: dict[str, Any] = {
        "type": panel.kind,
        "id": pid,
        "title": panel.title,
        "description": panel.description,
        "datasource": PROMETHEUS,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
    }
    if panel.kind == "stat":
        steps = panel.extra["steps"]
        out["fieldConfig"] = {
            "defaults": {"unit": panel.unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        }
        out["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        }
    elif panel.kind == "state-timeline":
        out["fieldConfig"] = {
            "defaults": {
                "mappings": BREAKER_MAPPINGS,
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        }
        out["options"] = {
            "showValue": "never",
            "mergeValues": True,
            "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        }
    else:
        out["fieldConfig"] = {
            "defaults": {"unit": panel.unit, "custom": {"fillOpacity": 10, "showPoints": "never"}},
            "overrides": [],
        }
        out["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return out


def dashboard(
    uid: str,
    title: str,
    description: str,
    rows: Iterable[tuple[str, list[Panel]]],
    variables: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A dashboard of rows; panels flow left to right and wrap at Grafana's 24 columns."""
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    for row_title, row_panels in rows:
        panels.append(
            {
                "type": "row",
                "id": pid,
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid, y, x, line = pid + 1, y + 1, 0, 0
        for panel in row_panels:
            if x + panel.width > 24:
                y, x, line = y + line, 0, 0
            panels.append(_render(panel, pid, x, y))
            pid, x, line = pid + 1, x + panel.width, max(line, panel.height)
        y += line
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["openclaw"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "tags": ["openclaw"],
                "asDropdown": True,
                "title": "OpenClaw",
                "icon": "external link",
            }
        ],
        "templating": {"list": variables or []},
        "panels": panels,
    }


# The SLOs of deploy/prometheus/rules/slo.rules.yml.
TASK_BUDGET = 0.001
SUBMIT_BUDGET = 0.01
TASKS = "openclaw_executor_tasks_total"
TASK_BAD = f'{TASKS}{{outcome=~"failed|dead_lettered"}}'
TASK_ENDED = f'{TASKS}{{outcome=~"succeeded|failed|dead_lettered"}}'
HTTP = "openclaw_gateway_http_request_duration_seconds"
SUBMIT = '{route="/v1/tasks", method="POST"}'
SUBMIT_FAST = '{route="/v1/tasks", method="POST", le="0.5"}'
TASK_QUEUES = r'{queue=~".+\\.tasks"}'
DEAD_QUEUES = r'{queue=~".+\\.tasks\\.dead"}'
ROUTER_ERRORS = 'outcome!~"ok|busy|breaker_open|cancelled"'
RED = [{"color": "green", "value": None}, {"color": "red", "value": 0.5}]


def rate_by(labels: str, metric: str, selector: str = "") -> str:
    return f"sum by ({labels}) (rate({metric}{selector}[{RATE}]))"


def hop_panels(selector: str, breaker_selector: str, who: str) -> list[Panel]:
    """Calls this service makes across its hops: rate by outcome, latency and breakers."""
    return [
        ts(
            "Hop calls/s by outcome",
            (rate_by("hop, outcome", "openclaw_hop_requests_total", selector), "{{hop}} {{outcome}}"),
            unit="reqps",
            desc=f"Every call the {who} makes to a dependency, by outcome (ok, error, breaker_open).",
        ),
        ts(
            "Hop latency p50 / p99",
            *quantiles("openclaw_hop_duration_seconds", "hop", selector, 0.5, 0.99),
            unit="s",
        ),
        breakers("Breakers", breaker_selector, "0 closed, 1 half-open, 2 open.", w=8),
    ]
