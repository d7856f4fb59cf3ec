"""The gateway with master keys configured: what it writes to Redis and RabbitMQ is sealed; its API reads plaintext."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr
from redis.asyncio import Redis

from openclaw.v1 import tasks_pb2
from services.common.encryption import MasterKeys
from services.common.topology import Topology
from services.gateway.auth import mint_token
from services.gateway.bootstrap import build
from tests.integration.test_gateway import SECRET, _settings, router_addr  # noqa: F401

pytestmark = pytest.mark.integration
MARKER = "quarterly-revenue-4.2M-confidential"


async def test_task_data_is_sealed_at_rest_and_the_submitter_travels(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,  # noqa: F811
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
) -> None:
    keys = SecretStr(json.dumps({"k1": MasterKeys.generate()}))
    app = build(
        _settings(namespace, rabbitmq_url, redis_url, router_addr, master_keys=keys, master_key_id="k1"),
        topology=topology,
    )
    await app.start()
    try:
        token = mint_token(SECRET, tenant="acme", subject="alice")
        workflow = {
            "name": "w",
            "steps": [{"type": "json_transform", "params": {"expression": "a", "input": {"a": MARKER}}}],
        }
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
            async with http.post(
                "/v1/tasks", json={"workflow": workflow}, headers={"Authorization": f"Bearer {token}"}
            ) as r:
                assert r.status == 202, await r.text()
                task_id = (await r.json())["id"]
            async with http.get(f"/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {token}"}) as r:
                assert (
                    r.status == 200 and (await r.json())["name"] == "w"
                )  # read back through the sealed store
        everything = ""
        for key in await redis.keys(f"{namespace}:*"):
            kind = await redis.type(key)
            if kind == "hash":
                everything += json.dumps(await redis.hgetall(key))
            elif kind == "string":
                everything += str(await redis.get(key))
            elif kind == "stream":
                everything += json.dumps(await redis.xrange(key))
        assert MARKER not in everything and "enc:v1:" in everything
        channel = await amqp.channel()
        queue = await channel.get_queue(topology.task_queue, ensure=True)
        message = await queue.get(timeout=5)
        assert message is not None
        await message.ack()
        assert MARKER.encode() not in message.body
        envelope = tasks_pb2.TaskEnvelope.FromString(message.body)
        assert envelope.task_id == task_id and envelope.submitted_by == "alice"
    finally:
        await app.stop()
