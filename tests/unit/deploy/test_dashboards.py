"""Observability config: Prometheus targets, collector pipelines, Grafana dashboards vs metrics.txt."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy._helpers import (
    COMPOSE_DIR,
    DEPLOY,
    PROMETHEUS_DIR,
    endpoints,
    env_of,
    exported_metrics,
    listening_ports,
    load_yaml,
    mounts,
    promql_metric_names,
    run,
    series_names,
    tool,
)

DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))

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


def recording_rules() -> set[str]:
    """Series that deploy/prometheus/rules records, which dashboards may read like metrics."""
    return {
        rule["record"]
        for path in (PROMETHEUS_DIR / "rules").glob("*.yml")
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def allowed_metric(name: str, exported: set[str]) -> bool:
    # ALERTS is Prometheus' own series of firing rules; process_/python_ come with every client library.
    return (
        name in exported
        or name in {"up", "ALERTS"}
        or name in recording_rules()
        or name.startswith(("process_", "python_", "rabbitmq_"))
    )


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
    families = exported_metrics()
    assert len(families) >= 18, "the families of the foundation are all listed"
    for name, kind in families.items():
        assert re.fullmatch(r"openclaw_[a-z0-9_]+", name) and kind in {"counter", "gauge", "histogram"}
        assert name.endswith("_total") == (kind == "counter"), name
        assert kind != "histogram" or name.endswith(("_seconds", "_bytes", "_tokens")), name


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


def test_dashboards_are_the_generator_output() -> None:
    """The JSON is reproducible: deploy/grafana/generate.py --check finds nothing stale."""
    generator = DEPLOY / "grafana" / "generate.py"
    run(sys.executable, str(generator), "--check")
    assert {p.stem for p in DASHBOARDS} == {
        "openclaw-overview",
        "openclaw-gateway",
        "openclaw-executor",
        "openclaw-router",
        "openclaw-tenants",
    }


def test_every_exported_metric_is_on_a_dashboard() -> None:
    used: set[str] = set()
    for path in DASHBOARDS:
        used |= set().union(
            *(promql_metric_names(e) for e in dashboard_queries(json.loads(path.read_text())))
        )
    for family, kind in exported_metrics().items():
        assert series_names(family, kind) & used, f"{family} is on no dashboard"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_layout_is_sound(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not area & cells, f"{path.name}: {panel['title']} overlaps another panel"
        cells |= area
        refs = [target["refId"] for target in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]


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


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query, as a recording rule with Grafana's variables filled in."""
    fill = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m"}
    rules = []
    for path in DASHBOARDS:
        for i, expr in enumerate(dashboard_queries(json.loads(path.read_text()))):
            if expr.lstrip().startswith("label_values("):
                continue  # Grafana's own function, not PromQL
            for variable, value in fill.items():
                expr = expr.replace(variable, value)
            expr = re.sub(r"\$\w+", ".*", expr)
            rules.append({"record": f"dashboard:{path.stem.replace('-', '_')}:q{i}", "expr": expr})
    assert len(rules) > 50
    file = tmp_path / "dashboards.rules.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run(tool("promtool"), "check", "rules", str(file))


def test_promql_validation_rejects_a_broken_query(tmp_path: Path) -> None:
    """Negative control for the check above."""
    file = tmp_path / "broken.rules.yml"
    file.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "a:b", "expr": "sum(rate(x[5m])"}]}]})
    )
    done = subprocess.run(
        [tool("promtool"), "check", "rules", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
