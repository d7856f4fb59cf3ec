"""Idempotent submits: one task per key, even when submits race or the first one died before publishing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import Redis

from services.common.taskstore import TaskRecord, TaskStore
from services.common.topology import Topology
from services.gateway import GatewayApp, build
from tests.integration.test_gateway import WORKFLOW, _auth, _settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateway(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
) -> AsyncIterator[GatewayApp]:
    # The task API needs no router; the address is never called here.
    app = build(_settings(namespace, rabbitmq_url, redis_url, "127.0.0.1:1"), topology=topology)
    await app.start()
    yield app
    await app.stop()


async def _queued_ids(amqp: AbstractRobustConnection, topology: Topology) -> list[str]:
    channel = await amqp.channel()
    queue = await channel.get_queue(topology.task_queue)
    ids = []
    while (message := await queue.get(timeout=2, fail=False)) is not None:
        ids.append(str(message.message_id))
        await message.ack()
    await channel.close()
    return ids


async def test_racing_creates_with_one_key_make_one_task(redis: Redis, namespace: str) -> None:
    store = TaskStore(redis, namespace)

    async def create() -> tuple[str, bool]:
        record = TaskRecord(id=uuid.uuid4().hex, tenant="acme", status="queued")
        stored, created = await store.create(record, workflow_json="{}", idempotency_key="same-key")
        return stored.id, created

    results = await asyncio.gather(*(create() for _ in range(20)))
    assert sum(created for _, created in results) == 1
    assert len({task_id for task_id, _ in results}) == 1


async def test_replay_republishes_a_task_whose_first_submit_died_before_publishing(
    gateway: GatewayApp, redis: Redis, namespace: str, amqp: AbstractRobustConnection, topology: Topology
) -> None:
    # The first submit stored the task and died before RabbitMQ confirmed anything.
    store = TaskStore(redis, namespace)
    record = TaskRecord(id=uuid.uuid4().hex, tenant="tenant-a", status="queued", name="reshape")
    await store.create(record, workflow_json='{"name":"reshape","steps":[]}', idempotency_key="k-zombie")
    key = f"{namespace}:tenant-a:task:{record.id}"

    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as http:
        headers = {**_auth(), "Idempotency-Key": "k-zombie"}
        # Still inside the publish window: the first submit may yet succeed, so the replay must wait.
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as resp:
            assert resp.status == 409, await resp.text()
            assert resp.headers["Retry-After"] == "1"
        await redis.hset(key, "created_ms", "1000")  # long past the publish window
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["id"] == record.id
        assert await _queued_ids(amqp, topology) == [record.id]
        assert await redis.hget(key, "enqueued") == "1"
        # Once queued, replays publish nothing more.
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as resp:
            assert resp.status == 200
        assert await _queued_ids(amqp, topology) == []


async def test_keyed_submit_is_marked_enqueued_after_the_confirm(
    gateway: GatewayApp, redis: Redis, namespace: str, amqp: AbstractRobustConnection, topology: Topology
) -> None:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as http:
        headers = {**_auth(), "Idempotency-Key": "k-fresh"}
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as resp:
            assert resp.status == 202
            task_id = (await resp.json())["id"]
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as resp:
            assert resp.status == 200 and (await resp.json())["id"] == task_id
    assert await redis.hget(f"{namespace}:tenant-a:task:{task_id}", "enqueued") == "1"
    assert await _queued_ids(amqp, topology) == [task_id]
