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
K8S_DIR = DEPLOY / "k8s"
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
