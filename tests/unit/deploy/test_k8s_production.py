"""The production overlay: schemas, KEDA objects, blue-green router, GPU server, spot pool, sizing, secrets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy._helpers import (
    K8S_ROOT,
    PRODUCTION,
    ROOT,
    by_kind,
    containers,
    endpoints,
    render,
    validate_strictly,
)

KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Custom resources kubernetes-validate has no schema for; their structure is checked below.
CUSTOM_KINDS = KEDA_KINDS | {"RabbitmqCluster"}
COLOURS = ("blue", "green")


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(PRODUCTION)


def config_map(rendered: list[dict[str, Any]], name: str) -> dict[str, str]:
    """A generated ConfigMap's data, found by its name before kustomize's hash suffix."""
    (found,) = [
        d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(f"{name}-")
    ]
    data: dict[str, str] = found["data"]
    return data


def test_overlay_passes_strict_validation_except_custom_resources(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    kinds = {d["kind"] for d in rendered}
    assert kinds >= CUSTOM_KINDS
    validate_strictly([d for d in rendered if d["kind"] not in CUSTOM_KINDS], tmp_path)
    for doc in rendered:
        assert doc["metadata"].get("namespace", "openclaw") == "openclaw", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "openclaw", doc["metadata"]["name"]


def test_keda_objects_have_the_crd_required_fields(rendered: list[dict[str, Any]]) -> None:
    """kubernetes-validate has no KEDA schema: check what keda.sh_scaledobjects.yaml marks required."""
    deployments = by_kind(rendered, "Deployment")
    auths = by_kind(rendered, "TriggerAuthentication")
    scaled = by_kind(rendered, "ScaledObject")
    assert set(scaled) == {"executor", "executor-batch"}
    for auth in auths.values():
        assert auth["apiVersion"] == "keda.sh/v1alpha1"
        for ref in auth["spec"]["secretTargetRef"]:
            assert {"parameter", "name", "key"} <= set(ref), ref
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        assert {"scaleTargetRef", "triggers"} <= set(spec), name
        assert spec["scaleTargetRef"]["name"] in deployments, name
        assert set(spec) <= {
            "scaleTargetRef",
            "triggers",
            "minReplicaCount",
            "maxReplicaCount",
            "pollingInterval",
            "cooldownPeriod",
            "idleReplicaCount",
            "advanced",
            "fallback",
        }, name
        assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        for policy in (
            spec.get("advanced", {})
            .get("horizontalPodAutoscalerConfig", {})
            .get("behavior", {})
            .get("scaleDown", {})
            .get("policies", [])
        ):
            assert {"periodSeconds", "type", "value"} <= set(policy)
        for trigger in spec["triggers"]:
            assert {"type", "metadata"} <= set(trigger), name
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), (
                "metadata values are strings"
            )
            assert trigger["authenticationRef"]["name"] in auths


def test_executors_scale_on_the_task_queue_over_the_management_api(rendered: list[dict[str, Any]]) -> None:
    deployments = by_kind(rendered, "Deployment")
    namespace = config_map(rendered, "openclaw-env")["OPENCLAW_NAMESPACE"]
    hpas = {
        h["spec"]["scaleTargetRef"]["name"] for h in by_kind(rendered, "HorizontalPodAutoscaler").values()
    }
    for obj in by_kind(rendered, "ScaledObject").values():
        target = obj["spec"]["scaleTargetRef"]["name"]
        assert "replicas" not in deployments[target]["spec"], f"{target}: KEDA owns replicas"
        assert target not in hpas, f"{target}: two autoscalers"
        (trigger,) = obj["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "rabbitmq" and meta["mode"] == "QueueLength"
        # amqp counts only ready messages and would scale executors away while they hold tasks (FACTS.md).
        assert meta["protocol"] == "http"
        assert meta["queueName"] == f"{namespace}.tasks"
        assert int(meta["value"]) > 0
    (auth,) = by_kind(rendered, "TriggerAuthentication").values()
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host" and ref["name"] == "openclaw-secrets"
    base_secret = yaml.safe_load((K8S_ROOT / "base" / "secret.yaml").read_text())
    url = base_secret["stringData"][ref["key"]]
    assert endpoints(url) == [("rabbitmq", 15672)], "the management API, not AMQP"


def test_router_service_selects_exactly_one_colour(rendered: list[dict[str, Any]]) -> None:
    deployments = by_kind(rendered, "Deployment")
    services = by_kind(rendered, "Service")
    assert "router" not in deployments

    def selected(service: str) -> list[str]:
        selector = services[service]["spec"]["selector"]
        return [
            name
            for name, d in deployments.items()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]

    assert selected("router") in (["router-blue"], ["router-green"])
    for colour in COLOURS:
        assert selected(f"router-{colour}") == [f"router-{colour}"]
    specs = []
    for colour in COLOURS:
        spec = yaml.safe_dump(deployments[f"router-{colour}"]["spec"]).replace(colour, "COLOUR")
        specs.append(spec)
    assert specs[0] == specs[1], "the two colours differ in more than their colour"
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert set(by_kind(rendered, kind)) >= {"router-blue", "router-green"}
        assert "router" not in by_kind(rendered, kind)


def test_switch_script_flips_the_selector_only_to_a_ready_colour(tmp_path: Path) -> None:
    """Run router-switch.sh against a recording fake kubectl."""
    log = tmp_path / "calls"
    fake = tmp_path / "kubectl"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {log}\n'
        'case "$*" in\n'
        '  *"get service router"*) echo blue ;;\n'
        '  *readyReplicas*) echo "${READY:-2}" ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    script = str(K8S_ROOT / "router-switch.sh")
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}

    def switch(*args: str, ready: str = "2") -> subprocess.CompletedProcess[str]:
        log.write_text("")
        return subprocess.run(
            ["bash", script, *args], env={**env, "READY": ready}, capture_output=True, text=True, timeout=30
        )

    done = switch("green")
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert any("rollout status deployment/router-green" in c for c in calls)
    assert calls[-1] == (
        '-n openclaw patch service router --type merge -p {"spec":{"selector":{"openclaw/color":"green"}}}'
    )
    assert "Roll back" in done.stdout
    refused = switch("green", ready="0")
    assert refused.returncode == 1 and not any("patch" in c for c in log.read_text().splitlines())
    assert switch("blue").returncode == 0 and not any("patch" in c for c in log.read_text().splitlines())
    assert switch("purple").returncode == 2


def test_router_and_gpu_server_use_the_article_profile(rendered: list[dict[str, Any]]) -> None:
    profile = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}}
    deployments = by_kind(rendered, "Deployment")
    for colour in COLOURS:
        assert containers(deployments[f"router-{colour}"])[0]["resources"] == profile
    ollama = containers(deployments["ollama"])[0]["resources"]
    assert ollama["requests"] == profile["requests"]
    assert ollama["limits"] == {**profile["limits"], "nvidia.com/gpu": 1}


def test_gpu_model_server_lands_on_t4_nodes_and_serves_llama(rendered: list[dict[str, Any]]) -> None:
    pod = by_kind(rendered, "Deployment")["ollama"]["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {"matchExpressions": [{"key": "accelerator", "operator": "In", "values": ["nvidia-tesla-t4"]}]}
    ]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    table = yaml.safe_load(config_map(rendered, "openclaw-models")["models.yaml"])
    models = {m["name"]: m for m in table["models"]}
    service_ports = {p["port"] for p in by_kind(rendered, "Service")["ollama"]["spec"]["ports"]}
    assert [(h, p in service_ports) for h, p in endpoints(models["llama-3"]["endpoint"])] == [
        ("ollama", True)
    ]


def test_batch_pool_runs_only_on_spot_nodes(rendered: list[dict[str, Any]]) -> None:
    deployments = by_kind(rendered, "Deployment")
    batch = deployments["executor-batch"]["spec"]["template"]["spec"]
    terms = batch["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    keys = {t["matchExpressions"][0]["key"] for t in terms}
    assert {
        "cloud.google.com/gke-spot",
        "kubernetes.azure.com/scalesetpriority",
        "karpenter.sh/capacity-type",
    } <= keys
    assert {t["key"] for t in batch["tolerations"]} <= keys
    assert containers(deployments["executor-batch"])[0]["command"] == ["python", "-m", "services.executor"]
    standard = deployments["executor"]["spec"]["template"]["spec"]
    assert "tolerations" not in standard and "affinity" not in standard, (
        "the standard pool stays on regular nodes"
    )
    labels = deployments["executor-batch"]["spec"]["template"]["metadata"]["labels"]
    assert not deployments["executor"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_stateless_services_spread_over_zones(rendered: list[dict[str, Any]]) -> None:
    for name in ("gateway", "executor", "router-blue", "router-green"):
        spread = by_kind(rendered, "Deployment")[name]["spec"]["template"]["spec"][
            "topologySpreadConstraints"
        ]
        zone = [c for c in spread if c["topologyKey"] == "topology.kubernetes.io/zone"]
        assert zone and zone[0]["whenUnsatisfiable"] == "DoNotSchedule", name


def test_no_development_secret_and_every_key_is_documented(rendered: list[dict[str, Any]]) -> None:
    assert not by_kind(rendered, "Secret"), "production Secrets are created outside the repository"
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    keys = set()
    for doc in rendered:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            for container in containers(doc):
                for var in container.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == "openclaw-secrets"
                        keys.add(ref["key"])
        elif doc["kind"] == "TriggerAuthentication":
            keys |= {ref["key"] for ref in doc["spec"]["secretTargetRef"]}
    assert keys
    for key in keys:
        assert f"`{key}`" in runbook, f"docs/runbook.md does not say what {key} holds"


def test_rabbitmq_is_an_operator_cluster_over_three_zones(rendered: list[dict[str, Any]]) -> None:
    assert "rabbitmq" not in by_kind(rendered, "StatefulSet", "Service"), "the operator creates these"
    (cluster,) = by_kind(rendered, "RabbitmqCluster").values()
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    spec = cluster["spec"]
    base_secret = yaml.safe_load((K8S_ROOT / "base" / "secret.yaml").read_text())
    host = endpoints(base_secret["stringData"]["amqp-url"])[0][0]
    assert cluster["metadata"]["name"] == host, "the operator's Service must keep the name the URLs use"
    assert spec["replicas"] >= 3 and spec["replicas"] % 2 == 1, "quorum queues need an odd majority"
    assert int(spec["image"].split(":")[1].split(".")[0]) >= 4, (
        "4.x: peer discovery without the Kubernetes API"
    )
    template = spec["override"]["statefulSet"]["spec"]["template"]["spec"]
    (zone,) = template["topologySpreadConstraints"]
    assert (
        zone["topologyKey"] == "topology.kubernetes.io/zone" and zone["whenUnsatisfiable"] == "DoNotSchedule"
    )
    # What Pod Security "restricted" (enforced on the namespace) checks, on the pod and every container.
    assert template["securityContext"]["runAsNonRoot"] is True
    assert template["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for container in template["initContainers"] + template["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, container["name"]
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], container["name"]
    assert {c["name"] for c in template["containers"]} == {"rabbitmq"}
    assert {c["name"] for c in template["initContainers"]} == {"setup-container"}
