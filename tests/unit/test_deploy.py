"""Offline validation of the deployment files: Dockerfile, compose stack, Kustomize base and dashboards.

The validators (check-jsonschema, kubernetes-validate, kubectl) are required: a missing tool fails the test.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
OVERRIDE_FILE = COMPOSE_DIR / "compose.override.example.yaml"
K8S_DIR = DEPLOY / "k8s"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
METRICS_FILE = DEPLOY / "metrics.txt"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.31.0"

OPENCLAW = ("simulator", "router", "executor", "gateway")
PROTOC = (
    "python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. "
    "proto/openclaw/v1/*.proto"
)
# What each process reads; compose and k8s must both provide it. The processes bind 127.0.0.1 unless told
# otherwise (services/*/settings.py), which a container cannot be reached on: every *_HOST is 0.0.0.0.
REQUIRED_ENV: dict[str, set[str]] = {
    "simulator": {"OPENCLAW_SIMULATOR_HOST", "OPENCLAW_SIMULATOR_PORT"},
    "router": {
        "OPENCLAW_ROUTER_LISTEN",
        "OPENCLAW_ROUTER_METRICS_HOST",
        "OPENCLAW_ROUTER_METRICS_PORT",
        "OPENCLAW_SIMULATOR_URL",
        "OPENCLAW_REDIS_URL",
    },
    "executor": {
        "OPENCLAW_AMQP_URL",
        "OPENCLAW_REDIS_URL",
        "OPENCLAW_ROUTER_ADDR",
        "OPENCLAW_EXECUTOR_PREFETCH",
        "OPENCLAW_EXECUTOR_METRICS_HOST",
        "OPENCLAW_EXECUTOR_METRICS_PORT",
        "OPENCLAW_STORAGE_ROOT",
    },
    "gateway": {
        "OPENCLAW_AMQP_URL",
        "OPENCLAW_REDIS_URL",
        "OPENCLAW_ROUTER_ADDR",
        "OPENCLAW_GATEWAY_HTTP_HOST",
        "OPENCLAW_GATEWAY_HTTP_PORT",
        "OPENCLAW_GATEWAY_GRPC_HOST",
        "OPENCLAW_GATEWAY_GRPC_PORT",
        "OPENCLAW_JWT_SECRET",
    },
}
COMMON_ENV = {"OPENCLAW_OTLP_ENDPOINT", "OPENCLAW_LOG_LEVEL", "OPENCLAW_NAMESPACE", "OPENCLAW_SERVICE_NAME"}
# Compose services without a healthcheck, and why.
NO_HEALTHCHECK = {"otel-collector": "the image has no shell or HTTP client to run a check"}
# Names the k8s base refers to but deliberately does not deploy (deploy/k8s/README.md says so).
K8S_EXTERNAL_HOSTS = {"otel-collector"}


# --- helpers ----------------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """The path of a validator from the venv (or PATH for kubectl); fails, never skips, when it is missing."""
    candidate = BIN / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (expected in {BIN} or on PATH): install the dev extras")
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command and fail the test with its output unless it succeeds."""
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        pytest.fail(f"{shlex.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def endpoints(value: str) -> list[tuple[str, int]]:
    """(host, port) for every in-cluster name in a value: URLs anywhere in it, or the value as host:port."""
    found: list[tuple[str, int]] = []
    whole = re.fullmatch(r"([a-z][a-z0-9-]*):(\d+)", value.strip())
    if whole:
        found.append((whole.group(1), int(whole.group(2))))
    for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"'`]+", value):
        parts = urlsplit(url)
        host = parts.hostname
        if host is None or "." in host or host == "localhost":
            continue  # a public name (api.openai.com) or an address, not a service
        assert parts.port is not None, f"{url}: name the port explicitly"
        found.append((host, parts.port))
    return found


# --- compose ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = compose["services"]
    return svcs


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(OVERRIDE_FILE)
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def listening_ports(service: dict[str, Any]) -> set[int]:
    """The ports a compose service declares it listens on: `expose` plus the container side of `ports`."""
    ports = {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    for spec in service.get("ports", []):
        target = spec["target"] if isinstance(spec, dict) else str(spec).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(type, source, target) for each volume entry, short or long syntax."""
    for spec in service.get("volumes", []):
        if isinstance(spec, dict):
            yield spec["type"], str(spec.get("source", "")), str(spec["target"])
            continue
        source, target = str(spec).split(":")[:2]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        yield kind, source, target


def test_compose_files_match_the_compose_spec() -> None:
    run(
        tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        str(COMPOSE_FILE),
        str(OVERRIDE_FILE),
    )


def test_openclaw_services_run_the_one_image_as_a_locked_down_user(
    services: dict[str, dict[str, Any]],
) -> None:
    images = set()
    for name in OPENCLAW:
        svc = services[name]
        context = (COMPOSE_DIR / svc["build"]["context"]).resolve()
        assert (context / svc["build"].get("dockerfile", "Dockerfile")).is_file(), name
        assert context == ROOT, f"{name}: build context should be the repository root"
        images.add(svc["image"])
        assert svc["command"] == ["python", "-m", f"services.{name}"]
        assert svc["user"] == "10001:10001" and svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert "/tmp" in svc["tmpfs"], f"{name}: a read-only root needs a writable /tmp"
        assert env_of(svc)["OPENCLAW_SERVICE_NAME"] == f"openclaw-{name}"
    assert len(images) == 1, f"one image for every OpenClaw process, got {images}"


def test_compose_mounts_exist_and_named_volumes_are_declared(
    compose: dict[str, Any], override: dict[str, Any]
) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for doc in (compose, override):
        for name, svc in doc["services"].items():
            for kind, source, target in mounts(svc):
                assert target.startswith("/"), f"{name}: {target}"
                if kind == "bind":
                    assert (COMPOSE_DIR / source).exists(), f"{name}: bind mount {source} does not exist"
                else:
                    assert source in declared, f"{name}: volume {source} is not declared"
                    used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_depends_on_names_services_that_can_report_health(services: dict[str, dict[str, Any]]) -> None:
    graph: dict[str, set[str]] = {}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: use the long form of depends_on with a condition"
        graph[name] = set(deps)
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert spec["condition"] in {"service_healthy", "service_started"}, f"{name} -> {dep}"
            if spec["condition"] == "service_started":
                assert dep in NO_HEALTHCHECK, f"{name} -> {dep}: wait for service_healthy"
            else:
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"depends_on cycle: {' -> '.join((*path, node))}"
        for dep in graph[node]:
            visit(dep, (*path, node))

    for node in graph:
        visit(node, ())


def test_every_service_has_a_healthcheck_on_a_port_it_listens_on(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in svc
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        text = " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
        for port in re.findall(r"127\.0\.0\.1:(\d+)", text):
            assert int(port) in listening_ports(svc), f"{name}: healthcheck port {port} is not exposed"


def assert_binds_all_interfaces(name: str, env: dict[str, str]) -> None:
    """A process listening on loopback inside a container is unreachable from its peers and probes."""
    for key, value in env.items():
        if key.endswith("_HOST"):
            assert value == "0.0.0.0", f"{name}: {key}={value}"
        if key.endswith("_LISTEN"):
            assert value.rsplit(":", 1)[0] == "0.0.0.0", f"{name}: {key}={value}"


def test_compose_env_gives_each_process_what_it_reads(services: dict[str, dict[str, Any]]) -> None:
    for name in OPENCLAW:
        env = env_of(services[name])
        missing = (REQUIRED_ENV[name] | COMMON_ENV) - set(env)
        assert not missing, f"{name} lacks {missing}"
        ports = {int(v) for k, v in env.items() if k.endswith("_PORT")}
        ports |= {int(v.rsplit(":", 1)[1]) for k, v in env.items() if k.endswith("_LISTEN")}
        assert ports <= listening_ports(services[name]), f"{name} listens on {ports}, exposes fewer"
        assert_binds_all_interfaces(name, env)
    jwt = env_of(services["gateway"])["OPENCLAW_JWT_SECRET"]
    assert re.fullmatch(r"\$\{OPENCLAW_JWT_SECRET:-dev-only-[\w-]{24,}\}", jwt), jwt
    # Real keys come only from the override, so the base stack never needs (or leaks) one.
    assert env_of(services["router"]).keys().isdisjoint({"OPENAI_API_KEY", "ANTHROPIC_API_KEY"})


def test_compose_env_endpoints_name_services_and_their_ports(
    services: dict[str, dict[str, Any]], override: dict[str, Any]
) -> None:
    checked = 0
    for doc in ({"services": services}, override):
        for name, svc in doc["services"].items():
            for key, value in env_of(svc).items():
                for host, port in endpoints(value):
                    assert host in services, f"{name}.{key}={value}: no service {host}"
                    assert port in listening_ports(services[host]), f"{name}.{key}: {host} has no port {port}"
                    checked += 1
    assert checked >= 10


def test_compose_limits_resources_and_scales_the_executor(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert {"cpus", "memory"} <= set(limits), f"{name} has no cpu/memory limits"
    executor = services["executor"]
    assert executor["deploy"]["replicas"] == "${OPENCLAW_EXECUTOR_REPLICAS:-2}"
    assert "ports" not in executor and "container_name" not in executor, (
        "replicas cannot share a name or port"
    )


def test_compose_redis_is_durable(services: dict[str, dict[str, Any]]) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command and "--appendfsync everysec" in command
    assert ("volume", "redis-data", "/data") in set(mounts(services["redis"]))
    assert services["rabbitmq"]["image"] == "rabbitmq:3.13-management"
    assert services["rabbitmq"]["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]


def test_override_example_mounts_the_model_table_and_passes_its_keys(
    services: dict[str, dict[str, Any]], override: dict[str, Any]
) -> None:
    assert set(override["services"]) <= set(services)
    router = override["services"]["router"]
    env = env_of(router)
    targets = {target: source for _, source, target in mounts(router)}
    assert env["OPENCLAW_ROUTER_MODELS"] in targets, "OPENCLAW_ROUTER_MODELS must point at a mounted file"
    table = load_yaml(COMPOSE_DIR / targets[env["OPENCLAW_ROUTER_MODELS"]])
    for model in table["models"]:
        assert model["api_key_env"] in env, (
            f"{model['name']}: {model['api_key_env']} is not passed to the router"
        )
    assert all(":?" in env[key] for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")), (
        "real keys must be required"
    )


def test_model_table_is_consistent(services: dict[str, dict[str, Any]]) -> None:
    table = load_yaml(COMPOSE_DIR / "models.yaml")
    assert (K8S_DIR / "models.yaml").read_text() == (COMPOSE_DIR / "models.yaml").read_text()
    models = {m["name"]: m for m in table["models"]}
    assert len(models) == len(table["models"]), "model names must be unique"
    assert set(models) == {"llama-3", "gpt-4-mini", "claude-3"}
    fields = {
        "name",
        "provider",
        "endpoint",
        "provider_model",
        "max_concurrency",
        "fallback_models",
        "api_key_env",
    }
    for name, model in models.items():
        assert set(model) == fields, name
        assert model["provider"] in {"openai", "anthropic"}
        assert isinstance(model["max_concurrency"], int) and model["max_concurrency"] > 0
        assert [h for h, _ in endpoints(model["endpoint"])] == ["simulator"], name
        for host, port in endpoints(model["endpoint"]):
            assert port in listening_ports(services[host])
        assert set(model["fallback_models"]) <= set(models) - {name}, f"{name}: unknown or self fallback"

    def chain(name: str, seen: tuple[str, ...]) -> None:
        assert name not in seen, f"fallback cycle: {(*seen, name)}"
        for nxt in models[name]["fallback_models"]:
            chain(nxt, (*seen, name))

    for name in models:
        chain(name, ())


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


# --- Dockerfile -------------------------------------------------------------------------------------------


def test_dockerfile_builds_one_non_root_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    stages: list[str] = []
    for base, alias in re.findall(r"^FROM (\S+)(?: AS (\S+))?$", text, re.M):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert image == "python:3.11-slim" or image in stages, image
        stages.append(alias)
    assert re.findall(r"^USER (\S+)$", text, re.M)[-1] == "10001:10001"
    assert PROTOC in text and "pip install --no-deps ." in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), f"COPY {item}: no such file"


def test_dockerignore_keeps_the_sources_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and line[0] != "#"
    ]
    assert not any(p.startswith("!") for p in patterns), "this check does not model exceptions"

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatch(prefix, p.removeprefix("**/")) for prefix in prefixes for p in patterns)

    for kept in ("pyproject.toml", "README.md", "proto/openclaw/v1/router.proto", "openclaw/__init__.py"):
        assert not ignored(kept), kept
    assert not ignored("services/__init__.py")
    for dropped in (".venv", ".git", "openclaw/v1/router_pb2.py", "openclaw/v1/router_pb2_grpc.py", "tests"):
        assert ignored(dropped), dropped


def test_dockerfile_protoc_step_compiles_the_protos(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    args = shlex.split(PROTOC)
    args = [sys.executable if a == "python" else a for a in args if "*" not in a]
    protos = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "proto").rglob("*.proto"))
    assert protos
    run(*args, *protos, cwd=tmp_path)
    for proto in protos:
        stem = Path(proto).relative_to("proto").with_suffix("")
        for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
            assert (tmp_path / f"{stem}{suffix}").is_file(), f"{stem}{suffix}"


# --- Kubernetes -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    output = run(tool("kubectl"), "kustomize", str(K8S_DIR)).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def by_kind(docs: list[dict[str, Any]], *kinds: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in kinds}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return spec


def test_kustomize_output_passes_strict_kubernetes_validation(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    files = []
    for i, doc in enumerate(rendered):
        path = tmp_path / f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    done = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, *files)
    assert done.stdout.count(" passed ") == len(files), done.stdout


def test_validators_reject_known_mistakes(tmp_path: Path) -> None:
    """Negative controls: a misspelt field must fail, or a passing run above proves nothing."""
    bad_compose = tmp_path / "compose.yaml"
    bad_compose.write_text("services:\n  a:\n    image: x\n    depends_on:\n      b: {condition: healthy}\n")
    bad_k8s = tmp_path / "pod.yaml"
    bad_k8s.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
        "spec: {containers: [{name: c, image: x, securityContext: {readOnlyRootFileSystem: true}}]}\n"
    )
    for args in (
        (tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad_compose)),
        (tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(bad_k8s)),
    ):
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode != 0, f"{args[0]} accepted a broken file"


def test_everything_lives_in_the_openclaw_namespace(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "openclaw"
        else:
            assert doc["metadata"].get("namespace") == "openclaw", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "openclaw"


def test_workloads_have_probes_resources_and_a_restricted_security_context(
    rendered: list[dict[str, Any]],
) -> None:
    workloads = by_kind(rendered, "Deployment", "StatefulSet")
    assert set(OPENCLAW) | {"redis", "rabbitmq"} == set(workloads)
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            assert {"readinessProbe", "livenessProbe"} <= set(container), f"{name}: probes"
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name}: {bound}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
        if name not in OPENCLAW:
            continue
        (container,) = pod["containers"]
        assert container["image"].split(":")[0] == "openclaw"
        assert container["command"] == ["python", "-m", f"services.{name}"]
        assert pod["terminationGracePeriodSeconds"] == 30
        assert pod["securityContext"]["runAsUser"] == 10001
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{name}: /tmp must be an emptyDir"


def test_probes_use_each_process_health_endpoint(rendered: list[dict[str, Any]]) -> None:
    workloads = by_kind(rendered, "Deployment")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert containers(workloads["router"])[0][probe]["grpc"]["port"] == 50051
    for name, port in (("gateway", 8080), ("executor", 9103), ("simulator", 8090)):
        (container,) = containers(workloads[name])
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            http = container[probe]["httpGet"]
            assert named.get(http["port"], http["port"]) == port, f"{name} {probe}"
            assert http["path"] in {"/healthz", "/readyz"}
    for name in ("gateway", "executor"):
        assert containers(workloads[name])[0]["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_router_is_sized_per_the_design(rendered: list[dict[str, Any]]) -> None:
    resources = containers(by_kind(rendered, "Deployment")["router"])[0]["resources"]
    assert resources == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}}


def test_services_select_pods_and_target_declared_ports(rendered: list[dict[str, Any]]) -> None:
    workloads = by_kind(rendered, "Deployment", "StatefulSet")
    for name, service in by_kind(rendered, "Service").items():
        selector = service["spec"]["selector"]
        matched = [
            w
            for w in workloads.values()
            if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, f"service {name} selects {len(matched)} workloads"
        ports = [p for c in containers(matched[0]) for p in c.get("ports", [])]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in (p.get("name"), p["containerPort"]) for p in ports), f"{name}: {target}"


def test_disruption_budgets_and_autoscalers_target_workloads(rendered: list[dict[str, Any]]) -> None:
    deployments = by_kind(rendered, "Deployment")
    hpas = by_kind(rendered, "HorizontalPodAutoscaler")
    assert set(hpas) == {"gateway", "router"}
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert "replicas" not in deployments[target["name"]]["spec"], f"{name}: the HPA owns replicas"
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    pdbs = by_kind(rendered, "PodDisruptionBudget")
    assert {"gateway", "router", "executor"} <= set(pdbs)
    for name, pdb in pdbs.items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), name


def test_k8s_references_resolve(rendered: list[dict[str, Any]]) -> None:
    config_maps = by_kind(rendered, "ConfigMap")
    secrets = by_kind(rendered, "Secret")
    services = by_kind(rendered, "Service")
    service_ports = {name: {p["port"] for p in s["spec"]["ports"]} for name, s in services.items()}
    values = [v for cm in config_maps.values() for v in cm["data"].values()]
    values += [v for s in secrets.values() for v in s.get("stringData", {}).values()]
    for workload in by_kind(rendered, "Deployment", "StatefulSet").values():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            for var in container.get("env", []):
                ref = var.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    key = ref["secretKeyRef"]
                    assert key["key"] in secrets[key["name"]]["stringData"], var["name"]
                elif "configMapKeyRef" in ref:
                    key = ref["configMapKeyRef"]
                    assert key["key"] in config_maps[key["name"]]["data"], var["name"]
                else:
                    values.append(var["value"])
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
    checked = 0
    for value in values:
        for host, port in endpoints(value):
            if host in K8S_EXTERNAL_HOSTS:
                continue
            assert port in service_ports.get(host, set()), f"{value}: no Service {host} with port {port}"
            checked += 1
    assert checked >= 8


def test_router_mounts_its_model_table(rendered: list[dict[str, Any]]) -> None:
    router = by_kind(rendered, "Deployment")["router"]
    (container,) = containers(router)
    path = Path(next(v["value"] for v in container["env"] if v["name"] == "OPENCLAW_ROUTER_MODELS"))
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    volume = next(v for v in router["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    data = by_kind(rendered, "ConfigMap")[volume["configMap"]["name"]]["data"]
    assert data[path.name] == (COMPOSE_DIR / "models.yaml").read_text()


def test_k8s_env_matches_compose(rendered: list[dict[str, Any]], services: dict[str, dict[str, Any]]) -> None:
    """The same variables in both deployments (compose's router with the example override applied)."""
    config_maps = by_kind(rendered, "ConfigMap")
    overrides = load_yaml(OVERRIDE_FILE)["services"]
    for name in OPENCLAW:
        (container,) = containers(by_kind(rendered, "Deployment")[name])
        k8s = {v["name"] for v in container.get("env", [])}
        for source in container.get("envFrom", []):
            k8s |= set(config_maps[source["configMapRef"]["name"]]["data"])
        compose_env = set(env_of(services[name])) | set(env_of(overrides.get(name, {})))
        assert k8s == compose_env, f"{name}: only k8s {k8s - compose_env}, only compose {compose_env - k8s}"
        assert REQUIRED_ENV[name] | COMMON_ENV <= k8s
        assert_binds_all_interfaces(name, {v["name"]: v.get("value", "") for v in container["env"]})


def test_k8s_secret_is_a_labelled_placeholder_and_redis_is_durable(rendered: list[dict[str, Any]]) -> None:
    secret = by_kind(rendered, "Secret")["openclaw-secrets"]
    assert secret["metadata"]["labels"]["openclaw/dev-placeholder"] == "true"
    assert "placeholder" in secret["stringData"]["jwt-secret"]
    redis = by_kind(rendered, "StatefulSet")["redis"]
    args = " ".join(containers(redis)[0]["args"])
    assert "--appendonly yes" in args and "--appendfsync everysec" in args
    assert redis["spec"]["volumeClaimTemplates"], "AOF needs a persistent volume"
