"""HTTP/2 on the gateway: h2c and h2 over TLS 1.3 (TLS 1.2 refused), graceful drain, one engine for all protocols."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import grpc
import httpx
import pytest
import websockets
from aio_pika.abc import AbstractRobustConnection
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError
from redis.asyncio import Redis

from bench.gateway import self_signed
from openclaw.v1 import gateway_pb2, gateway_pb2_grpc, tasks_pb2
from services.common.topology import Topology
from services.executor.bootstrap import build as build_executor
from services.executor.settings import ExecutorSettings
from services.gateway import GatewayApp, GatewaySettings, build
from services.gateway.metrics import REQUESTS
from tests.integration.test_gateway import SECRET, WORKFLOW, _auth, _settings, router_addr  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


@pytest.fixture
async def gateway(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,  # noqa: F811
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
    tls_files: tuple[Path, Path],
) -> AsyncIterator[GatewayApp]:
    cert, key = tls_files
    settings = _settings(
        namespace,
        rabbitmq_url,
        redis_url,
        router_addr,
        http2_port=0,
        tls_port=0,
        tls_cert_file=cert,
        tls_key_file=key,
    )
    app = build(settings, topology=topology)
    await app.start()
    yield app
    await app.stop()


def _client_context(cert: Path, **versions: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    for name, version in versions.items():
        setattr(context, name, version)
    return context


async def test_h2c_with_prior_knowledge_serves_the_task_api(gateway: GatewayApp) -> None:
    before = REQUESTS.labels("http/2")._value.get()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http2_port}", http1=False, http2=True
    ) as client:
        submitted = await client.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=_auth())
        assert submitted.http_version == "HTTP/2"
        assert submitted.status_code == 202, submitted.text
        task = submitted.json()
        read = await client.get(f"/v1/tasks/{task['id']}", headers=_auth())
        assert read.http_version == "HTTP/2"
        assert read.json()["id"] == task["id"]
        other = await client.get(f"/v1/tasks/{task['id']}", headers=_auth("tenant-b"))
        assert other.status_code == 404
    assert REQUESTS.labels("http/2")._value.get() - before == 3


async def test_h2_over_tls13(gateway: GatewayApp, tls_files: tuple[Path, Path]) -> None:
    context = _client_context(tls_files[0])
    async with httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{gateway.tls_port}", http2=True, verify=context
    ) as client:
        response = await client.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=_auth())
        assert response.status_code == 202, response.text
        assert response.http_version == "HTTP/2"
        tls = response.extensions["network_stream"].get_extra_info("ssl_object")
        assert tls.version() == "TLSv1.3"


async def test_tls12_is_refused(gateway: GatewayApp, tls_files: tuple[Path, Path]) -> None:
    context = _client_context(tls_files[0], maximum_version=ssl.TLSVersion.TLSv1_2)
    # The server aborts the handshake: an alert (SSLError) or a reset, depending on timing.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await asyncio.open_connection("127.0.0.1", gateway.tls_port, ssl=context)
    # The same client offering TLS 1.3 gets in: the refusal is about the version, not the certificate.
    _, writer = await asyncio.open_connection(
        "127.0.0.1", gateway.tls_port, ssl=_client_context(tls_files[0])
    )
    writer.close()


async def test_http11_still_served_on_the_main_port(gateway: GatewayApp) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.http_port}") as client:
        response = await client.get("/healthz")
    assert response.http_version == "HTTP/1.1"
    assert response.status_code == 200


async def test_drain_finishes_an_in_flight_h2_request_then_refuses(gateway: GatewayApp) -> None:
    # curl, not httpx: python-h2 fails an in-flight stream when a graceful GOAWAY is followed by a PING
    # (python-hyper/h2#1199), which is how granian (hyper) starts a graceful shutdown.
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{gateway.http2_port}", http1=False, http2=True
    ) as client:
        task = (await client.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=_auth())).json()
    counter = REQUESTS.labels("http/2")
    seen = counter._value.get()
    # No executor runs: the long-poll waits its full second, and stop() begins while it is in flight.
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--http2-prior-knowledge", "-H", f"Authorization: {_auth()['Authorization']}",
        "-w", "\n%{http_code} %{http_version}",
        f"http://127.0.0.1:{gateway.http2_port}/v1/tasks/{task['id']}?wait=1",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    while counter._value.get() == seen:  # noqa: ASYNC110 (the server counts the request on arrival)
        await asyncio.sleep(0.01)
    port = gateway.http2_port
    await gateway.stop()
    out, _ = await curl.communicate()
    body, status = out.decode().rsplit("\n", 1)
    assert status == "200 2"
    assert json.loads(body)["status"] == "queued"
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_second_gateway_on_the_same_h2c_port_fails_to_start(
    gateway: GatewayApp, namespace: str, rabbitmq_url: str, redis_url: str, topology: Topology
) -> None:
    settings = _settings(
        namespace, rabbitmq_url, redis_url, gateway.settings.router_addr, http2_port=gateway.http2_port
    )
    second = build(settings, topology=topology)
    with pytest.raises(OSError, match=r"cannot listen for HTTP/2 \(h2c\)"):
        await second.start()
    # The first one is untouched.
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        response = await client.get(f"http://127.0.0.1:{gateway.http2_port}/healthz")
    assert response.status_code == 200


def test_tls_port_without_certificate_is_refused_naming_the_settings() -> None:
    with pytest.raises(ValidationError, match="OPENCLAW_GATEWAY_TLS_CERT_FILE"):
        GatewaySettings(env="test", jwt_secret=SECRET, tls_port=8443)  # type: ignore[arg-type]


# --- one engine behind every protocol ----------------------------------------------------------------------


@pytest.fixture
async def platform(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,  # noqa: F811
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
    tls_files: tuple[Path, Path],
    tmp_path: Path,
) -> AsyncIterator[GatewayApp]:
    """Gateway (every protocol on), executor and router in-process over the real transports."""
    cert, key = tls_files
    settings = _settings(
        namespace,
        rabbitmq_url,
        redis_url,
        router_addr,
        http2_port=0,
        tls_port=0,
        tls_cert_file=cert,
        tls_key_file=key,
        mqtt_url="mqtt://127.0.0.1:1883",
        mqtt_share_group=f"g{namespace}",
        mqtt_topic_prefix=namespace,
    )
    gateway = build(settings, topology=topology)
    executor = build_executor(
        ExecutorSettings(
            namespace=namespace,
            amqp_url=rabbitmq_url,
            redis_url=redis_url,
            metrics_port=0,
            storage_root=tmp_path / "storage",
            drain_seconds=2.0,
            router_addr=router_addr,
        ),
        topology=topology,
    )
    await gateway.start()
    await executor.start()
    yield gateway
    await gateway.stop()
    await executor.stop()


async def _result_over_http(base: str, **client: Any) -> Any:
    async with httpx.AsyncClient(base_url=base, **client) as http:
        task = (await http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=_auth())).json()
        done = (await http.get(f"/v1/tasks/{task['id']}?wait=30", headers=_auth())).json()
        return done["status"], done["result"]


async def _result_over_websocket(port: int) -> Any:
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/ws", additional_headers=_auth()) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "submit", "id": "s", "task": {"workflow": WORKFLOW}}))
        task_id = json.loads(await ws.recv())["task"]["id"]
        await ws.send(json.dumps({"type": "get", "id": "g", "task_id": task_id, "wait": 30}))
        done = json.loads(await ws.recv())["task"]
        return done["status"], done["result"]


async def _result_over_mqtt(prefix: str) -> Any:
    async with aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5) as mqtt:
        reply_to = f"{prefix}-replies/one-engine"
        await mqtt.subscribe(reply_to, qos=1)

        async def ask(command: str, doc: dict[str, Any]) -> Any:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = reply_to
            props.CorrelationData = command.encode()
            props.UserProperty = [("authorization", _auth()["Authorization"])]
            await mqtt.publish(f"{prefix}/tenant-a/tasks/{command}", json.dumps(doc), qos=1, properties=props)
            async for message in mqtt.messages:
                return json.loads(bytes(message.payload))["task"]

        task = await ask("submit", {"task": {"workflow": WORKFLOW}})
        done = await ask("get", {"task_id": task["id"], "wait": 30})
        return done["status"], done["result"]


async def _result_over_grpc(port: int) -> Any:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gateway_pb2_grpc.TaskServiceStub(channel)
        md = [("authorization", _auth()["Authorization"])]
        task = await stub.Submit(
            gateway_pb2.SubmitTaskRequest(workflow_json=json.dumps(WORKFLOW)), metadata=md
        )
        async for _ in stub.Watch(gateway_pb2.WatchTaskRequest(task_id=task.id), metadata=md):
            pass  # the stream ends with the task's terminal event
        done = await stub.Get(gateway_pb2.GetTaskRequest(task_id=task.id), metadata=md)
        status = tasks_pb2.TaskStatus.Name(done.status).removeprefix("TASK_STATUS_").lower()
        return status, json.loads(done.result_json)


async def test_one_engine_behind_every_protocol(platform: GatewayApp, tls_files: tuple[Path, Path]) -> None:
    results = {
        "http/1.1": await _result_over_http(f"http://127.0.0.1:{platform.http_port}"),
        "h2c": await _result_over_http(f"http://127.0.0.1:{platform.http2_port}", http1=False, http2=True),
        "h2+tls1.3": await _result_over_http(
            f"https://127.0.0.1:{platform.tls_port}", http2=True, verify=_client_context(tls_files[0])
        ),
        "websocket": await _result_over_websocket(platform.http_port),
        "mqtt": await _result_over_mqtt(platform.settings.mqtt_topic_prefix),
        "grpc": await _result_over_grpc(platform.grpc_port),
    }
    expected = ("succeeded", 1)  # WORKFLOW picks "a" from {"a": 1}
    assert results == dict.fromkeys(results, expected)
