"""The container image: hadolint, pinned stages, user, health check, protoc step, and what .dockerignore keeps."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.unit.deploy._helpers import DEPLOY, ROOT, run, tool

PROTOC = (
    "python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. "
    "proto/openclaw/v1/*.proto"
)


def test_dockerfile_builds_one_non_root_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    stages: list[str] = []
    for base, alias in re.findall(r"^FROM (\S+)(?: AS (\S+))?$", text, re.M):
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        # An exact release (optionally with its digest), never a moving tag like 3.11-slim or latest.
        pinned = re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image)
        assert pinned or image in stages, image
        stages.append(alias)
    assert re.findall(r"^USER (\S+)$", text, re.M)[-1] == "10001:10001"
    assert PROTOC in text and "pip install --no-deps ." in text
    (check,) = re.findall(r"^HEALTHCHECK .*CMD \[\"(\S+)\"\]$", text, re.M)
    assert f"COPY --chmod=0755 deploy/docker/healthcheck.py {check}" in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in source.split():
            if item.startswith("--"):
                continue  # a flag (--chmod=...), not a source
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

    for kept in (
        "pyproject.toml",
        "README.md",
        "proto/openclaw/v1/router.proto",
        "openclaw/__init__.py",
        "deploy/docker/healthcheck.py",
    ):
        assert not ignored(kept), kept
    assert not ignored("services/__init__.py")
    dropped_paths = (".venv", ".git", "openclaw/v1/router_pb2.py", "openclaw/v1/router_pb2_grpc.py", "tests")
    for dropped in (*dropped_paths, "deploy/k8s/base/secret.yaml", "deploy/compose/compose.yaml"):
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


def test_hadolint_passes_and_catches_a_moving_tag(tmp_path: Path) -> None:
    run(tool("hadolint"), str(ROOT / "Dockerfile"))
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && make\n")
    done = subprocess.run(
        [tool("hadolint"), str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0 and "DL3007" in done.stdout


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    path = DEPLOY / "docker" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("openclaw_healthcheck", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def http_service() -> Iterator[tuple[int, list[int]]]:
    """A loopback HTTP server answering /healthz with the status at the head of the list."""
    status = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status[0] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], status
    server.shutdown()
    server.server_close()
    thread.join()


def test_healthcheck_asks_the_running_http_service(
    healthcheck: ModuleType, http_service: tuple[int, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, status = http_service
    monkeypatch.setenv("OPENCLAW_EXECUTOR_METRICS_PORT", str(port))
    assert healthcheck.healthy("/sbin/docker-init -- python -m services.executor") is True
    status[0] = 503
    assert healthcheck.healthy("python -m services.executor") is False
    monkeypatch.setenv("OPENCLAW_GATEWAY_HTTP_PORT", str(port))
    assert healthcheck.healthy("python -m services.gateway") is False
    assert healthcheck.healthy("python -c print(1)") is True, "a one-off command has nothing to check"


def test_healthcheck_fails_when_nothing_listens(
    healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as server:
        port = server.server_address[1]  # bound, then closed: nothing listens there afterwards
    monkeypatch.setenv("OPENCLAW_SIMULATOR_PORT", str(port))
    assert healthcheck.healthy("python -m services.simulator") is False


def test_healthcheck_uses_grpc_health_for_the_router(
    healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OPENCLAW_ROUTER_LISTEN", f"0.0.0.0:{port}")
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert healthcheck.healthy("python -m services.router") is True
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert healthcheck.healthy("python -m services.router") is False
    finally:
        server.stop(None).wait()
    assert healthcheck.healthy("python -m services.router") is False, "a router that is gone is unhealthy"
