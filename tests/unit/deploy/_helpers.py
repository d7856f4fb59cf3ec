"""Paths, expectations and loaders shared by the deploy/ tests."""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
OVERRIDE_FILE = COMPOSE_DIR / "compose.override.example.yaml"
K8S_ROOT = DEPLOY / "k8s"
K8S_DIR = K8S_ROOT / "base"
PRODUCTION = K8S_ROOT / "overlays" / "production"
K8S_VERSION = "1.31.0"
METRICS_FILE = DEPLOY / "metrics.txt"
PROMETHEUS_DIR = DEPLOY / "prometheus"
BIN = Path(sys.executable).parent

OPENCLAW = ("simulator", "router", "executor", "gateway")
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
        # It listens on 0.0.0.0, where admin calls without a token are refused.
        "OPENCLAW_ROUTER_ADMIN_TOKEN",
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


def assert_binds_all_interfaces(name: str, env: dict[str, str]) -> None:
    """A process listening on loopback inside a container is unreachable from its peers and probes."""
    for key, value in env.items():
        if key.endswith("_HOST"):
            assert value == "0.0.0.0", f"{name}: {key}={value}"
        if key.endswith("_LISTEN"):
            assert value.rsplit(":", 1)[0] == "0.0.0.0", f"{name}: {key}={value}"


def exported_metrics() -> dict[str, str]:
    """Metric family name -> type, from deploy/metrics.txt."""
    families: dict[str, str] = {}
    for line in METRICS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, kind = line.split()[:2]
            assert name not in families, f"deploy/metrics.txt lists {name} twice"
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
    """Metric names an expression selects (a light parse: enough for the dashboards and rules we write)."""
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


def render(kustomization: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize` renders for a kustomization directory."""
    output = run(tool("kubectl"), "kustomize", str(kustomization)).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def validate_strictly(docs: list[dict[str, Any]], folder: Path) -> None:
    """kubernetes-validate --strict on every document (one file each, so a failure names its object)."""
    files = []
    for i, doc in enumerate(docs):
        path = folder / f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    done = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, *files)
    assert done.stdout.count(" passed ") == len(files), done.stdout


def by_kind(docs: list[dict[str, Any]], *kinds: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in kinds}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return spec
