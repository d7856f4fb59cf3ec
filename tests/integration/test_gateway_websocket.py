"""WebSocket /v1/ws against the gateway in-process (real RabbitMQ, Redis, router and simulator), with `websockets`."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import websockets
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from services.common.topology import Topology
from services.gateway import GatewayApp, build, mint_token
from services.gateway.metrics import WEBSOCKET_CONNECTIONS
from tests.integration.test_gateway import (  # noqa: F401
    MODEL,
    SECRET,
    TRACE_ID,
    TRACEPARENT,
    WORKFLOW,
    _auth,
    _settings,
    router_addr,
)

pytestmark = pytest.mark.integration

Start = Callable[..., Awaitable[GatewayApp]]


@pytest.fixture
async def start(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,  # noqa: F811
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
) -> AsyncIterator[Start]:
    apps: list[GatewayApp] = []

    async def start(**settings: Any) -> GatewayApp:
        app = build(_settings(namespace, rabbitmq_url, redis_url, router_addr, **settings), topology=topology)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop()


@pytest.fixture
async def gateway(start: Start) -> GatewayApp:
    return await start()


def _url(app: GatewayApp) -> str:
    return f"ws://127.0.0.1:{app.http_port}/v1/ws"


async def _frame(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def _ask(ws: ClientConnection, **frame: Any) -> dict[str, Any]:
    await ws.send(json.dumps(frame))
    return await _frame(ws)


async def test_header_auth_submit_get_and_tenant_isolation(gateway: GatewayApp) -> None:
    async with websockets.connect(_url(gateway), additional_headers=_auth()) as ws:
        ready = await _frame(ws)
        assert ready["type"] == "ready" and ready["tenant"] == "tenant-a"
        assert ready["expires_at"] > time.time()  # the token's exp (plus leeway)
        submitted = await _ask(ws, type="submit", id="s1", task={"workflow": WORKFLOW})
        assert submitted["type"] == "task" and submitted["id"] == "s1"
        assert submitted["task"]["status"] == "queued"
        task_id = submitted["task"]["id"]
        read = await _ask(ws, type="get", id="g1", task_id=task_id)
        assert (read["type"], read["task"]["id"]) == ("task", task_id)
    async with websockets.connect(_url(gateway), additional_headers=_auth("tenant-b")) as ws:
        await _frame(ws)
        other = await _ask(ws, type="get", id="g2", task_id=task_id)
        assert other["type"] == "error" and other["id"] == "g2"
        assert other["error"]["code"] == "not_found"


async def test_first_frame_auth_and_refusals(start: Start) -> None:
    gateway = await start(ws_auth_timeout_seconds=0.3)
    async with websockets.connect(_url(gateway)) as ws:
        ready = await _ask(ws, type="auth", token=mint_token(SECRET, tenant="tenant-c"))
        assert (ready["type"], ready["tenant"]) == ("ready", "tenant-c")
    async with websockets.connect(_url(gateway)) as ws:
        refused = await _ask(ws, type="auth", token="not-a-jwt")
        assert refused["type"] == "error" and refused["error"]["code"] == "unauthenticated"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    async with websockets.connect(_url(gateway)) as ws:  # says nothing: closed after the auth timeout
        silent = await _frame(ws)
        assert silent["error"]["code"] == "unauthenticated"
        assert "auth timeout" in silent["error"]["message"]
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    async with websockets.connect(_url(gateway), additional_headers={"Authorization": "Bearer x"}) as ws:
        bad = await _frame(ws)
        assert bad["error"]["code"] == "unauthenticated"
        with pytest.raises(ConnectionClosed):
            await ws.recv()


async def test_bad_frames_get_error_frames_and_the_connection_stays_open(gateway: GatewayApp) -> None:
    async with websockets.connect(_url(gateway), additional_headers=_auth()) as ws:
        await _frame(ws)
        not_json = await _ask_raw(ws, "{not json")
        assert not_json["type"] == "error" and not_json["id"] is None
        assert not_json["error"]["message"].startswith("frame is malformed JSON: ")
        unknown = await _ask(ws, type="teleport", id="t1")
        assert unknown["id"] == "t1" and "unknown frame type 'teleport'" in unknown["error"]["message"]
        no_id = await _ask(ws, type="get", task_id="x")
        assert no_id["error"]["details"] == {"field": "id"}
        bad_wait = await _ask(ws, type="get", id="g", task_id="0" * 32, wait="soon")
        assert bad_wait["error"]["details"] == {"field": "wait"}
        bad_workflow = await _ask(
            ws, type="submit", id="s", task={"workflow": {"steps": [{"type": "teleport"}]}}
        )
        assert (
            bad_workflow["error"]["code"] == "invalid_input"
            and "teleport" in bad_workflow["error"]["message"]
        )
        # Still open and serving.
        ok = await _ask(ws, type="submit", id="s2", task={"workflow": WORKFLOW})
        assert ok["type"] == "task"


async def test_binary_frames_are_read_as_json_and_requests_continue_the_upgrade_trace(
    gateway: GatewayApp,
) -> None:
    headers = {**_auth(), "traceparent": TRACEPARENT}
    async with websockets.connect(_url(gateway), additional_headers=headers) as ws:
        await _frame(ws)
        await ws.send(json.dumps({"type": "submit", "id": "b", "task": {"workflow": WORKFLOW}}).encode())
        submitted = await _frame(ws)
        assert submitted["task"]["trace_id"] == TRACE_ID
        garbage = await _ask_raw(ws, b"\xff\xfe")
        assert garbage["error"]["code"] == "invalid_input"
        assert garbage["error"]["message"].startswith("frame is ")


async def _ask_raw(ws: ClientConnection, raw: str | bytes) -> dict[str, Any]:
    await ws.send(raw)
    return await _frame(ws)


async def test_watch_and_cancel_multiplexed_on_one_connection(gateway: GatewayApp) -> None:
    async with websockets.connect(_url(gateway), additional_headers=_auth()) as ws:
        await _frame(ws)
        task_id = (await _ask(ws, type="submit", id="s", task={"workflow": WORKFLOW}))["task"]["id"]
        await ws.send(json.dumps({"type": "watch", "id": "w", "task_id": task_id}))
        first = await _frame(ws)
        assert (first["type"], first["id"], first["event"]["type"]) == ("event", "w", "task.queued")
        await ws.send(json.dumps({"type": "cancel", "id": "c", "task_id": task_id}))
        frames = [await _frame(ws) for _ in range(3)]
        by_id: dict[str, list[dict[str, Any]]] = {}
        for frame in frames:
            by_id.setdefault(frame["id"], []).append(frame)
        assert by_id["c"][0]["task"]["status"] == "cancelled"
        assert [f["type"] for f in by_id["w"]] == ["event", "end"]
        assert by_id["w"][0]["event"]["type"] == "task.cancelled"


async def test_stop_ends_a_watch_and_the_in_flight_limit_refuses_more(start: Start) -> None:
    gateway = await start(ws_max_in_flight=1)
    async with websockets.connect(_url(gateway), additional_headers=_auth()) as ws:
        await _frame(ws)
        task_id = (await _ask(ws, type="submit", id="s", task={"workflow": WORKFLOW}))["task"]["id"]
        watching = await _ask(ws, type="watch", id="w", task_id=task_id)
        assert watching["event"]["type"] == "task.queued"
        refused = await _ask(ws, type="get", id="g", task_id=task_id)
        assert (refused["id"], refused["error"]["code"]) == ("g", "resource_exhausted")
        stopped = await _ask(ws, type="stop", id="w")
        assert stopped == {"type": "end", "id": "w", "reason": "stopped"}
        again = await _ask(ws, type="get", id="g", task_id=task_id)
        assert again["type"] == "task"


async def test_chat_streams_tokens(gateway: GatewayApp) -> None:
    async with websockets.connect(_url(gateway), additional_headers=_auth()) as ws:
        await _frame(ws)
        request = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}
        await ws.send(json.dumps({"type": "chat", "id": "c1", "request": request}))
        deltas: list[str] = []
        while (frame := await _frame(ws))["type"] == "chat.delta":
            assert frame["id"] == "c1"
            deltas.append(frame["delta"])
        assert frame["type"] == "chat.done" and frame["id"] == "c1"
        assert len(deltas) > 1
        assert "".join(deltas).startswith("[simulated")
        assert frame["finish_reason"] == "stop"
        bad = await _ask(ws, type="chat", id="c2", request={"model": MODEL, "messages": []})
        assert bad["error"]["details"] == {"param": "messages"}


async def test_flood_is_closed_with_policy_violation(start: Start) -> None:
    gateway = await start(ws_max_messages_per_second=5)
    async with websockets.connect(_url(gateway), additional_headers=_auth()) as ws:
        await _frame(ws)
        with pytest.raises(ConnectionClosed) as closed:
            for i in range(100):
                await ws.send(json.dumps({"type": "stop", "id": str(i)}))
            while True:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_oversized_frame_closes_with_message_too_big(start: Start) -> None:
    gateway = await start(ws_max_message_bytes=1024)
    async with websockets.connect(_url(gateway), additional_headers=_auth(), max_size=None) as ws:
        await _frame(ws)
        await ws.send(json.dumps({"type": "get", "id": "x" * 2000}))
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_dead_peer_is_closed_after_the_ping_timeout(start: Start) -> None:
    gateway = await start(ws_ping_interval_seconds=0.2, ws_ping_timeout_seconds=0.2)
    open_before = WEBSOCKET_CONNECTIONS._value.get()
    # A raw client that completes the handshake and then never answers a ping.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.http_port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: {_auth()['Authorization']}\r\n\r\n"
        ).encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    pings = 0
    while data := await reader.read(4096):  # until the server gives up on us and closes
        pings += data.count(b"\x89")
    assert pings >= 1
    writer.close()
    while WEBSOCKET_CONNECTIONS._value.get() != open_before:  # noqa: ASYNC110 (the handler unwinds after EOF)
        await asyncio.sleep(0.01)


async def test_drain_closes_open_connections_with_service_restart(start: Start) -> None:
    gateway = await start()
    async with websockets.connect(_url(gateway), additional_headers=_auth()) as ws:
        await _frame(ws)
        task_id = (await _ask(ws, type="submit", id="s", task={"workflow": WORKFLOW}))["task"]["id"]
        assert (await _ask(ws, type="watch", id="w", task_id=task_id))["type"] == "event"
        await gateway.stop()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012  # RFC 6455 "service restart"


# --- credentials on a live connection: expiry, re-authentication, revocation --------------------------


async def _until(expires_at: float) -> None:
    """Sleep past a wall-clock instant (the gateway's clock is this process's)."""
    await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.2)


async def _closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], int, str]:
    """Every frame until the server closes, and its close code and reason."""
    frames: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frames.append(await _frame(ws))
    assert closed.value.rcvd is not None, "the server sent no close frame"
    return frames, closed.value.rcvd.code, closed.value.rcvd.reason


async def _submitted_over_http(gateway: GatewayApp, key: str) -> bool:
    """Whether a task with this idempotency key exists already (a resubmit replays it: 200, not 202)."""
    headers = {**_auth(), "Idempotency-Key": key}
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as http,
        http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as resp,
    ):
        assert resp.status in (200, 202), await resp.text()
        return resp.status == 200


async def test_an_expired_token_closes_the_connection_and_later_frames_are_not_served(start: Start) -> None:
    gateway = await start(jwt_leeway_seconds=0)
    token = mint_token(SECRET, tenant="tenant-a", ttl_s=2)
    async with websockets.connect(
        _url(gateway), additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        ready = await _frame(ws)
        assert ready["expires_at"] <= time.time() + 2
        assert (await _ask(ws, type="submit", id="before", task={"workflow": WORKFLOW}))["type"] == "task"
        await _until(ready["expires_at"])
        with contextlib.suppress(ConnectionClosed):  # closed already, as it should be, or about to be
            frame = {
                "type": "submit",
                "id": "after",
                "task": {"workflow": WORKFLOW},
                "idempotency_key": "late",
            }
            await ws.send(json.dumps(frame))
        frames, code, reason = await _closed(ws)
    assert (code, reason) == (4401, "token expired")
    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["error"] == {
        "code": "unauthenticated",
        "message": "the token has expired",
        "retryable": False,
    }
    assert not await _submitted_over_http(gateway, "late")


async def test_reauthentication_extends_the_connection_past_the_first_tokens_expiry(start: Start) -> None:
    gateway = await start(jwt_leeway_seconds=0)
    async with websockets.connect(_url(gateway)) as ws:
        ready = await _ask(ws, type="auth", token=mint_token(SECRET, tenant="tenant-a", ttl_s=2))
        renewed = await _ask(ws, type="auth", id="r1", token=mint_token(SECRET, tenant="tenant-a", ttl_s=60))
        assert (renewed["type"], renewed["id"], renewed["tenant"]) == ("auth.ok", "r1", "tenant-a")
        assert renewed["expires_at"] >= ready["expires_at"] + 55
        await _until(ready["expires_at"])
        submitted = await _ask(ws, type="submit", id="s", task={"workflow": WORKFLOW})
        assert submitted["type"] == "task" and submitted["task"]["status"] == "queued"
        # A malformed auth frame is a bad frame like any other: the connection stays on its credentials.
        bad = await _ask(ws, type="auth", id="r2")
        assert (bad["type"], bad["id"], bad["error"]["details"]) == ("error", "r2", {"field": "token"})
        assert (await _ask(ws, type="get", id="g", task_id=submitted["task"]["id"]))["type"] == "task"


async def test_reauthentication_as_another_tenant_or_with_a_bad_token_closes(start: Start) -> None:
    gateway = await start()
    async with websockets.connect(_url(gateway), additional_headers=_auth("tenant-a")) as ws:
        await _frame(ws)
        await ws.send(json.dumps({"type": "auth", "token": mint_token(SECRET, tenant="tenant-b")}))
        await ws.send(json.dumps({"type": "submit", "id": "s", "task": {"workflow": WORKFLOW}}))
        frames, code, reason = await _closed(ws)
    assert (code, reason) == (4403, "re-authentication names another tenant")
    assert [f["type"] for f in frames] == ["error"]  # and the submit behind it was not served
    assert frames[0]["error"]["code"] == "permission_denied"
    assert "'tenant-b'" in frames[0]["error"]["message"] and "'tenant-a'" in frames[0]["error"]["message"]
    async with websockets.connect(_url(gateway), additional_headers=_auth("tenant-a")) as ws:
        await _frame(ws)
        await ws.send(json.dumps({"type": "auth", "token": "not-a-jwt"}))
        frames, code, reason = await _closed(ws)
    assert (code, reason) == (4401, "re-authentication refused")
    assert frames[0]["error"]["code"] == "unauthenticated"


async def test_a_revoked_api_key_stops_working_on_an_open_connection(start: Start) -> None:
    gateway = await start(ws_credential_check_seconds=0.2)
    admin = {"Authorization": f"Bearer {mint_token(SECRET, tenant='tenant-a', roles=['admin'])}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as http:
        async with http.post("/v1/apikeys", json={"name": "ws"}, headers=admin) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
        async with websockets.connect(_url(gateway), additional_headers={"X-API-Key": created["key"]}) as ws:
            ready = await _frame(ws)
            assert (ready["tenant"], ready["expires_at"]) == ("tenant-a", None)
            await asyncio.sleep(0.5)  # a few re-checks pass while the key is valid
            assert (await _ask(ws, type="submit", id="s", task={"workflow": WORKFLOW}))["type"] == "task"
            async with http.delete(f"/v1/apikeys/{created['id']}", headers=admin) as resp:
                assert resp.status == 204
            frames, code, reason = await _closed(ws)
    assert (code, reason) == (4401, "api key revoked")
    assert [f["type"] for f in frames] == ["error"]
    assert "revoked" in frames[0]["error"]["message"]
