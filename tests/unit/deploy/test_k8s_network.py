"""NetworkPolicies, evaluated: the hops they allow between pods are exactly the architecture's, no more."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.unit.deploy._helpers import K8S_DIR, PRODUCTION, render

NAMESPACE = {"kubernetes.io/metadata.name": "openclaw"}
# docs/architecture.md: who calls whom inside the namespace, on which port.
BASE_HOPS = {
    ("gateway", "rabbitmq", 5672),
    ("gateway", "redis", 6379),
    ("gateway", "router", 50051),
    ("executor", "rabbitmq", 5672),
    ("executor", "redis", 6379),
    ("executor", "router", 50051),
    ("router", "simulator", 8090),
    ("router", "redis", 6379),
}


@dataclass
class Pod:
    """A workload's pods: labels, namespace labels, listening ports (number -> name) and an address."""

    name: str
    labels: dict[str, str]
    namespace: dict[str, str] = field(default_factory=lambda: NAMESPACE)
    ports: dict[int, str] = field(default_factory=dict)
    ip: str = "10.8.0.10"


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions with In/NotIn/Exists) against labels."""
    if selector is None:
        return True
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def peer_matches(peer: dict[str, Any], pod: Pod, policy_namespace: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(pod.ip)
        inside = address in ipaddress.ip_network(block["cidr"])
        return inside and not any(address in ipaddress.ip_network(c) for c in block.get("except", []))
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], pod.namespace):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), pod.labels)


def port_matches(rule: dict[str, Any], port: int, protocol: str, pod: Pod) -> bool:
    if "ports" not in rule:
        return True
    for spec in rule["ports"]:
        if spec.get("protocol", "TCP") != protocol:
            continue
        if "port" not in spec or spec["port"] == port or spec["port"] == pod.ports.get(port):
            return True
        if isinstance(spec["port"], int) and spec["port"] <= port <= spec.get("endPort", spec["port"]):
            return True
    return False


def allowed(policies: list[dict[str, Any]], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether src may open a connection to dst:port under the policies (both ends must allow it)."""

    def side(pod: Pod, kind: str, peer: Pod, direction: str) -> bool:
        relevant = [
            p
            for p in policies
            if pod.namespace == NAMESPACE
            and selects(p["spec"]["podSelector"], pod.labels)
            and kind in p["spec"].get("policyTypes", ["Ingress"])
        ]
        if not relevant:
            return True  # a pod no policy selects is not isolated
        for policy in relevant:
            for rule in policy["spec"].get(direction, []):
                peers = rule.get("to" if direction == "egress" else "from")
                if (not peers or any(peer_matches(x, peer, NAMESPACE) for x in peers)) and port_matches(
                    rule, port, protocol, dst
                ):
                    return True
        return False

    return side(src, "Egress", dst, "egress") and side(dst, "Ingress", src, "ingress")


# The pods the RabbitMQ Cluster Operator creates for a RabbitmqCluster: its labels and ports.
OPERATOR_RABBITMQ_PORTS = {
    5672: "amqp",
    15672: "management",
    15692: "prometheus",
    4369: "epmd",
    25672: "cluster-links",
}


def pods_of(docs: list[dict[str, Any]]) -> dict[str, Pod]:
    pods = {}
    for doc in docs:
        if doc["kind"] == "RabbitmqCluster":
            name = doc["metadata"]["name"]
            labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "rabbitmq"}
            pods[name] = Pod(name, labels, ports=dict(OPERATOR_RABBITMQ_PORTS))
            continue
        if doc["kind"] not in {"Deployment", "StatefulSet"}:
            continue
        template = doc["spec"]["template"]
        ports = {
            p["containerPort"]: p.get("name", "")
            for c in template["spec"]["containers"]
            for p in c.get("ports", [])
        }
        pods[doc["metadata"]["name"]] = Pod(
            doc["metadata"]["name"], template["metadata"]["labels"], ports=ports
        )
    return pods


def hops(docs: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = pods_of(docs)
    return {
        (src.name, dst.name, port)
        for src in pods.values()
        for dst in pods.values()
        if src is not dst
        for port in dst.ports
        if allowed(policies, src, dst, port)
    }


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(K8S_DIR)


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render(PRODUCTION)


def test_evaluator_sees_isolation_and_ports() -> None:
    """The evaluator itself: no policy allows all, a deny-all denies, a rule allows only its port and peer."""
    a = Pod("a", {"app": "a"})
    b = Pod("b", {"app": "b"}, ports={80: "http", 81: "other"})
    assert allowed([], a, b, 80)
    deny = {"spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    assert not allowed([deny], a, b, 80)
    rule = {"to": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": "http"}]}
    egress = {
        "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Egress"], "egress": [rule]}
    }
    ingress = {"spec": {"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{}]}}
    assert allowed([deny, egress, ingress], a, b, 80)
    assert not allowed([deny, egress, ingress], a, b, 81)
    assert not allowed([deny, egress], a, b, 80), "ingress to b is still denied"


def test_base_allows_exactly_the_architecture_hops(base: list[dict[str, Any]]) -> None:
    assert hops(base) == BASE_HOPS


def test_production_allows_exactly_the_architecture_hops(production: list[dict[str, Any]]) -> None:
    expected = set()
    for src, dst, port in BASE_HOPS:
        for s in {"router": ["router-blue", "router-green"], "executor": ["executor", "executor-batch"]}.get(
            src, [src]
        ):
            for d in {"router": ["router-blue", "router-green"]}.get(dst, [dst]):
                expected.add((s, d, port))
    expected |= {("router-blue", "ollama", 11434), ("router-green", "ollama", 11434)}
    assert hops(production) == expected


@pytest.mark.parametrize("which", ["base", "production"])
def test_every_pod_is_isolated_and_resolves_names(which: str, request: pytest.FixtureRequest) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    dns = Pod(
        "kube-dns", {"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"}, {53: "dns"}
    )
    stranger = Pod("stranger", {"app": "other"}, {"kubernetes.io/metadata.name": "default"}, {})
    for pod in pods_of(docs).values():
        assert allowed(policies, pod, dns, 53, "UDP") and allowed(policies, pod, dns, 53, "TCP"), pod.name
        assert not allowed(policies, pod, stranger, 8080), f"{pod.name} may call anything"
        for port in pod.ports:
            public = pod.name == "gateway" and port in {8080, 50052}
            assert allowed(policies, stranger, pod, port) == public, (
                f"{pod.name}:{port} from another namespace"
            )


def test_web_egress_is_public_addresses_only(base: list[dict[str, Any]]) -> None:
    policies = [d for d in base if d["kind"] == "NetworkPolicy"]
    pods = pods_of(base)
    web = Pod(
        "web", {}, {"kubernetes.io/metadata.name": "internet"}, {443: "https", 80: "http"}, ip="93.184.215.14"
    )
    metadata = Pod(
        "metadata", {}, {"kubernetes.io/metadata.name": "internet"}, {80: "http"}, ip="169.254.169.254"
    )
    internal = Pod("internal", {}, {"kubernetes.io/metadata.name": "internet"}, {443: "https"}, ip="10.1.2.3")
    assert allowed(policies, pods["executor"], web, 443) and allowed(policies, pods["executor"], web, 80)
    assert allowed(policies, pods["router"], web, 443) and not allowed(policies, pods["router"], web, 80)
    for name in ("gateway", "simulator", "redis", "rabbitmq"):
        assert not allowed(policies, pods[name], web, 443), name
    for name in ("executor", "router"):
        assert not allowed(policies, pods[name], metadata, 80), f"{name} reaches the cloud metadata endpoint"
        assert not allowed(policies, pods[name], internal, 443), f"{name} reaches private addresses"


def test_operator_rabbitmq_nodes_reach_each_other_and_nobody_else_does(
    production: list[dict[str, Any]],
) -> None:
    policies = [d for d in production if d["kind"] == "NetworkPolicy"]
    pods = pods_of(production)
    node, peer = pods["rabbitmq"], Pod("rabbitmq-1", pods["rabbitmq"].labels, ports=pods["rabbitmq"].ports)
    for port in (4369, 25672, 35672, 35682):
        peer.ports.setdefault(port, "")
        assert allowed(policies, node, peer, port), f"inter-node {port}"
    for name in ("gateway", "executor"):
        assert not allowed(policies, pods[name], node, 25672), name
    operator = Pod("operator", {}, {"kubernetes.io/metadata.name": "rabbitmq-system"})
    assert allowed(policies, operator, node, 15672) and not allowed(policies, operator, node, 5672)
