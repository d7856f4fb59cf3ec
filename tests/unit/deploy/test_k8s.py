"""The Kustomize base (deploy/k8s/base): strict schema validation, security, probes, scaling and references."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy._helpers import (
    COMMON_ENV,
    COMPOSE_DIR,
    K8S_DIR,
    K8S_VERSION,
    OPENCLAW,
    OVERRIDE_FILE,
    REQUIRED_ENV,
    assert_binds_all_interfaces,
    by_kind,
    containers,
    endpoints,
    env_of,
    load_yaml,
    render,
    tool,
    validate_strictly,
)

# Names the k8s base refers to but deliberately does not deploy (deploy/k8s/README.md says so).
K8S_EXTERNAL_HOSTS = {"otel-collector"}


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(K8S_DIR)


def test_kustomize_output_passes_strict_kubernetes_validation(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    validate_strictly(rendered, tmp_path)


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


def test_base_router_fits_a_development_cluster(rendered: list[dict[str, Any]]) -> None:
    """The article's profile (2 CPU / 8 Gi requested) is the production overlay's; the base stays schedulable."""
    resources = containers(by_kind(rendered, "Deployment")["router"])[0]["resources"]
    assert resources == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }


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
    assert "placeholder" in secret["stringData"]["router-admin-token"]
    (router,) = containers(by_kind(rendered, "Deployment")["router"])
    admin = next(v for v in router["env"] if v["name"] == "OPENCLAW_ROUTER_ADMIN_TOKEN")
    assert admin["valueFrom"]["secretKeyRef"] == {"name": "openclaw-secrets", "key": "router-admin-token"}
    redis = by_kind(rendered, "StatefulSet")["redis"]
    args = " ".join(containers(redis)[0]["args"])
    assert "--appendonly yes" in args and "--appendfsync everysec" in args
    assert redis["spec"]["volumeClaimTemplates"], "AOF needs a persistent volume"
