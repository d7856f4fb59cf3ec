"""Encryption at rest of task data, against the real RabbitMQ and Redis: a task submitted through the gateway's
task service, run by the executor, leaves no plaintext of its workflow, inputs, outputs or result in Redis or
in the message RabbitMQ carried; the same APIs still read it back; master-key rotation keeps it readable; a
sealed value moved to another task or tenant does not decrypt."""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr
from redis.asyncio import Redis

from openclaw.v1 import tasks_pb2
from services.common import envelope
from services.common.encryption import DecryptionError, Keyring, MasterKeys, Sealer
from services.common.envelope import SealingPublisher, now_ms
from services.common.errors import InvalidInputError
from services.common.publisher import TaskPublisher
from services.common.taskstore import TaskRecord, TaskStore
from services.common.topology import TASK_ROUTING_KEY, Topology
from services.executor.bootstrap import ExecutorApp, build
from services.executor.settings import ExecutorSettings
from services.gateway.bootstrap import ExecutorCatalogue
from services.gateway.tasks import SubmitRequest, TaskService

pytestmark = pytest.mark.integration

TENANT = "acme"
K1 = base64.b64encode(os.urandom(32)).decode()
K2 = base64.b64encode(os.urandom(32)).decode()
# Distinctive strings that must never be found in plaintext where they rest.
IN_SECRET = "zebra-input-7731"
WF_SECRET = "giraffe-workflow-5521"
MARKS = (IN_SECRET, WF_SECRET, IN_SECRET.upper(), WF_SECRET.upper())
WORKFLOW: dict[str, Any] = {
    "name": "sealed",
    "steps": [
        {"id": "shout", "type": "text_case", "params": {"text": "${{ inputs.secret }}", "to": "upper"}},
        {"id": "tag", "type": "text_case", "params": {"text": WF_SECRET, "to": "upper"}},
        {
            "id": "join",
            "type": "text_join",
            "params": {"items": ["${{ steps.shout.output }}", "${{ prev.output }}"]},
        },
    ],
}


def sealer_for(redis: Redis, namespace: str, keys: dict[str, str], current: str) -> Sealer:
    return Sealer(Keyring(redis, namespace, MasterKeys(keys, current)))


async def everything_in(redis: Redis, namespace: str) -> str:
    """Every value under the namespace, whatever its type, as one string."""
    parts: list[str] = []
    async for key in redis.scan_iter(match=f"{namespace}:*", count=500):
        kind = await redis.type(key)
        if kind == "hash":
            parts.append(json.dumps(await redis.hgetall(key)))  # type: ignore[misc]
        elif kind == "stream":
            parts.append(json.dumps(await redis.xrange(key)))
        elif kind == "string":
            parts.append(str(await redis.get(key)))
        elif kind == "set":
            parts.append(json.dumps(sorted(await redis.smembers(key))))  # type: ignore[misc]
        elif kind == "zset":
            parts.append(json.dumps(await redis.zrange(key, 0, -1)))
        elif kind == "list":
            parts.append(json.dumps(await redis.lrange(key, 0, -1)))  # type: ignore[misc]
        parts.append(str(key))
    return "\n".join(parts)


@pytest.fixture
async def executor(amqp: AbstractRobustConnection, topology: Topology) -> AsyncIterator[list[ExecutorApp]]:
    apps: list[ExecutorApp] = []
    await topology.declare(await amqp.channel())
    yield apps
    for app in apps:
        await app.stop()


async def start_executor(
    apps: list[ExecutorApp],
    topology: Topology,
    namespace: str,
    amqp_url: str,
    redis_url: str,
    storage: Path,
    **extra: Any,
) -> ExecutorApp:
    settings = ExecutorSettings(
        namespace=namespace,
        amqp_url=amqp_url,
        redis_url=redis_url,
        metrics_port=0,
        storage_root=storage,
        drain_seconds=2.0,
        router_addr="127.0.0.1:1",
        **extra,
    )
    app = build(settings, topology=topology)
    await app.start()
    apps.append(app)
    return app


async def test_a_task_leaves_no_plaintext_in_redis_or_rabbitmq_and_the_api_reads_it(
    executor: list[ExecutorApp],
    amqp: AbstractRobustConnection,
    redis: Redis,
    topology: Topology,
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    keys = json.dumps({"k1": K1})
    await start_executor(
        executor, topology, namespace, rabbitmq_url, redis_url, tmp_path, master_keys=keys, master_key_id="k1"
    )
    # The gateway's task service as its bootstrap builds it with master keys: store and publisher sealed.
    sealer = sealer_for(redis, namespace, {"k1": K1}, "k1")
    store = TaskStore(redis, namespace, sealer=sealer)
    publisher = TaskPublisher(amqp, topology)
    tasks = TaskService(store, SealingPublisher(publisher, sealer), ExecutorCatalogue())
    # A tap on the task exchange keeps a copy of every envelope published.
    channel = await amqp.channel()
    tap = await channel.declare_queue(f"{namespace}.tap", auto_delete=True)
    await tap.bind(topology.task_exchange, routing_key=TASK_ROUTING_KEY)

    submitted = await tasks.submit(TENANT, SubmitRequest(workflow=WORKFLOW, inputs={"secret": IN_SECRET}))
    task_id = submitted.task.id
    record = await tasks.get(TENANT, task_id, steps=True, wait_s=20.0)

    assert record.status == "succeeded", record.error
    assert record.result == f"{IN_SECRET.upper()}{WF_SECRET.upper()}"
    assert record.steps["shout"]["output"] == IN_SECRET.upper()
    events = await store.events(TENANT, task_id, count=100)
    completed = {e.step_id: e.data for e in events if e.type == "step.completed"}
    assert completed["shout"] == IN_SECRET.upper()
    assert [e.data for e in events if e.type == "task.succeeded"] == [record.result]
    fields = await store.envelope_fields(TENANT, task_id)
    assert json.loads(fields["inputs"]) == {"secret": IN_SECRET}

    stored = await everything_in(redis, namespace)
    assert task_id in stored and "enc:v1:" in stored  # the scan did see the task, sealed
    for mark in MARKS:
        assert mark not in stored, f"{mark!r} found in plaintext in Redis"

    message = await tap.get(timeout=5)
    await message.ack()
    for mark in MARKS:
        assert mark.encode() not in message.body, f"{mark!r} found in plaintext in the AMQP message"
    carried = tasks_pb2.TaskEnvelope.FromString(message.body)
    assert carried.workflow_json.startswith("enc:v1:") and carried.inputs_json.startswith("enc:v1:")
    await channel.close()
    await publisher.close()


async def test_master_key_rotation_keeps_old_tasks_readable_without_touching_the_data(
    redis: Redis, namespace: str
) -> None:
    old = TaskStore(redis, namespace, sealer=sealer_for(redis, namespace, {"k1": K1}, "k1"))
    task_id = uuid.uuid4().hex
    await old.create(
        TaskRecord(id=task_id, tenant=TENANT, status="queued"),
        workflow_json='{"w": 1}',
        inputs_json='{"i": 2}',
    )
    await old.checkpoint(TENANT, task_id, "s1", {"status": "succeeded", "output": IN_SECRET})
    await old.transition(
        TENANT, task_id, "succeeded", "task.succeeded", fields={"result": json.dumps(IN_SECRET)}
    )
    task_key = old.task_key(TENANT, task_id)
    sealed_before = await redis.hget(task_key, "result")  # type: ignore[misc]

    rotated = Keyring(redis, namespace, MasterKeys({"k1": K1, "k2": K2}, "k2"))
    assert await rotated.rewrap(TENANT) == 1
    assert await redis.hget(task_key, "result") == sealed_before  # type: ignore[misc]
    # k1 retired entirely: only the re-wrapped data key stands between k2 and the old data.
    new = TaskStore(redis, namespace, sealer=Sealer(Keyring(redis, namespace, MasterKeys({"k2": K2}, "k2"))))
    record = await new.get(TENANT, task_id, with_steps=True)
    assert record is not None and record.result == IN_SECRET
    assert record.steps["s1"]["output"] == IN_SECRET
    assert (await new.envelope_fields(TENANT, task_id))["inputs"] == '{"i": 2}'
    with pytest.raises(DecryptionError, match="no master keys"):
        await TaskStore(redis, namespace).get(TENANT, task_id)
    # Without the re-wrap, a deployment holding only k2 could not read it.
    other = f"{TENANT}-b"
    await old.create(
        TaskRecord(id=task_id, tenant=other, status="queued"), workflow_json="{}", inputs_json="{}"
    )
    with pytest.raises(DecryptionError):
        await new.envelope_fields(other, task_id)


async def test_a_sealed_value_moved_to_another_task_or_tenant_does_not_decrypt(
    redis: Redis, namespace: str
) -> None:
    store = TaskStore(redis, namespace, sealer=sealer_for(redis, namespace, {"k1": K1}, "k1"))
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    for tenant, task_id in ((TENANT, a), (TENANT, b), ("beta", a)):
        await store.create(
            TaskRecord(id=task_id, tenant=tenant, status="queued"), workflow_json="{}", inputs_json="{}"
        )
    await store.checkpoint(TENANT, a, "s1", {"status": "succeeded", "output": IN_SECRET})
    sealed = await redis.hget(f"{store.task_key(TENANT, a)}:steps", "s1")  # type: ignore[misc]
    await redis.hset(f"{store.task_key(TENANT, b)}:steps", "s1", sealed)  # type: ignore[misc]
    with pytest.raises(DecryptionError, match="integrity"):
        await store.steps(TENANT, b)
    inputs = await redis.hget(store.task_key(TENANT, a), "inputs")  # type: ignore[misc]
    await redis.hset(store.task_key("beta", a), "inputs", inputs)  # type: ignore[misc]
    with pytest.raises(DecryptionError):
        await store.envelope_fields("beta", a)
    assert (await store.steps(TENANT, a))["s1"]["output"] == IN_SECRET


async def test_an_executor_without_master_keys_fails_a_sealed_task_naming_why(
    executor: list[ExecutorApp],
    amqp: AbstractRobustConnection,
    redis: Redis,
    topology: Topology,
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="services.executor.bootstrap"):
        app = await start_executor(executor, topology, namespace, rabbitmq_url, redis_url, tmp_path)
    assert app.sealer is None
    assert any("encryption at rest is off" in r.getMessage() for r in caplog.records)
    sealer = sealer_for(redis, namespace, {"k1": K1}, "k1")
    plain = TaskStore(redis, namespace)
    task_id = uuid.uuid4().hex
    await plain.create(
        TaskRecord(id=task_id, tenant=TENANT, status="queued"), workflow_json="", inputs_json=""
    )
    env = tasks_pb2.TaskEnvelope(
        task_id=task_id,
        tenant=TENANT,
        type="workflow.run",
        attempt=1,
        max_attempts=1,
        created_unix_ms=now_ms(),
        workflow_json=json.dumps(WORKFLOW),
        inputs_json="{}",
    )
    publisher = TaskPublisher(amqp, topology)
    await SealingPublisher(publisher, sealer).publish(env)
    record = await plain.wait_then_get(TENANT, task_id, 20_000)
    assert record[1] is not None and record[1].status == "failed"
    assert record[1].error is not None and "envelope.workflow_json" in record[1].error["message"]
    assert "no master keys" in record[1].error["message"]
    await publisher.close()


async def test_envelope_encode_and_decode_round_trip(redis: Redis, namespace: str) -> None:
    sealer = sealer_for(redis, namespace, {"k1": K1}, "k1")
    env = tasks_pb2.TaskEnvelope(
        task_id="t1", tenant=TENANT, type="workflow.run", workflow_json=WF_SECRET, inputs_json=IN_SECRET
    )
    message = await envelope.encode(env, sealer)
    assert WF_SECRET.encode() not in message.body and IN_SECRET.encode() not in message.body
    assert await envelope.opened(tasks_pb2.TaskEnvelope.FromString(message.body), sealer) == (
        WF_SECRET,
        IN_SECRET,
    )
    with pytest.raises(InvalidInputError, match=r"envelope\.workflow_json"):
        await envelope.opened(tasks_pb2.TaskEnvelope.FromString(message.body), None)
    # An envelope written before encryption was on still reads.
    assert await envelope.opened(env, sealer) == (WF_SECRET, IN_SECRET)


def test_master_key_settings_are_checked_and_never_echoed() -> None:
    assert ExecutorSettings().master_key_set() is None
    configured = ExecutorSettings(master_keys=SecretStr(json.dumps({"k1": K1})), master_key_id="k1")
    assert configured.master_key_set() is not None
    cases: list[tuple[dict[str, Any], str]] = [
        ({"master_keys": "not json", "master_key_id": "k1"}, "OPENCLAW_MASTER_KEYS"),
        ({"master_keys": json.dumps({"k1": K1})}, "OPENCLAW_MASTER_KEY_ID"),
        ({"master_keys": json.dumps({"k1": K1[:20]}), "master_key_id": "k1"}, "32 bytes"),
        ({"master_keys": json.dumps({"k1": K1}), "master_key_id": "k9"}, "k9"),
    ]
    for bad, named in cases:
        with pytest.raises(ValueError, match=named) as failed:
            ExecutorSettings(**bad)
        assert K1 not in str(failed.value) and K1[:20] not in str(failed.value)
