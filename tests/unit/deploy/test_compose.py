"""The compose stack: compose-spec schema, services, mounts, health, environment and the model table."""

from __future__ import annotations

import re
from typing import Any

from tests.unit.deploy._helpers import (
    COMMON_ENV,
    COMPOSE_DIR,
    COMPOSE_FILE,
    K8S_DIR,
    OPENCLAW,
    OVERRIDE_FILE,
    REQUIRED_ENV,
    ROOT,
    assert_binds_all_interfaces,
    endpoints,
    env_of,
    listening_ports,
    load_yaml,
    mounts,
    run,
    tool,
)

# Compose services without a healthcheck, and why.
NO_HEALTHCHECK = {"otel-collector": "the image has no shell or HTTP client to run a check"}


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
    admin = env_of(services["router"])["OPENCLAW_ROUTER_ADMIN_TOKEN"]
    assert re.fullmatch(r"\$\{OPENCLAW_ROUTER_ADMIN_TOKEN:-dev-only-[\w-]+\}", admin), admin
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
