"""The mutual TLS component (deploy/k8s/components/mtls) on the base and on production: schemas, files, probes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy._helpers import (
    K8S_DIR,
    K8S_ROOT,
    PRODUCTION,
    by_kind,
    containers,
    run,
    tool,
    validate_strictly,
)

COMPONENT = K8S_ROOT / "components" / "mtls"
# The ops port each workload's probes must use under TLS (the gRPC port wants a client certificate).
OPS_PORT = {"router": 9102, "executor": 9103}
SECURED = ("router", "executor", "gateway")


def render_with_component(tmp_path: Path, overlay: Path) -> list[dict[str, Any]]:
    """`overlay` plus the component, through a throwaway kustomization (kustomize wants relative paths)."""
    folder = tmp_path / "with-mtls"
    folder.mkdir()
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(overlay, folder)],
                "components": [os.path.relpath(COMPONENT, folder)],
            }
        )
    )
    output = run(
        tool("kubectl"), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(folder)
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


@pytest.fixture(scope="module", params=["base", "production"])
def rendered(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    overlay = K8S_DIR if request.param == "base" else PRODUCTION
    return render_with_component(tmp_path_factory.mktemp(request.param), overlay)


def workloads_of(rendered: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    """The Deployments running `service` (router-blue and router-green, executor-batch...)."""
    found = [w for name, w in by_kind(rendered, "Deployment").items() if name.split("-")[0] == service]
    assert found, service
    return found


def test_with_mtls_the_manifests_pass_strict_validation(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    plain = [
        d
        for d in rendered
        if d["apiVersion"].split("/")[0]
        in {"v1", "apps", "policy", "autoscaling", "networking.k8s.io", "batch"}
    ]
    validate_strictly(plain, tmp_path)


def test_each_service_reads_its_certificate_from_its_secret(rendered: list[dict[str, Any]]) -> None:
    for service in SECURED:
        for workload in workloads_of(rendered, service):
            (container,) = containers(workload)
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["OPENCLAW_TLS_REQUIRED"] == "true", workload["metadata"]["name"]
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
            assert volumes["tls"]["secret"]["secretName"] == f"openclaw-tls-{service}"
            for variable in ("OPENCLAW_TLS_CERT", "OPENCLAW_TLS_KEY", "OPENCLAW_TLS_CA"):
                assert Path(env[variable]).parent == Path(mounts["tls"]), variable


def test_probes_move_off_the_client_certificate_port_to_https_ops_ports(
    rendered: list[dict[str, Any]],
) -> None:
    # Kubelet's gRPC probes are plaintext without a client certificate: under mutual TLS they would always fail.
    for service, port in OPS_PORT.items():
        for workload in workloads_of(rendered, service):
            (container,) = containers(workload)
            named = {p["name"]: p["containerPort"] for p in container["ports"]}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe not in container:
                    assert probe == "startupProbe", f"{workload['metadata']['name']}: {probe}"
                    continue
                spec = container[probe]
                assert set(spec) & {"grpc", "exec", "tcpSocket"} == set(), (
                    f"{workload['metadata']['name']} {probe}"
                )
                assert spec["httpGet"]["scheme"] == "HTTPS"
                assert named.get(spec["httpGet"]["port"], spec["httpGet"]["port"]) == port
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert workload["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"] == "https"
