"""The gateway with a channels file: a signed webhook is answered by the agent through the real router and
simulator, a channel the tenant's policy does not allow is refused, and a schedule starts its task."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from redis.asyncio import Redis

from services.common.topology import Topology
from services.gateway.auth import mint_token
from services.gateway.bootstrap import GatewayApp, build
from services.gateway.channels.webhook import sign
from tests.integration.test_gateway import SECRET, _settings, router_addr  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
async def callback() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def reply(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/reply", reply)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/reply", received
    await runner.cleanup()


@pytest.fixture
async def gateway(
    tmp_path: Path,
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,  # noqa: F811
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
    callback: tuple[str, list[dict[str, Any]]],
) -> AsyncIterator[GatewayApp]:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants:\n  acme: {}\n  locked:\n    channels: [other]\n")
    channels = tmp_path / "channels.yaml"
    channels.write_text(
        json.dumps(
            {
                "channels": [
                    {
                        "name": "hook",
                        "kind": "webhook",
                        "tenant": "acme",
                        "api_base": callback[0],
                        "secrets": {"secret": "s3cret"},
                    },
                    {
                        "name": "blocked",
                        "kind": "webhook",
                        "tenant": "locked",
                        "api_base": callback[0],
                        "secrets": {"secret": "s3cret"},
                    },
                ],
                "agents": [{"name": "helper", "model": "gpt-4-mini", "channels": ["hook", "blocked"]}],
                "schedules": [
                    {
                        "id": "tick",
                        "tenant": "acme",
                        "every_s": 1,
                        "workflow": {
                            "name": "tick",
                            "steps": [{"type": "math_sum", "params": {"items": [1, 2]}}],
                        },
                    }
                ],
            }
        )
    )
    settings = _settings(
        namespace, rabbitmq_url, redis_url, router_addr, tenants_file=tenants, channels_file=channels
    )
    app = build(settings, topology=topology)
    await app.start()
    yield app
    await app.stop()


async def post_hook(app: GatewayApp, channel: str, doc: dict[str, Any]) -> aiohttp.ClientResponse:
    body = json.dumps(doc).encode()
    headers = {
        "X-OpenClaw-Signature": sign("s3cret", body, int(time.time())),
        "Content-Type": "application/json",
    }
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"http://127.0.0.1:{app.http_port}/v1/channels/{channel}/events", data=body, headers=headers
        )
        await response.read()
        return response


async def test_a_webhook_message_is_answered_by_the_agent_through_the_router(
    gateway: GatewayApp, callback: tuple[str, list[dict[str, Any]]]
) -> None:
    _, received = callback
    response = await post_hook(gateway, "hook", {"conversation": "c1", "message_id": "m1", "text": "status?"})
    assert response.status == 202
    for _ in range(300):
        if received:
            break
        await asyncio.sleep(0.02)
    (reply,) = received
    assert reply["conversation"] == "c1" and reply["reply_to"] == "m1"
    assert reply["text"].startswith("[simulated")  # the real router, answered by the labelled simulator


async def test_a_channel_the_tenant_may_not_use_is_refused(
    gateway: GatewayApp, callback: tuple[str, list[dict[str, Any]]]
) -> None:
    response = await post_hook(gateway, "blocked", {"conversation": "c", "message_id": "m", "text": "hi"})
    assert response.status == 403
    await asyncio.sleep(0.2)
    assert callback[1] == []


async def test_a_schedule_starts_its_task(gateway: GatewayApp, redis: Redis, namespace: str) -> None:
    task_id = ""
    for _ in range(200):
        for key in await redis.keys(f"{namespace}:schedule:tick:slot:*"):
            state = await redis.get(key) or ""
            if state.startswith("done:"):
                task_id = state.removeprefix("done:")
        if task_id:
            break
        await asyncio.sleep(0.05)
    assert task_id
    token = mint_token(SECRET, tenant="acme")
    url = f"http://127.0.0.1:{gateway.http_port}/v1/tasks/{task_id}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        assert r.status == 200 and (await r.json())["name"] == "tick"


async def test_per_tenant_metrics_name_defined_tenants_and_fold_the_rest(gateway: GatewayApp) -> None:
    from prometheus_client import REGISTRY

    def count(tenant: str) -> float:
        value = REGISTRY.get_sample_value(
            "openclaw_gateway_tenant_requests_total", {"tenant": tenant, "outcome": "not_found"}
        )
        return value or 0.0

    before = {t: count(t) for t in ("acme", "other", "zeta")}
    async with aiohttp.ClientSession() as http:
        for tenant in ("acme", "zeta", "zeta"):
            token = mint_token(SECRET, tenant=tenant)
            url = f"http://127.0.0.1:{gateway.http_port}/v1/tasks/nope"
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 404
    assert count("acme") - before["acme"] == 1  # defined in the tenants file: by name
    assert count("other") - before["other"] == 2 and count("zeta") == before["zeta"] == 0  # bounded labels
