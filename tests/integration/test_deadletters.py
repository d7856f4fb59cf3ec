"""Dead letters against the real RabbitMQ and Redis: a task fails for good, lands in the dead queue, the fault is
fixed, the task is replayed and succeeds; listing is per tenant; replay refuses what it must not run again."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from redis.asyncio import Redis

from openclaw.cli import main as cli_main
from openclaw.v1 import tasks_pb2
from services.common import envelope
from services.common.envelope import ERROR_HEADER, now_ms
from services.common.errors import InvalidInputError, NotFoundError, UnavailableError
from services.common.publisher import TaskPublisher
from services.common.taskstore import TaskRecord, TaskStore
from services.common.topology import Topology
from services.executor.bootstrap import ExecutorApp, build
from services.executor.deadletters import DeadLetters
from services.executor.settings import ExecutorSettings

pytestmark = pytest.mark.integration

T = TypeVar("T")


class FaultyService:
    """An HTTP endpoint that answers 503 until it is fixed, counting every call."""

    def __init__(self) -> None:
        self.broken = True
        self.calls = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.broken:
            return web.json_response({"error": "down for maintenance"}, status=503)
        return web.json_response({"ok": True, "calls": self.calls})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/work", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/work"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Rig:
    """An executor, a faulty service, and tasks submitted the way the gateway does."""

    def __init__(
        self, amqp: AbstractRobustConnection, store: TaskStore, topology: Topology, storage: Path
    ) -> None:
        self.amqp, self.store, self.storage = amqp, store, storage
        self.publisher = TaskPublisher(amqp, topology)
        self.letters = DeadLetters(store, topology, self.publisher)
        self.service = FaultyService()

    def workflow(self) -> dict[str, Any]:
        """A side effect we can count (a line appended), then the call that fails while the service is down."""
        return {
            "name": "deliver",
            "steps": [
                {"id": "mark", "type": "file_append_lines", "params": {"path": "marks.log", "lines": "mark"}},
                {"id": "call", "type": "http_request", "params": {"url": self.service.url, "method": "POST"}},
            ],
        }

    async def submit(self, tenant: str, *, max_attempts: int = 2) -> str:
        task_id = uuid.uuid4().hex
        workflow_json = json.dumps(self.workflow())
        record = TaskRecord(id=task_id, tenant=tenant, status="queued", name="deliver")
        await self.store.create(record, workflow_json=workflow_json, inputs_json="{}")
        env = tasks_pb2.TaskEnvelope(
            task_id=task_id,
            tenant=tenant,
            type="workflow.run",
            attempt=1,
            max_attempts=max_attempts,
            deadline_unix_ms=now_ms() + 60_000,
            created_unix_ms=now_ms(),
            workflow_json=workflow_json,
            inputs_json="{}",
        )
        await self.publisher.publish(env)
        return task_id

    async def ended(self, tenant: str, task_id: str, status: str, within: float = 20.0) -> TaskRecord:
        async def check() -> TaskRecord | None:
            record = await self.store.get(tenant, task_id, with_steps=True)
            return record if record is not None and record.status == status else None

        return await eventually(check, within, f"task {task_id} {status}")

    async def collected(self, tenant: str, count: int) -> list[Any]:
        """Collect the dead queue until the tenant has ``count`` dead letters (the copy is published before
        the task's status is stored, so it may already be there, or arrive just after)."""
        channel = await self.amqp.channel()

        async def check() -> list[Any] | None:
            await self.letters.collect(channel)
            entries = await self.letters.list(tenant)
            return entries if len(entries) >= count else None

        try:
            entries = await eventually(check, 10.0, f"{count} dead letters of {tenant}")
        finally:
            await channel.close()
        assert len(entries) == count
        return entries

    async def status(self, tenant: str, task_id: str) -> str:
        record = await self.store.get(tenant, task_id)
        return record.status if record is not None else "missing"

    def marks(self, tenant: str) -> list[str]:
        path = self.storage / tenant / "marks.log"
        return path.read_text().splitlines() if path.exists() else []


async def eventually(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    """Poll check until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


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
    storage = tmp_path / "storage"
    rig = Rig(amqp, TaskStore(redis, namespace), topology, storage)
    await rig.service.start()
    settings = ExecutorSettings(
        namespace=namespace,
        amqp_url=rabbitmq_url,
        redis_url=redis_url,
        metrics_port=0,
        storage_root=storage,
        allow_private_network=True,
        drain_seconds=5.0,
        router_addr="127.0.0.1:1",
    )
    app: ExecutorApp = build(settings, topology=topology)
    await app.start()
    yield rig
    await app.stop()
    await rig.publisher.close()
    await rig.service.stop()


async def test_a_dead_lettered_task_is_replayed_once_the_fault_is_fixed(rig: Rig, redis: Redis) -> None:
    task_id = await rig.submit("acme", max_attempts=2)
    failed = await rig.ended("acme", task_id, "failed")
    assert (
        failed.error is not None and failed.error["code"] == "unavailable" and failed.error["attempts"] == 2
    )
    assert rig.service.calls == 2 and rig.marks("acme") == ["mark"]
    task_key = rig.store.task_key("acme", task_id)
    assert await redis.ttl(task_key) > 0  # an ended task's keys expire

    (entry,) = await rig.collected("acme", 1)
    assert entry.task_id == task_id and entry.name == "deliver" and entry.times == 1
    assert entry.error["code"] == "unavailable"
    assert entry.error["message"].startswith("gave up after 2 attempts:")
    shown = entry.details()
    assert shown["envelope"]["attempt"] == 2 and shown["envelope"]["workflow"]["name"] == "deliver"

    rig.service.broken = False
    await rig.letters.replay("acme", task_id)
    record = await rig.ended("acme", task_id, "succeeded")
    assert record.result["status"] == 200 and record.result["body"] == {"ok": True, "calls": 3}
    assert record.attempt == 1 and record.error is None
    # The completed step was kept and did not run again; the failed one ran once more and succeeded.
    assert rig.marks("acme") == ["mark"]
    assert record.steps["mark"]["status"] == "succeeded" and record.steps["call"]["status"] == "succeeded"
    assert await rig.letters.list("acme") == []
    events = [e.type for e in await rig.store.events("acme", task_id, count=1000)]
    assert events.count("task.replayed") == 1 and events[-1] == "task.succeeded"
    assert events.index("task.failed") < events.index("task.replayed")
    assert await rig.store.wait_ended("acme", task_id)
    assert await redis.hget(task_key, "replays") == "1"  # type: ignore[misc]
    assert await redis.hget(task_key, "replay_pending") is None  # type: ignore[misc]


async def test_replay_from_start_runs_every_step_again(rig: Rig) -> None:
    task_id = await rig.submit("acme", max_attempts=1)
    await rig.ended("acme", task_id, "failed")
    await rig.collected("acme", 1)
    rig.service.broken = False
    await rig.letters.replay("acme", task_id, from_start=True)
    record = await rig.ended("acme", task_id, "succeeded")
    assert rig.marks("acme") == ["mark", "mark"]
    assert record.steps["mark"]["status"] == "succeeded"


async def test_a_task_whose_record_expired_is_recreated_from_its_envelope(rig: Rig, redis: Redis) -> None:
    task_id = await rig.submit("acme", max_attempts=1)
    await rig.ended("acme", task_id, "failed")
    await rig.collected("acme", 1)
    task_key = rig.store.task_key("acme", task_id)
    await redis.delete(task_key, f"{task_key}:events", f"{task_key}:steps", f"{task_key}:done")

    rig.service.broken = False
    await rig.letters.replay("acme", task_id)
    record = await rig.ended("acme", task_id, "succeeded")
    assert record.name == "deliver" and record.tenant == "acme"
    # Its checkpoints expired with it: the whole workflow ran again.
    assert rig.marks("acme") == ["mark", "mark"]


async def test_listing_and_replay_are_per_tenant(rig: Rig) -> None:
    acme = await rig.submit("acme", max_attempts=1)
    globex = await rig.submit("globex", max_attempts=1)
    await rig.ended("acme", acme, "failed")
    await rig.ended("globex", globex, "failed")
    assert [e.task_id for e in await rig.collected("acme", 1)] == [acme]
    assert [e.task_id for e in await rig.letters.list("globex")] == [globex]
    assert set(await rig.letters.tenants()) >= {"acme", "globex"}

    with pytest.raises(NotFoundError, match=f"tenant 'globex' has no dead letter '{acme}'"):
        await rig.letters.get("globex", acme)
    with pytest.raises(NotFoundError):
        await rig.letters.replay("globex", acme)
    with pytest.raises(InvalidInputError, match="invalid tenant id"):
        await rig.letters.list("acme:task")
    assert await rig.status("acme", acme) == "failed"


async def test_replay_refuses_a_task_that_ran_again_and_drop_forgets_it(
    rig: Rig, amqp: AbstractRobustConnection, topology: Topology
) -> None:
    task_id = await rig.submit("acme", max_attempts=1)
    await rig.ended("acme", task_id, "failed")
    (entry,) = await rig.collected("acme", 1)
    rig.service.broken = False
    await rig.letters.replay("acme", task_id)
    await rig.ended("acme", task_id, "succeeded")
    # A stale copy of the same dead letter (say, a duplicate from a worker that died while storing the status).
    stale = envelope.to_message(tasks_pb2.TaskEnvelope.FromString(entry.envelope), {ERROR_HEADER: "{}"})
    await rig.publisher.publish_to_queue(topology.dead_queue, stale)
    await rig.collected("acme", 1)

    with pytest.raises(InvalidInputError, match="is succeeded, not failed"):
        await rig.letters.replay("acme", task_id)
    assert await rig.status("acme", task_id) == "succeeded"
    assert [e.task_id for e in await rig.letters.list("acme")] == [task_id]
    await rig.letters.drop("acme", task_id)
    assert await rig.letters.list("acme") == []
    with pytest.raises(NotFoundError):
        await rig.letters.drop("acme", task_id)


async def test_undecodable_messages_are_kept_apart(rig: Rig, topology: Topology) -> None:
    garbage = aio_pika.Message(body=b"\xff\xfe not a task", content_type="text/plain", message_id="m1")
    await rig.publisher.publish_to_queue(topology.dead_queue, garbage)
    channel = await rig.amqp.channel()
    collected = await rig.letters.collect(channel)
    await channel.close()
    assert collected.undecodable == 1 and collected.archived == {}
    assert await rig.letters.undecodable() == 1
    assert "acme" not in await rig.letters.tenants()


async def test_the_cli_lists_and_replays(
    rig: Rig, namespace: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = await rig.submit("acme", max_attempts=1)
    second = await rig.submit("acme", max_attempts=1)
    await rig.ended("acme", first, "failed")
    await rig.ended("acme", second, "failed")
    monkeypatch.setenv("OPENCLAW_NAMESPACE", namespace)
    # The CLI declares the topology with the default delay queues; remove them with the rest afterwards.
    defaults = Topology(namespace)
    channel = await rig.amqp.channel()
    cleanup = [defaults.retry_queue(d) for d in defaults.retry_delays_ms]

    async def cli(*argv: str) -> int:
        return await asyncio.to_thread(cli_main, ["dlq", *argv])

    async def both_listed() -> str | None:
        assert await cli("list", "--tenant", "acme", "--json") == 0
        out = capsys.readouterr().out
        return out if out.count("\n") == 2 else None

    listed = await eventually(both_listed, 10.0, "two dead letters listed")
    rows = [json.loads(line) for line in listed.splitlines()]
    assert {r["task_id"] for r in rows} == {first, second}
    assert {r["code"] for r in rows} == {"unavailable"}

    assert await cli("replay", "--tenant", "acme") == 2  # neither --all nor ids
    assert await cli("show", "--tenant", "acme", "nope") == 1
    assert "has no dead letter 'nope'" in capsys.readouterr().err
    rig.service.broken = False
    assert await cli("replay", "--tenant", "acme", "--all") == 0
    assert sorted(capsys.readouterr().out.split()) == sorted(["replayed", first, "replayed", second])
    await rig.ended("acme", first, "succeeded")
    await rig.ended("acme", second, "succeeded")
    for queue in cleanup:
        await channel.queue_delete(queue)
    await channel.close()


async def test_a_replay_whose_publish_failed_can_be_run_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = await rig.submit("acme", max_attempts=1)
    await rig.ended("acme", task_id, "failed")
    await rig.collected("acme", 1)
    rig.service.broken = False

    async def refused(*_: Any, **__: Any) -> None:
        raise UnavailableError("RabbitMQ refused the publish: test")

    with monkeypatch.context() as patch:
        patch.setattr(rig.publisher, "publish", refused)
        with pytest.raises(UnavailableError):
            await rig.letters.replay("acme", task_id)
    # Reset but not published: the task waits, queued, and the entry is still there to finish the replay.
    assert await rig.status("acme", task_id) == "queued"
    assert [e.task_id for e in await rig.letters.list("acme")] == [task_id]
    await rig.letters.replay("acme", task_id)
    await rig.ended("acme", task_id, "succeeded")
    assert rig.marks("acme") == ["mark"]


async def test_a_message_rabbitmq_dead_lettered_itself_is_listed_with_its_reason(
    rig: Rig, topology: Topology
) -> None:
    env = tasks_pb2.TaskEnvelope(
        task_id="t1", tenant="acme", type="workflow.run", attempt=1, workflow_json="{}"
    )
    message = envelope.to_message(env, {"x-first-death-reason": "delivery_limit"})
    await rig.publisher.publish_to_queue(topology.dead_queue, message)
    (entry,) = await rig.collected("acme", 1)
    assert entry.error == {
        "code": "dead_lettered_by_broker",
        "message": "RabbitMQ dead-lettered the message: delivery_limit",
    }
