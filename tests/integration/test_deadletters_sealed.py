"""Dead letters with encryption at rest on, against the real RabbitMQ and Redis: `openclaw dlq` built with the
master keys shows a sealed task's real inputs and error, replays it, and leaves no plaintext in Redis; without
the keys it stops with an error naming them; a replay publishes the envelope sealed and re-creates an expired
record sealed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from pydantic import SecretStr
from redis.asyncio import Redis

from openclaw.cli import main as cli_main
from openclaw.v1 import tasks_pb2
from services.common import envelope
from services.common.encryption import Keyring, MasterKeys, Sealer
from services.common.envelope import ERROR_HEADER, SealingPublisher, now_ms
from services.common.errors import InvalidInputError
from services.common.publisher import TaskPublisher
from services.common.taskstore import TaskRecord, TaskStore
from services.common.topology import Topology
from services.executor.bootstrap import ExecutorApp, build
from services.executor.deadletters import DeadLetters
from services.executor.settings import ExecutorSettings
from tests.integration.test_deadletters import FaultyService, eventually
from tests.integration.test_encryption_at_rest import everything_in

pytestmark = pytest.mark.integration

TENANT = "acme"
KEYS = {"k1": base64.b64encode(os.urandom(32)).decode()}
# Distinctive strings that must never rest in Redis in plaintext.
IN_SECRET = "okapi-input-4410"
WF_SECRET = "narwhal-workflow-9082"
ERR_SECRET = "tapir-error-6617"
MARKS = (IN_SECRET, WF_SECRET, ERR_SECRET, IN_SECRET.upper(), WF_SECRET.upper())


class TellingService(FaultyService):
    """A faulty service whose 503 body carries a secret, which the task's error quotes."""

    async def _handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.broken:
            return web.json_response({"error": f"down: {ERR_SECRET}"}, status=503)
        return web.json_response({"ok": True, "calls": self.calls})


class RecordingPublisher:
    """A TaskPublisher that keeps a copy of every envelope it publishes."""

    def __init__(self, inner: TaskPublisher) -> None:
        self.inner = inner
        self.published: list[tasks_pb2.TaskEnvelope] = []

    async def publish(self, env: tasks_pb2.TaskEnvelope, headers: dict[str, Any] | None = None) -> None:
        self.published.append(env)
        await self.inner.publish(env, headers)


class Rig:
    """An executor with master keys, a faulty service, and tasks submitted sealed, as the gateway does."""

    def __init__(
        self, amqp: AbstractRobustConnection, redis: Redis, namespace: str, topology: Topology
    ) -> None:
        self.amqp, self.topology = amqp, topology
        self.sealer = Sealer(Keyring(redis, namespace, MasterKeys(KEYS, "k1")))
        self.store = TaskStore(redis, namespace, sealer=self.sealer)
        self.publisher = TaskPublisher(amqp, topology)
        self.recorder = RecordingPublisher(self.publisher)
        self.letters = DeadLetters(self.store, topology, self.recorder)  # type: ignore[arg-type]
        self.service = TellingService()

    def envelope(self, task_id: str) -> tasks_pb2.TaskEnvelope:
        workflow = {
            "name": "deliver",
            "steps": [
                {
                    "id": "shout",
                    "type": "text_case",
                    "params": {"text": "${{ inputs.secret }}", "to": "upper"},
                },
                {"id": "tag", "type": "text_case", "params": {"text": WF_SECRET, "to": "upper"}},
                {"id": "call", "type": "http_request", "params": {"url": self.service.url, "method": "POST"}},
            ],
        }
        return tasks_pb2.TaskEnvelope(
            task_id=task_id,
            tenant=TENANT,
            type="workflow.run",
            attempt=1,
            max_attempts=1,
            deadline_unix_ms=now_ms() + 60_000,
            created_unix_ms=now_ms(),
            workflow_json=json.dumps(workflow),
            inputs_json=json.dumps({"secret": IN_SECRET}),
        )

    async def submit(self) -> str:
        env = self.envelope(uuid.uuid4().hex)
        record = TaskRecord(id=env.task_id, tenant=TENANT, status="queued", name="deliver")
        await self.store.create(record, workflow_json=env.workflow_json, inputs_json=env.inputs_json)
        await SealingPublisher(self.publisher, self.sealer).publish(env)
        return env.task_id

    async def ended(self, task_id: str, status: str) -> TaskRecord:
        async def check() -> TaskRecord | None:
            record = await self.store.get(TENANT, task_id)
            return record if record is not None and record.status == status else None

        return await eventually(check, 20.0, f"task {task_id} {status}")


@pytest.fixture
async def rig(
    amqp: AbstractRobustConnection,
    redis: Redis,
    topology: Topology,
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    tmp_path: Path,
) -> AsyncIterator[Rig]:
    rig = Rig(amqp, redis, namespace, topology)
    await rig.service.start()
    settings = ExecutorSettings(
        namespace=namespace,
        amqp_url=rabbitmq_url,
        redis_url=redis_url,
        metrics_port=0,
        storage_root=tmp_path,
        allow_private_network=True,
        drain_seconds=5.0,
        router_addr="127.0.0.1:1",
        master_keys=SecretStr(json.dumps(KEYS)),
        master_key_id="k1",
    )
    app: ExecutorApp = build(settings, topology=topology)
    await app.start()
    yield rig
    await app.stop()
    await rig.publisher.close()
    await rig.service.stop()


async def assert_no_plaintext(redis: Redis, namespace: str) -> None:
    stored = await everything_in(redis, namespace)
    assert "enc:v1:" in stored
    for mark in MARKS:
        assert mark not in stored, f"{mark!r} found in plaintext in Redis"


async def test_the_cli_with_the_keys_shows_and_replays_a_sealed_task_and_without_them_refuses(
    rig: Rig,
    redis: Redis,
    namespace: str,
    amqp: AbstractRobustConnection,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    task_id = await rig.submit()
    failed = await rig.ended(task_id, "failed")
    assert failed.error is not None and ERR_SECRET in failed.error["message"]
    monkeypatch.setenv("OPENCLAW_NAMESPACE", namespace)
    monkeypatch.setenv("OPENCLAW_MASTER_KEYS", json.dumps(KEYS))
    monkeypatch.setenv("OPENCLAW_MASTER_KEY_ID", "k1")
    defaults = Topology(namespace)  # the CLI declares the default delay queues: removed afterwards

    async def cli(*argv: str) -> int:
        return await asyncio.to_thread(cli_main, ["dlq", *argv])

    async def listed() -> str | None:
        assert await cli("list", "--tenant", TENANT, "--json") == 0
        out = capsys.readouterr().out
        return out if out.strip() else None

    (row,) = [
        json.loads(line) for line in (await eventually(listed, 10.0, "the dead letter listed")).splitlines()
    ]
    assert row["task_id"] == task_id and row["name"] == "deliver" and row["code"] == "unavailable"
    assert ERR_SECRET in row["message"]
    assert await cli("show", "--tenant", TENANT, task_id) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["envelope"]["inputs"] == {"secret": IN_SECRET}
    assert shown["envelope"]["workflow"]["steps"][1]["params"]["text"] == WF_SECRET
    assert ERR_SECRET in shown["error"]["message"]
    await assert_no_plaintext(redis, namespace)  # the archived error is sealed too

    # Without the keys: every command that would read or replay sealed data says which settings it lacks.
    monkeypatch.delenv("OPENCLAW_MASTER_KEYS")
    monkeypatch.delenv("OPENCLAW_MASTER_KEY_ID")
    for argv in (
        ("list", "--tenant", TENANT),
        ("show", "--tenant", TENANT, task_id),
        ("replay", "--tenant", TENANT, task_id),
    ):
        assert await cli(*argv) == 1
        err = capsys.readouterr().err
        assert "OPENCLAW_MASTER_KEYS" in err and "encrypted" in err, (argv, err)
        assert ERR_SECRET not in err
    assert (await rig.store.get(TENANT, task_id)).status == "failed"  # type: ignore[union-attr]

    monkeypatch.setenv("OPENCLAW_MASTER_KEYS", json.dumps(KEYS))
    monkeypatch.setenv("OPENCLAW_MASTER_KEY_ID", "k1")
    rig.service.broken = False
    assert await cli("replay", "--tenant", TENANT, "--all") == 0
    assert capsys.readouterr().out.split() == ["replayed", task_id]
    record = await rig.ended(task_id, "succeeded")
    assert record.result["body"] == {"ok": True, "calls": 2}
    assert await rig.letters.list(TENANT) == []
    await assert_no_plaintext(redis, namespace)

    channel = await amqp.channel()
    for queue in (defaults.retry_queue(d) for d in defaults.retry_delays_ms):
        await channel.queue_delete(queue)
    await channel.close()


def test_a_bad_master_key_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENCLAW_MASTER_KEYS", '{"k1": "c2hvcnQ="}')
    monkeypatch.setenv("OPENCLAW_MASTER_KEY_ID", "k1")
    assert cli_main(["dlq", "list"]) == 2
    err = capsys.readouterr().err
    assert "OPENCLAW_MASTER_KEYS" in err and "32 bytes" in err and "Traceback" not in err


async def test_a_replay_seals_an_unsealed_envelope_and_recreates_the_expired_record_sealed(
    rig: Rig, redis: Redis, namespace: str
) -> None:
    # Dead-lettered before encryption was turned on: a plaintext envelope, and its record since expired.
    env = rig.envelope(uuid.uuid4().hex)
    error = json.dumps({"code": "unavailable", "message": f"gave up: {ERR_SECRET}"})
    await rig.publisher.publish_to_queue(
        rig.topology.dead_queue, envelope.to_message(env, {ERROR_HEADER: error})
    )
    channel = await rig.amqp.channel()
    await rig.letters.collect(channel)
    await channel.close()
    (entry,) = await rig.letters.list(TENANT)
    assert entry.error["message"] == f"gave up: {ERR_SECRET}"
    details = await rig.letters.details(entry)
    assert details["envelope"]["inputs"] == {"secret": IN_SECRET}

    rig.service.broken = False
    await rig.letters.replay(TENANT, env.task_id)
    (published,) = rig.recorder.published
    assert published.workflow_json.startswith("enc:v1:") and published.inputs_json.startswith("enc:v1:")
    assert published.attempt == 1
    record = await rig.ended(env.task_id, "succeeded")
    assert record.name == "deliver" and record.result["status"] == 200
    fields = await rig.store.envelope_fields(TENANT, env.task_id)
    assert json.loads(fields["inputs"]) == {"secret": IN_SECRET}
    await assert_no_plaintext(redis, namespace)


async def test_without_keys_a_sealed_dead_letter_is_not_archived_nor_replayed(
    rig: Rig, redis: Redis, namespace: str
) -> None:
    task_id = await rig.submit()
    await rig.ended(task_id, "failed")
    keyless = DeadLetters(TaskStore(redis, namespace), rig.topology, rig.publisher)
    channel = await rig.amqp.channel()

    async def refused() -> InvalidInputError | None:
        try:
            await keyless.collect(channel)
        except InvalidInputError as exc:
            return exc
        return None

    # The copy is published just before the task's status is stored: it may still be on its way.
    caught = await eventually(refused, 10.0, "the sealed dead letter refused")
    assert "OPENCLAW_MASTER_KEYS" in caught.message and task_id in caught.message
    assert await keyless.list(TENANT) == []  # left in the queue, for a process with the keys
    await assert_no_plaintext(redis, namespace)
    await rig.letters.collect(channel)
    await channel.close()
    (entry,) = await rig.letters.list(TENANT)
    assert entry.task_id == task_id and ERR_SECRET in entry.error["message"]
    with pytest.raises(InvalidInputError, match="OPENCLAW_MASTER_KEYS"):
        await keyless.replay(TENANT, task_id)
    with pytest.raises(InvalidInputError, match="OPENCLAW_MASTER_KEYS"):
        await keyless.get(TENANT, task_id)
