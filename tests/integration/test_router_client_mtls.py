"""The Python SDK and the image's health check against services that require mutual TLS (real handshakes)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import SecretStr

from openclaw import certs
from openclaw.router import ModelRouter, RouterUnavailableError, TlsConfigError
from services.common import tls
from services.common.errors import InvalidInputError
from services.common.ops_server import OpsServer
from services.router.bootstrap import RouterApp
from services.router.bootstrap import build as build_router
from services.router.settings import RouterSettings
from services.simulator.app import Simulator
from services.simulator.app import start as start_simulator
from services.simulator.settings import SimulatorSettings

HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"
TLS_ENV = tls.ENV_NAMES


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make certs` writes: ca.pem and <service>.pem / <service>.key."""
    directory = tmp_path_factory.mktemp("certs")
    certs.write_dev_certs(directory)
    return directory


def use_certs(monkeypatch: pytest.MonkeyPatch, pki: Path, service: str) -> None:
    """The environment a service with mutual TLS on runs with."""
    monkeypatch.setenv("OPENCLAW_TLS_CERT", str(pki / f"{service}.pem"))
    monkeypatch.setenv("OPENCLAW_TLS_KEY", str(pki / f"{service}.key"))
    monkeypatch.setenv("OPENCLAW_TLS_CA", str(pki / "ca.pem"))


@pytest.fixture(autouse=True)
def plaintext_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TLS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def router(pki: Path) -> AsyncIterator[RouterApp]:
    sim: Simulator = await start_simulator(SimulatorSettings(host="127.0.0.1", port=0))
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_port": 0,
        "simulator_url": sim.url,
        "openai_api_key": SecretStr(""),
        "anthropic_api_key": SecretStr(""),
        "tls_required": True,
        "tls_cert": pki / "router.pem",
        "tls_key": pki / "router.key",
        "tls_ca": pki / "ca.pem",
    }
    settings = RouterSettings(**values)
    app = build_router(settings, env={})
    await app.start()
    try:
        yield app
    finally:
        await app.stop(0)
        await sim.stop()


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("openclaw_healthcheck_tls", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the SDK -------------------------------------------------------------------------------------------


async def test_the_sdk_reaches_a_tls_only_router_with_certificate_arguments(
    router: RouterApp, pki: Path
) -> None:
    def use_the_sdk() -> tuple[bool, list[str], str, str]:
        with ModelRouter(
            router.address, cert=pki / "executor.pem", key=pki / "executor.key", ca=pki / "ca.pem"
        ) as client:
            added = client.add_model(name="tls-echo", provider_model="echo", simulated=True)
            names = [m.name for m in client.list_models()]
            reply = client.chat("echo", prompt="over mutual TLS")
            return client.tls, names, added.name, reply.content

    secure, names, added, content = await asyncio.to_thread(use_the_sdk)
    assert secure and added == "tls-echo" and "tls-echo" in names
    assert "over mutual TLS" in content


async def test_the_sdk_takes_its_certificate_from_the_environment(
    router: RouterApp, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_certs(monkeypatch, pki, "gateway")

    def stream() -> str:
        with ModelRouter(router.address) as client:
            return "".join(client.chat_stream("echo", prompt="streamed over TLS"))

    assert "streamed over TLS" in await asyncio.to_thread(stream)


async def test_the_sdk_without_a_certificate_is_refused_with_a_hint(router: RouterApp) -> None:
    def plaintext() -> RouterUnavailableError:
        with ModelRouter(router.address, timeout=5) as client:
            assert not client.tls
            with pytest.raises(RouterUnavailableError) as caught:
                client.list_models()
            return caught.value

    error = await asyncio.to_thread(plaintext)
    assert "OPENCLAW_TLS_CERT" in error.message and "mutual TLS" in error.message


async def test_the_sdk_with_a_certificate_from_another_ca_is_refused(
    router: RouterApp, tmp_path: Path
) -> None:
    certs.write_dev_certs(tmp_path)  # a second, unrelated development CA

    def foreign() -> None:
        with ModelRouter(
            router.address,
            timeout=5,
            cert=tmp_path / "executor.pem",
            key=tmp_path / "executor.key",
            ca=tmp_path / "ca.pem",
        ) as client:
            client.list_models()

    with pytest.raises(RouterUnavailableError) as caught:
        await asyncio.to_thread(foreign)
    assert "OPENCLAW_TLS_CERT" not in caught.value.message, "a TLS client gets no plaintext hint"


def test_bad_tls_settings_name_the_setting(
    pki: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(TlsConfigError, match=r"^cert: cannot read .*missing\.pem"):
        ModelRouter("127.0.0.1:1", cert=tmp_path / "missing.pem", key=pki / "executor.key", ca=pki / "ca.pem")
    with pytest.raises(TlsConfigError, match=r"^key: .* is not the key of the certificate"):
        ModelRouter("127.0.0.1:1", cert=pki / "executor.pem", key=pki / "router.key", ca=pki / "ca.pem")
    use_certs(monkeypatch, pki, "executor")
    monkeypatch.setenv("OPENCLAW_TLS_CA", str(pki / "executor.key"))
    with pytest.raises(TlsConfigError, match=r"^OPENCLAW_TLS_CA: .* is not a usable PEM file"):
        ModelRouter("127.0.0.1:1")
    monkeypatch.delenv("OPENCLAW_TLS_CA")
    monkeypatch.delenv("OPENCLAW_TLS_KEY")
    with pytest.raises(TlsConfigError, match=r"^OPENCLAW_TLS_KEY, OPENCLAW_TLS_CA: required"):
        ModelRouter("127.0.0.1:1")


# --- the image's health check (deploy/docker/healthcheck.py) -------------------------------------------


async def test_the_health_check_gets_into_a_tls_only_router_only_with_its_certificate(
    router: RouterApp, pki: Path, healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENCLAW_ROUTER_LISTEN", f"0.0.0.0:{router.port}")
    command = "/sbin/docker-init -- python -m services.router"
    assert await asyncio.to_thread(healthcheck.healthy, command) is False, "plaintext must not get in"
    use_certs(monkeypatch, pki, "router")
    assert await asyncio.to_thread(healthcheck.healthy, command) is True
    monkeypatch.setenv("OPENCLAW_TLS_KEY", str(pki / "missing.key"))
    with pytest.raises(InvalidInputError, match="OPENCLAW_TLS_KEY"):
        await asyncio.to_thread(healthcheck.healthy, command)


async def test_the_health_check_speaks_https_to_a_tls_ops_port(
    pki: Path, healthcheck: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The executor's ops server as the executor builds it under mutual TLS (services/executor/bootstrap.py).
    files = tls.load_files(pki / "executor.pem", pki / "executor.key", pki / "ca.pem")
    ready = [False]

    async def readiness() -> tuple[bool, dict[str, str]]:
        return ready[0], {}

    ops = OpsServer(
        "127.0.0.1", 0, readiness, ssl_context=tls.server_context(files, require_client_cert=False)
    )
    await ops.start()
    try:
        monkeypatch.setenv("OPENCLAW_EXECUTOR_METRICS_PORT", str(ops.port))
        command = "python -m services.executor"
        assert await asyncio.to_thread(healthcheck.healthy, command) is False, "plain HTTP must fail"
        use_certs(monkeypatch, pki, "executor")
        assert await asyncio.to_thread(healthcheck.healthy, command) is True
        assert await asyncio.to_thread(healthcheck.healthy, command, "/readyz") is False
        ready[0] = True
        assert await asyncio.to_thread(healthcheck.healthy, command, "/readyz") is True
        # The gateway's HTTP port is its public ingress, never switched to TLS: the check stays plaintext.
        monkeypatch.setenv("OPENCLAW_GATEWAY_HTTP_PORT", str(ops.port))
        assert await asyncio.to_thread(healthcheck.healthy, "python -m services.gateway") is False
    finally:
        await ops.stop()
