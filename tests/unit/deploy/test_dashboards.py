"""Observability config: Prometheus targets, collector pipelines, Grafana dashboards vs metrics.txt."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy._helpers import (
    COMPOSE_DIR,
    DEPLOY,
    endpoints,
    env_of,
    listening_ports,
    load_yaml,
    mounts,
)

DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
METRICS_FILE = DEPLOY / "metrics.txt"

# --- prometheus and the collector -------------------------------------------------------------------------


def test_prometheus_scrapes_compose_services(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(COMPOSE_DIR / "prometheus" / "prometheus.yml")
    scraped: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            scraped |= {(name, int(dns["port"])) for name in dns["names"]}
    for host, port in scraped:
        assert host in services, f"scrape target {host} is not a compose service"
        assert port in listening_ports(services[host]), f"{host} does not expose {port}"
    assert {("gateway", 8080), ("router", 9102), ("executor", 9103), ("rabbitmq", 15692)} <= scraped
    mounted = {target for _, _, target in mounts(services["prometheus"])}
    assert "/etc/prometheus/prometheus.yml" in mounted


def test_otel_collector_pipelines_are_wired(services: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(COMPOSE_DIR / "otel-collector.yaml")
    for pipeline, spec in config["service"]["pipelines"].items():
        for section in ("receivers", "processors", "exporters"):
            for component in spec.get(section, []):
                assert component in config[section], f"{pipeline}: {section[:-1]} {component} is not defined"
    assert set(config["service"].get("extensions", [])) <= set(config.get("extensions") or {})
    collector = services["otel-collector"]
    for proto in config["receivers"]["otlp"]["protocols"].values():
        host, port = proto["endpoint"].rsplit(":", 1)
        assert host == "0.0.0.0" and int(port) in listening_ports(collector)
    host, port = config["exporters"]["otlp/jaeger"]["endpoint"].rsplit(":", 1)
    assert int(port) in listening_ports(services[host])
    mounted = {target for _, _, target in mounts(collector)}
    assert any(arg.split("=", 1)[-1] in mounted for arg in collector["command"])


# --- grafana and metrics ----------------------------------------------------------------------------------


def exported_metrics() -> dict[str, str]:
    """Metric family name -> type, from deploy/metrics.txt."""
    families: dict[str, str] = {}
    for line in METRICS_FILE.read_text().splitlines():
        name, kind = line.split()
        families[name] = kind
    return families


def series_names(family: str, kind: str) -> set[str]:
    """The sample names a family produces in the Prometheus exposition format."""
    if kind == "histogram":
        return {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    return {family}


_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
_PROMQL_KEYWORDS |= {"unless", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a light parse: enough for the dashboards we write)."""
    label_values = re.fullmatch(r"\s*label_values\(\s*(?:([A-Za-z_:][\w:]*)\s*,\s*)?\w+\s*\)\s*", expr)
    if label_values:
        return {label_values.group(1)} if label_values.group(1) else set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the tail of a number or duration (1e3, 5m)
        if text[match.end() :].lstrip().startswith("(") or match.group().lower() in _PROMQL_KEYWORDS:
            continue  # a function, aggregation or keyword
        names.add(match.group())
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[str]:
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            yield query["query"] if isinstance(query, dict) else query


def datasource_uids(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and source.get("type") != "grafana":
            yield source["uid"]
        for value in node.values():
            yield from datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            yield from datasource_uids(value)


def allowed_metric(name: str, exported: set[str]) -> bool:
    return name in exported or name == "up" or name.startswith(("process_", "python_", "rabbitmq_"))


def test_promql_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (hop, le) (rate(openclaw_hop_duration_seconds_bucket{hop=~"$hop"}'
        "[$__rate_interval]))) / on (hop) group_left sum(up == bool 1) offset 5m"
    )
    assert promql_metric_names(expr) == {"openclaw_hop_duration_seconds_bucket", "up"}
    assert promql_metric_names("label_values(openclaw_router_requests_total, model)") == {
        "openclaw_router_requests_total"
    }


def test_metrics_file_lists_typed_families() -> None:
    lines = METRICS_FILE.read_text().splitlines()
    families = exported_metrics()
    assert len(families) == len(lines) == 18, "one family per line, no duplicates"
    for name, kind in families.items():
        assert re.fullmatch(r"openclaw_[a-z0-9_]+", name) and kind in {"counter", "gauge", "histogram"}
        assert name.endswith("_total") == (kind == "counter"), name
        assert kind != "histogram" or name.endswith("_seconds"), name


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_use_only_exported_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    exported = {s for family, kind in exported_metrics().items() for s in series_names(family, kind)}
    queries = list(dashboard_queries(dashboard))
    assert queries, f"{path.name} has no queries"
    for expr in queries:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = {n for n in names if not allowed_metric(n, exported)}
        assert not unknown, f"{path.name}: {expr!r} uses {unknown}, not in deploy/metrics.txt"


def test_overview_dashboard_shows_every_exported_metric() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "openclaw-overview.json").read_text())
    used = set().union(*(promql_metric_names(e) for e in dashboard_queries(dashboard)))
    for family, kind in exported_metrics().items():
        assert series_names(family, kind) & used, f"{family} is on no panel"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "openclaw-overview"
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard["panels"])


def test_grafana_provisioning_matches_compose_and_dashboards(services: dict[str, dict[str, Any]]) -> None:
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    sources = [
        s for f in sorted((provisioning / "datasources").glob("*.yaml")) for s in load_yaml(f)["datasources"]
    ]
    for source in sources:
        for host, port in endpoints(source["url"]):
            assert host in services and port in listening_ports(services[host]), source["url"]
    uids = {s["uid"] for s in sources}
    assert [s["type"] for s in sources if s.get("isDefault")] == ["prometheus"]
    for path in DASHBOARDS:
        assert set(datasource_uids(json.loads(path.read_text()))) <= uids, f"{path.name}: unknown datasource"

    grafana = services["grafana"]
    binds = {
        (COMPOSE_DIR / source).resolve(): target for kind, source, target in mounts(grafana) if kind == "bind"
    }
    assert binds.get(provisioning.resolve()) == "/etc/grafana/provisioning"
    dashboards_target = binds[(DEPLOY / "grafana" / "dashboards").resolve()]
    providers = [p for f in (provisioning / "dashboards").glob("*.yaml") for p in load_yaml(f)["providers"]]
    assert [p["options"]["path"] for p in providers] == [dashboards_target]
    home = env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_target}/openclaw-overview.json"
