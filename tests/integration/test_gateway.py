"""The gateway in-process on port 0 (HTTP and gRPC) against the real RabbitMQ, Redis and a real gRPC router."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiohttp
import grpc
import jwt
import openai
import pytest
from aio_pika.abc import AbstractRobustConnection
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pydantic import SecretStr
from redis.asyncio import Redis

from openclaw.v1 import gateway_pb2, gateway_pb2_grpc, tasks_pb2
from services.common.errors import UnavailableError
from services.common.taskstore import TaskStore
from services.common.topology import Topology
from services.gateway import GatewayApp, GatewaySettings, build, mint_token
from services.router.bootstrap import build as build_router
from services.router.settings import RouterSettings
from services.simulator.app import start as start_simulator
from services.simulator.settings import SimulatorSettings

pytestmark = pytest.mark.integration

SECRET = "integration-test-secret-0123456789abcdef"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
WORKFLOW = {
    "name": "reshape",
    "steps": [{"id": "pick", "type": "json_transform", "params": {"expression": "a", "input": {"a": 1}}}],
}


# --- the real router in front of the real provider simulator, in-process ---------------------------------

MODEL = "gpt-4-mini"  # served by the simulator in the router's default model table


@pytest.fixture
async def router_addr() -> AsyncIterator[str]:
    simulator = await start_simulator(SimulatorSettings(host="127.0.0.1", port=0))
    settings = RouterSettings(
        listen="127.0.0.1:0",
        simulator_url=simulator.url,
        openai_api_key=SecretStr(""),
        anthropic_api_key=SecretStr(""),
    )  # type: ignore[call-arg]
    router = build_router(settings, env={}, ops=False)
    await router.start()
    yield router.address
    await router.stop(0)
    await simulator.stop()


# --- the gateway and its clients -------------------------------------------------------------------------


def _settings(
    namespace: str, rabbitmq_url: str, redis_url: str, router_addr: str, **extra: Any
) -> GatewaySettings:
    return GatewaySettings(
        env="test",
        namespace=namespace,
        amqp_url=rabbitmq_url,
        redis_url=redis_url,
        router_addr=router_addr,
        jwt_secret=SecretStr(SECRET),
        http_port=0,
        grpc_port=0,
        max_body_bytes=64 * 1024,
        drain_seconds=2,
        **extra,
    )


@pytest.fixture
async def gateway(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
) -> AsyncIterator[GatewayApp]:
    app = build(_settings(namespace, rabbitmq_url, redis_url, router_addr), topology=topology)
    await app.start()
    yield app
    await app.stop()


@pytest.fixture
async def http(gateway: GatewayApp) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as session:
        yield session


def _auth(tenant: str = "tenant-a") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, tenant=tenant)}"}


async def _submit(http: aiohttp.ClientSession, tenant: str = "tenant-a", **headers: str) -> dict[str, Any]:
    async with http.post(
        "/v1/tasks", json={"workflow": WORKFLOW}, headers={**_auth(tenant), **headers}
    ) as resp:
        assert resp.status == 202, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def _queue(amqp: AbstractRobustConnection, topology: Topology) -> aio_pika.abc.AbstractQueue:
    channel = await amqp.channel()
    return await channel.get_queue(topology.task_queue, ensure=True)


# --- submit ----------------------------------------------------------------------------------------------


async def test_submit_is_queued_with_envelope_and_trace_context(
    http: aiohttp.ClientSession, amqp: AbstractRobustConnection, topology: Topology
) -> None:
    headers = {**_auth(), "traceparent": TRACEPARENT}
    async with http.post(
        "/v1/tasks", json={"workflow": WORKFLOW, "deadline_seconds": 60}, headers=headers
    ) as resp:
        assert resp.status == 202
        body = await resp.json()
        assert TRACE_ID in resp.headers["traceparent"]
        assert resp.headers["x-trace-id"] == TRACE_ID
        assert resp.headers["Location"] == f"/v1/tasks/{body['id']}"
    assert body["status"] == "queued"
    assert body["trace_id"] == TRACE_ID
    assert body["name"] == "reshape"
    assert body["links"]["events"] == f"/v1/tasks/{body['id']}/events"

    message = await (await _queue(amqp, topology)).get(timeout=5, no_ack=True)
    env = tasks_pb2.TaskEnvelope.FromString(message.body)
    assert (env.task_id, env.tenant, env.type, env.attempt, env.max_attempts) == (
        body["id"],
        "tenant-a",
        "workflow.run",
        1,
        3,
    )
    assert json.loads(env.workflow_json) == WORKFLOW
    assert env.deadline_unix_ms > env.created_unix_ms
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert TRACE_ID in str(message.headers["traceparent"])
    assert message.headers["x-openclaw-tenant"] == "tenant-a"


async def test_submit_by_template_resolves_the_workflow(
    http: aiohttp.ClientSession, amqp: AbstractRobustConnection, topology: Topology
) -> None:
    doc = {"template": "json-extract", "inputs": {"url": "https://example.com/data.json"}}
    async with http.post("/v1/tasks", json=doc, headers=_auth()) as resp:
        assert resp.status == 202, await resp.text()
        body = await resp.json()
    message = await (await _queue(amqp, topology)).get(timeout=5, no_ack=True)
    env = tasks_pb2.TaskEnvelope.FromString(message.body)
    assert env.task_id == body["id"]
    assert env.template == "json-extract"
    assert json.loads(env.inputs_json) == doc["inputs"]
    assert json.loads(env.workflow_json)["name"] == "json-extract"


async def test_idempotent_resubmit_returns_the_same_task_and_publishes_nothing(
    http: aiohttp.ClientSession, amqp: AbstractRobustConnection, topology: Topology
) -> None:
    first = await _submit(http, **{"Idempotency-Key": "order-42"})
    async with http.post(
        "/v1/tasks", json={"workflow": WORKFLOW}, headers={**_auth(), "Idempotency-Key": "order-42"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Idempotent-Replayed"] == "true"
        again = await resp.json()
    assert again["id"] == first["id"]
    queue = await _queue(amqp, topology)
    assert (await queue.get(timeout=5, no_ack=True)).message_id == first["id"]
    assert await queue.get(no_ack=True, fail=False) is None
    # The key is per tenant: another tenant's submit with it is a different task.
    other = await _submit(http, tenant="tenant-b", **{"Idempotency-Key": "order-42"})
    assert other["id"] != first["id"]


class _FailingOnce:
    """A publisher whose first publish fails as an unreachable amqp's would."""

    def __init__(self) -> None:
        self.calls = 0

    async def publish(self, env: tasks_pb2.TaskEnvelope, headers: dict[str, Any] | None = None) -> None:
        self.calls += 1
        if self.calls == 1:
            raise UnavailableError("RabbitMQ did not confirm the publish within 5s")


async def test_failed_publish_is_503_and_frees_the_idempotency_key(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
) -> None:
    publisher = _FailingOnce()
    app = build(
        _settings(namespace, rabbitmq_url, redis_url, router_addr), topology=topology, publisher=publisher
    )
    await app.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
            headers = {**_auth(), "Idempotency-Key": "retry-me"}
            async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as resp:
                assert resp.status == 503
                assert int(resp.headers["Retry-After"]) >= 1
                assert (await resp.json())["error"]["code"] == "unavailable"
            async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as resp:
                assert resp.status == 202
    finally:
        await app.stop()
    assert publisher.calls == 2


# --- bad input -------------------------------------------------------------------------------------------


async def test_missing_malformed_and_expired_tokens_are_401(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/tasks/abc") as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await resp.json())["error"]["code"] == "unauthenticated"
    async with http.get("/v1/tasks/abc", headers={"Authorization": "Bearer not.a.jwt"}) as resp:
        assert resp.status == 401
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    now = int(time.time())
    expired = jwt.encode(
        {"iss": "openclaw", "aud": "openclaw-api", "tenant": "tenant-a", "exp": now - 120},
        SECRET,
        algorithm="HS256",
    )
    async with http.post(
        "/v1/tasks", json={"workflow": WORKFLOW}, headers={"Authorization": f"Bearer {expired}"}
    ) as resp:
        assert resp.status == 401
        assert "expired" in resp.headers["WWW-Authenticate"]
        assert "expired" in (await resp.json())["error"]["message"]


async def test_another_tenants_task_is_not_found(http: aiohttp.ClientSession) -> None:
    task = await _submit(http, tenant="tenant-a")
    path = f"/v1/tasks/{task['id']}"
    other = _auth("tenant-b")
    for method, url in [
        ("GET", path),
        ("POST", f"{path}/cancel"),
        ("DELETE", path),
        ("GET", f"{path}/events"),
    ]:
        async with http.request(method, url, headers=other) as resp:
            assert resp.status == 404, (method, url)
            assert task["id"] in (await resp.json())["error"]["message"]
    async with http.get(path, headers=_auth("tenant-a")) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "queued"


async def test_malformed_json_is_400_naming_the_parse_error(http: aiohttp.ClientSession) -> None:
    headers = {**_auth(), "Content-Type": "application/json"}
    async with http.post("/v1/tasks", data=b'{"workflow": {"steps": [}', headers=headers) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "invalid_input"
    assert "malformed JSON" in error["message"] and "column" in error["message"]


async def test_unknown_step_type_is_400_naming_it(http: aiohttp.ClientSession) -> None:
    doc = {"workflow": {"name": "bad", "steps": [{"type": "teleport", "params": {}}]}}
    async with http.post("/v1/tasks", json=doc, headers=_auth()) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert "teleport" in error["message"]
    assert "steps[0].type" in error["message"]


async def test_unknown_template_is_404_and_neither_workflow_nor_template_is_400(
    http: aiohttp.ClientSession,
) -> None:
    async with http.post("/v1/tasks", json={"template": "no-such-template"}, headers=_auth()) as resp:
        assert resp.status == 404
        assert "no-such-template" in (await resp.json())["error"]["message"]
    async with http.post("/v1/tasks", json={"inputs": {}}, headers=_auth()) as resp:
        assert resp.status == 400
    async with http.post(
        "/v1/tasks", json={"template": "json-extract", "inputs": {}}, headers=_auth()
    ) as resp:
        assert resp.status == 400
        assert "inputs.url" in (await resp.json())["error"]["message"]


async def test_oversized_body_is_413_with_or_without_content_length(http: aiohttp.ClientSession) -> None:
    big = json.dumps({"workflow": WORKFLOW, "inputs": {"blob": "x" * 100_000}}).encode()
    async with http.post("/v1/tasks", data=big, headers=_auth()) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["code"] == "payload_too_large"

    async def chunked() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    async with http.post("/v1/tasks", data=chunked(), headers=_auth()) as resp:
        assert resp.status == 413


async def test_unknown_task_is_404_naming_it(http: aiohttp.ClientSession) -> None:
    async with http.get("/v1/tasks/nosuchtask", headers=_auth()) as resp:
        assert resp.status == 404
        assert "nosuchtask" in (await resp.json())["error"]["message"]
    async with http.get("/v1/tasks/nosuchtask", params={"wait": "60"}, headers=_auth()) as resp:
        assert resp.status == 404  # at once: there is nothing to wait for
    async with http.get("/v1/nowhere", headers=_auth()) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    async with http.put("/v1/tasks", headers=_auth()) as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]


async def test_redis_down_is_503_with_retry_after(
    namespace: str, rabbitmq_url: str, router_addr: str, topology: Topology, amqp: AbstractRobustConnection
) -> None:
    app = build(_settings(namespace, rabbitmq_url, "redis://127.0.0.1:1/0", router_addr), topology=topology)
    await app.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
            async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=_auth()) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert "Redis" in (await resp.json())["error"]["message"]
            async with http.get("/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["checks"]["redis"].startswith("error")
    finally:
        await app.stop()


# --- cancel, long-poll, events ---------------------------------------------------------------------------


async def test_cancel_of_a_queued_task_cancels_it(http: aiohttp.ClientSession) -> None:
    task = await _submit(http)
    async with http.post(f"/v1/tasks/{task['id']}/cancel", headers=_auth()) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "cancelled"
    assert body["cancel_requested"] is True
    other = await _submit(http)
    async with http.delete(f"/v1/tasks/{other['id']}", headers=_auth()) as resp:
        assert (await resp.json())["status"] == "cancelled"


async def test_long_poll_returns_when_the_task_ends(
    http: aiohttp.ClientSession, redis: Redis, namespace: str
) -> None:
    task = await _submit(http)
    url = f"/v1/tasks/{task['id']}"
    async with http.get(url, params={"wait": "0.2"}, headers=_auth()) as resp:
        assert (await resp.json())["status"] == "queued"  # the wait elapsed

    async def poll() -> dict[str, Any]:
        async with http.get(url, params={"wait": "30", "steps": "true"}, headers=_auth()) as resp:
            body: dict[str, Any] = await resp.json()
            return body

    waiting = asyncio.create_task(poll())
    store = TaskStore(redis, namespace)
    await store.transition("tenant-a", task["id"], "running", "task.started")
    await store.checkpoint("tenant-a", task["id"], "pick", {"status": "succeeded", "output": 1})
    await store.transition(
        "tenant-a", task["id"], "succeeded", "task.succeeded", fields={"result": json.dumps({"answer": 1})}
    )
    body = await asyncio.wait_for(waiting, 30)
    assert body["status"] == "succeeded"
    assert body["result"] == {"answer": 1}
    assert body["steps"]["pick"]["status"] == "succeeded"

    async with http.get(url, params={"wait": "61"}, headers=_auth()) as resp:
        assert resp.status == 400


async def _read_sse(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, str]]:
    """Parse a text/event-stream into events (comment lines skipped)."""
    event: dict[str, str] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            event[field] = value


async def test_sse_streams_events_until_the_terminal_one_and_resumes(
    http: aiohttp.ClientSession, redis: Redis, namespace: str
) -> None:
    task = await _submit(http)
    url = f"/v1/tasks/{task['id']}/events"
    store = TaskStore(redis, namespace)
    seen: list[dict[str, str]] = []
    async with http.get(url, headers=_auth()) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = _read_sse(resp)
        seen.append(await anext(events))
        assert seen[0]["event"] == "task.queued"
        await store.transition("tenant-a", task["id"], "running", "task.started")
        await store.checkpoint("tenant-a", task["id"], "pick", {"status": "succeeded", "output": {"v": 1}})
        await store.transition("tenant-a", task["id"], "succeeded", "task.succeeded")
        seen += [event async for event in events]  # ends by itself after the terminal event
    assert [e["event"] for e in seen] == ["task.queued", "task.started", "step.completed", "task.succeeded"]
    assert json.loads(seen[2]["data"])["step_id"] == "pick"
    assert json.loads(seen[3]["data"])["status"] == "succeeded"

    resume = {**_auth(), "Last-Event-ID": seen[1]["id"]}
    async with http.get(url, headers=resume) as resp:
        again = [event async for event in _read_sse(resp)]
    assert [e["event"] for e in again] == ["step.completed", "task.succeeded"]
    assert [e["id"] for e in again] == [seen[2]["id"], seen[3]["id"]]


async def test_sse_sends_heartbeats_while_nothing_happens(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
) -> None:
    app = build(
        _settings(namespace, rabbitmq_url, redis_url, router_addr), topology=topology, sse_heartbeat_s=0.2
    )
    await app.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
            task = await _submit(http)
            async with http.get(f"/v1/tasks/{task['id']}/events", headers=_auth()) as resp:
                lines = []
                while b": heartbeat\n" not in lines:
                    lines.append(await resp.content.readline())
            assert b"event: task.queued\n" in lines
    finally:
        await app.stop()


async def test_router_down_is_503_for_chat_but_tasks_stay_ready(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
) -> None:
    app = build(_settings(namespace, rabbitmq_url, redis_url, "127.0.0.1:1"), topology=topology)
    await app.start()
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            async with http.post("/v1/chat/completions", json=chat, headers=_auth()) as resp:
                assert resp.status == 503
                assert int(resp.headers["Retry-After"]) >= 1
                error = (await resp.json())["error"]
                assert error["type"] == "server_error" and error["message"]
            async with http.post(
                "/v1/chat/completions", json={**chat, "stream": True}, headers=_auth()
            ) as resp:
                assert resp.status == 503
            # The router is reported, but a gateway whose task API works stays in the Service.
            async with http.get("/readyz") as resp:
                assert resp.status == 200
                checks = (await resp.json())["checks"]
            assert checks["redis"] == checks["rabbitmq"] == "ok"
            assert checks["router"].startswith("error")
            # Tasks do not need the router: submitting still works.
            await _submit(http)
    finally:
        await app.stop()


# --- gRPC ------------------------------------------------------------------------------------------------


@pytest.fixture
async def grpc_stub(gateway: GatewayApp) -> AsyncIterator[gateway_pb2_grpc.TaskServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        yield gateway_pb2_grpc.TaskServiceStub(channel)


def _md(tenant: str = "tenant-a") -> list[tuple[str, str]]:
    return [("authorization", _auth(tenant)["Authorization"])]


async def test_grpc_submit_get_watch_cancel(
    grpc_stub: gateway_pb2_grpc.TaskServiceStub, redis: Redis, namespace: str
) -> None:
    submitted = await grpc_stub.Submit(
        gateway_pb2.SubmitTaskRequest(workflow_json=json.dumps(WORKFLOW), idempotency_key="g-1"),
        metadata=_md(),
    )
    assert submitted.status == tasks_pb2.TASK_STATUS_QUEUED
    again = await grpc_stub.Submit(
        gateway_pb2.SubmitTaskRequest(workflow_json=json.dumps(WORKFLOW), idempotency_key="g-1"),
        metadata=_md(),
    )
    assert again.id == submitted.id
    got = await grpc_stub.Get(gateway_pb2.GetTaskRequest(task_id=submitted.id), metadata=_md())
    assert (got.id, got.tenant, got.name) == (submitted.id, "tenant-a", "reshape")

    store = TaskStore(redis, namespace)
    await store.transition("tenant-a", submitted.id, "running", "task.started")
    await store.transition(
        "tenant-a", submitted.id, "failed", "task.failed", error={"code": "boom", "message": "x"}
    )
    events = [
        e async for e in grpc_stub.Watch(gateway_pb2.WatchTaskRequest(task_id=submitted.id), metadata=_md())
    ]
    assert [e.type for e in events] == ["task.queued", "task.started", "task.failed"]
    assert events[-1].status == tasks_pb2.TASK_STATUS_FAILED
    assert events[-1].error.code == "boom"
    resumed = grpc_stub.Watch(
        gateway_pb2.WatchTaskRequest(task_id=submitted.id, after_event_id=events[0].event_id), metadata=_md()
    )
    assert [e.type async for e in resumed] == ["task.started", "task.failed"]

    other = await grpc_stub.Submit(
        gateway_pb2.SubmitTaskRequest(workflow_json=json.dumps(WORKFLOW)), metadata=_md()
    )
    cancelled = await grpc_stub.Cancel(gateway_pb2.CancelTaskRequest(task_id=other.id), metadata=_md())
    assert cancelled.status == tasks_pb2.TASK_STATUS_CANCELLED


async def test_grpc_errors_carry_the_right_status(grpc_stub: gateway_pb2_grpc.TaskServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_stub.Get(gateway_pb2.GetTaskRequest(task_id="abc"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_stub.Get(
            gateway_pb2.GetTaskRequest(task_id="abc"), metadata=[("authorization", "Bearer x.y.z")]
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_stub.Get(gateway_pb2.GetTaskRequest(task_id="nosuchtask"), metadata=_md())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nosuchtask" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_stub.Submit(gateway_pb2.SubmitTaskRequest(workflow_json="{nope"), metadata=_md())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    task = await grpc_stub.Submit(
        gateway_pb2.SubmitTaskRequest(workflow_json=json.dumps(WORKFLOW)), metadata=_md()
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_stub.Cancel(gateway_pb2.CancelTaskRequest(task_id=task.id), metadata=_md("tenant-b"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in grpc_stub.Watch(
            gateway_pb2.WatchTaskRequest(task_id=task.id), metadata=_md("tenant-b")
        ):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_grpc_health_and_reflection(gateway: GatewayApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="openclaw.v1.TaskService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in call for s in r.list_services_response.service]
    assert "openclaw.v1.TaskService" in names


# --- probes and metrics ----------------------------------------------------------------------------------


async def test_health_ready_and_metrics(http: aiohttp.ClientSession, gateway: GatewayApp) -> None:
    async with http.get("/healthz") as resp:
        assert resp.status == 200
    async with http.get("/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["checks"] == {"redis": "ok", "rabbitmq": "ok", "router": "ok"}
    await _submit(http)
    async with http.get("/v1/tasks/nosuchtask", headers=_auth()):
        pass
    async with http.get("/metrics") as resp:
        text = await resp.text()
    for name in (
        "openclaw_gateway_http_requests_total",
        "openclaw_gateway_http_request_duration_seconds",
        "openclaw_gateway_tasks_submitted_total",
        "openclaw_gateway_auth_failures_total",
        "openclaw_hop_requests_total",
    ):
        assert name in text
    assert 'route="/v1/tasks/{task_id}"' in text
    assert "nosuchtask" not in text
    assert 'hop="gateway.amqp_publish"' in text


async def test_draining_gateway_is_not_ready(gateway: GatewayApp) -> None:
    assert (await gateway.readiness())[0] is True
    await gateway.stop()
    ready, checks = await gateway.readiness()
    assert ready is False
    assert checks == {"gateway": "draining"}


# --- OpenAI-compatible chat ------------------------------------------------------------------------------


@pytest.fixture
async def openai_client(gateway: GatewayApp) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gateway.http_port}/v1",
        api_key=mint_token(SECRET, tenant="tenant-a"),
        max_retries=0,
    )
    yield client
    await client.close()


async def test_openai_client_chat_plain(openai_client: openai.AsyncOpenAI) -> None:
    raw = await openai_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about otters"}]
    )
    assert raw.headers["x-openclaw-served-by"] == MODEL
    completion = raw.parse()
    assert completion.model == MODEL
    assert "otters" in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    route = (completion.model_extra or {})["openclaw"]["route"]
    assert route["model"] == MODEL and route["simulated"] is True
    assert [a["outcome"] for a in route["attempts"]] == ["ok"]


async def test_openai_client_chat_streaming_with_usage(openai_client: openai.AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream me a reply about badgers"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1
    assert "badgers" in "".join(deltas)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


async def test_openai_client_models_and_errors(
    openai_client: openai.AsyncOpenAI, gateway: GatewayApp
) -> None:
    models = {m.id for m in (await openai_client.models.list()).data}
    assert {"gpt-4-mini", "llama-3", "claude-3"} <= models
    assert (await openai_client.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        await openai_client.chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert "gpt-nope" in str(info.value)
    with pytest.raises(openai.NotFoundError):
        await openai_client.chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    with pytest.raises(openai.BadRequestError) as bad_request:
        await openai_client.chat.completions.create(model=MODEL, messages=[])
    assert "messages" in str(bad_request.value)
    bad = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gateway.http_port}/v1", api_key="nope", max_retries=0
    )
    try:
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
    finally:
        await bad.close()
