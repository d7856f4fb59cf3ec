"""Mutual TLS between the services, with real handshakes on loopback: who gets in, who is refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aio_pika.abc import AbstractRobustConnection
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr
from redis.asyncio import Redis

from openclaw import certs
from openclaw.v1 import router_pb2, router_pb2_grpc
from services.common import tls
from services.common.errors import InvalidInputError, UnavailableError
from services.common.router_client import RouterClient
from services.common.topology import Topology
from services.executor.bootstrap import build as build_executor
from services.executor.settings import ExecutorSettings
from services.gateway import GatewaySettings
from services.gateway import build as build_gateway
from services.router.bootstrap import RouterApp
from services.router.bootstrap import build as build_router
from services.router.settings import RouterSettings
from services.simulator.app import Simulator


@dataclass
class Pki:
    """Our CA and service certificates, plus the bad ones a peer must be refused with."""

    dir: Path
    ca: Path

    def files(self, name: str, ca: Path | None = None) -> tls.TlsFiles:
        return tls.load_files(self.dir / f"{name}.pem", self.dir / f"{name}.key", ca or self.ca)

    def env(self, name: str) -> dict[str, Any]:
        return {"tls_cert": self.dir / f"{name}.pem", "tls_key": self.dir / f"{name}.key", "tls_ca": self.ca}


def _save(directory: Path, name: str, cert: Any, key: Any) -> None:
    (directory / f"{name}.pem").write_bytes(certs.cert_pem(cert))
    (directory / f"{name}.key").write_bytes(certs.key_pem(key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key = certs.new_ca("test CA")
    _save(directory, "ca", ca, ca_key)
    for service in certs.SERVICES:
        _save(
            directory, service, *certs.issue(ca, ca_key, f"openclaw-{service}", certs.service_names(service))
        )
    other, other_key = certs.new_ca("another CA")
    _save(directory, "other-ca", other, other_key)
    _save(directory, "foreign", *certs.issue(other, other_key, "openclaw-gateway", ["localhost"]))
    # Router certificates our clients must refuse: from the other CA, or ours but for another name.
    _save(directory, "foreign-router", *certs.issue(other, other_key, "openclaw-router", ["localhost"]))
    _save(directory, "misnamed-router", *certs.issue(ca, ca_key, "openclaw-router", ["elsewhere"], ips=()))
    now = dt.datetime.now(dt.UTC)
    expired = certs.issue(
        ca,
        ca_key,
        "openclaw-gateway",
        ["localhost"],
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    _save(directory, "expired", *expired)
    return Pki(directory, directory / "ca.pem")


def _router_settings(sim: Simulator, **extra: Any) -> RouterSettings:
    return RouterSettings(
        listen="127.0.0.1:0",
        metrics_port=0,
        simulator_url=sim.url,
        openai_api_key=SecretStr(""),
        anthropic_api_key=SecretStr(""),
        **extra,
    )


@pytest.fixture
async def router(pki: Pki, sim: Simulator) -> AsyncIterator[RouterApp]:
    app = build_router(_router_settings(sim, **pki.env("router")), env={})
    await app.start()
    yield app
    await app.stop(0)


async def _list_models(address: str, files: tls.TlsFiles) -> list[str]:
    client = RouterClient(address, hop_name="test.router", tls=files)
    try:
        return [m.name for m in (await client.list_models()).models]
    finally:
        await client.close()


# --- the router's gRPC server ----------------------------------------------------------------------


async def test_a_service_with_a_certificate_from_our_ca_is_served(router: RouterApp, pki: Pki) -> None:
    for service in ("gateway", "executor"):
        assert await _list_models(router.address, pki.files(service))


@pytest.mark.parametrize("name", ["foreign", "expired"])
async def test_a_client_certificate_from_another_ca_or_expired_is_refused(
    router: RouterApp, pki: Pki, name: str
) -> None:
    # The client trusts our CA, so the refusal is the router's, not the client's.
    with pytest.raises(UnavailableError):
        await _list_models(router.address, pki.files(name))


async def test_a_client_without_a_certificate_is_refused(router: RouterApp, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    async with grpc.aio.secure_channel(router.address, credentials) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("name", ["foreign-router", "misnamed-router"])
async def test_our_client_refuses_a_router_from_another_ca_or_for_another_name(
    pki: Pki, sim: Simulator, name: str
) -> None:
    env = {**pki.env(name), "tls_ca": pki.ca}
    app = build_router(_router_settings(sim, **env), env={}, ops=False)
    await app.start()
    try:
        with pytest.raises(UnavailableError):
            await _list_models(app.address, pki.files("gateway"))
    finally:
        await app.stop(0)


def test_a_router_with_a_key_that_does_not_match_its_certificate_is_not_built(pki: Pki) -> None:
    env = {**pki.env("router"), "tls_key": pki.dir / "gateway.key"}
    settings = RouterSettings(listen="127.0.0.1:0", simulator_url="http://127.0.0.1:1", **env)
    with pytest.raises(InvalidInputError, match="OPENCLAW_TLS_KEY"):
        build_router(settings, env={}, ops=False)


def _handshake(port: int, pki: Pki, *, maximum: ssl.TLSVersion) -> str | None:
    """The TLS version a client with our gateway certificate negotiates with the port (h2, as gRPC does)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.maximum_version = maximum
    context.load_verify_locations(pki.ca)
    context.load_cert_chain(pki.dir / "gateway.pem", pki.dir / "gateway.key")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        return conn.version()


async def test_grpc_hops_negotiate_tls13_and_grpc_cannot_refuse_tls12(router: RouterApp, pki: Pki) -> None:
    # What docs/security.md states: two of our services agree on TLS 1.3, but grpcio has no setting to refuse
    # a TLS 1.2 peer. If a grpcio release starts refusing it, this fails and the docs should change.
    assert await asyncio.to_thread(_handshake, router.port, pki, maximum=ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert await asyncio.to_thread(_handshake, router.port, pki, maximum=ssl.TLSVersion.TLSv1_2) == "TLSv1.2"


# --- the ops HTTP servers (metrics, health) ------------------------------------------------------------


def _client_context(
    pki: Pki, *, maximum: ssl.TLSVersion | None = None, cert: str | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca)
    if maximum is not None:
        context.maximum_version = maximum
    if cert is not None:
        context.load_cert_chain(pki.dir / f"{cert}.pem", pki.dir / f"{cert}.key")
    return context


async def _healthz(port: int, context: ssl.SSLContext) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://localhost:{port}/healthz", ssl=context) as resp,
    ):
        return resp.status


async def test_the_ops_server_is_tls13_only(router: RouterApp, pki: Pki) -> None:
    port = router.metrics_port
    assert await _healthz(port, _client_context(pki)) == 200
    assert await _healthz(port, _client_context(pki, cert="executor")) == 200
    with pytest.raises(aiohttp.ClientConnectorError):
        await _healthz(port, _client_context(pki, maximum=ssl.TLSVersion.TLSv1_2))
    # A certificate is optional for probes, but one that does not chain to our CA is refused.
    with pytest.raises(aiohttp.ClientError):
        await _healthz(port, _client_context(pki, cert="foreign"))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                await resp.read()


# --- the gateway and the executor as clients of the router ---------------------------------------------


async def test_the_gateway_reaches_the_router_with_its_certificate_and_serves_grpc_over_tls(
    router: RouterApp,
    pki: Pki,
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
) -> None:
    settings = GatewaySettings(
        env="test",
        namespace=namespace,
        amqp_url=rabbitmq_url,
        redis_url=redis_url,
        router_addr=router.address,
        jwt_secret=SecretStr("integration-test-secret-0123456789abcdef"),
        http_port=0,
        grpc_port=0,
        drain_seconds=1,
        **pki.env("gateway"),
    )
    app = build_gateway(settings, topology=topology)
    await app.start()
    try:
        ready, checks = await app.readiness()
        assert checks["router"] == "ok" and ready, checks
        address = f"127.0.0.1:{app.grpc_port}"
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        # The ingress's clients authenticate with tokens: TLS without a client certificate is enough to connect.
        async with grpc.aio.secure_channel(address, credentials) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await app.stop()


async def test_the_executor_reaches_the_router_with_its_certificate(
    router: RouterApp,
    pki: Pki,
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    topology: Topology,
    tmp_path: Path,
) -> None:
    settings = ExecutorSettings(
        namespace=namespace,
        amqp_url=rabbitmq_url,
        redis_url=redis_url,
        metrics_port=0,
        storage_root=tmp_path / "storage",
        drain_seconds=1.0,
        router_addr=router.address,
        **pki.env("executor"),
    )
    app = build_executor(settings, topology=topology)
    await app.start()
    try:
        assert isinstance(app.router, RouterClient)
        assert (await app.router.list_models()).models
        assert await _healthz(app.ops_port, _client_context(pki)) == 200
        with pytest.raises(aiohttp.ClientConnectorError):
            await _healthz(app.ops_port, _client_context(pki, maximum=ssl.TLSVersion.TLSv1_2))
    finally:
        await app.stop()
