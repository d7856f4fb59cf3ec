"""Workflows using an enabled plugin's operations are accepted at submit; without the plugin they are refused."""

from __future__ import annotations

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import Redis

from services.common.topology import Topology
from services.gateway.auth import mint_token
from services.gateway.bootstrap import build
from tests.integration.test_gateway import SECRET, _settings, router_addr  # noqa: F401

pytestmark = pytest.mark.integration
WORKFLOW = {"name": "w", "steps": [{"type": "sample.word_frequencies", "params": {"text": "a b a"}}]}


@pytest.mark.parametrize(("plugins", "status"), [({"sample": ["*"]}, 202), ({}, 400)])
async def test_submit_checks_against_the_enabled_plugins(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,  # noqa: F811
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
    plugins: dict[str, list[str]],
    status: int,
) -> None:
    app = build(
        _settings(namespace, rabbitmq_url, redis_url, router_addr, plugins=plugins), topology=topology
    )
    await app.start()
    try:
        headers = {"Authorization": f"Bearer {mint_token(SECRET, tenant='acme')}"}
        async with (
            aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http,
            http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as response,
        ):
            body = await response.json()
        assert response.status == status, body
        if status == 400:
            assert "sample.word_frequencies" in body["error"]["message"]
    finally:
        await app.stop()
