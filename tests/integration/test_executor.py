"""The executor against the real RabbitMQ and Redis, the real router (in-process) over gRPC and a real S3 endpoint.

Each test gets its own namespace (queues and Redis keys), publishes envelopes the way the gateway does
(task record in Redis first, then a confirmed publish), and polls the task store for the outcome.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from openclaw.v1 import tasks_pb2
from services.common.envelope import ERROR_HEADER, TENANT_HEADER, now_ms
from services.common.publisher import TaskPublisher
from services.common.taskstore import TaskRecord, TaskStore
from services.common.topology import TASK_ROUTING_KEY, Topology
from services.executor.bootstrap import ExecutorApp, build
from services.executor.settings import ExecutorSettings
from services.router.bootstrap import RouterApp
from services.router.bootstrap import build as build_router
from services.router.settings import RouterSettings
from services.simulator.app import Simulator
from services.simulator.app import start as start_simulator
from services.simulator.settings import SimulatorSettings

pytestmark = pytest.mark.integration

TENANT = "acme"
T = TypeVar("T")
ARTICLE: dict[str, Any] = {
    "name": "数据分析",
    "steps": [
        {"type": "file_download", "params": {"url": "s3://bucket/data.csv", "auth": "aws_credentials"}},
        {"type": "llm_call", "params": {"model": "claude-3", "prompt": "分析数据并生成报告摘要"}},
    ],
}


@pytest.fixture
async def llm() -> AsyncIterator[tuple[Simulator, RouterApp]]:
    """The provider simulator and the real router in front of it, on free loopback ports."""
    sim = await start_simulator(SimulatorSettings(port=0))
    router = build_router(
        RouterSettings(listen="127.0.0.1:0", metrics_port=0, simulator_url=sim.url),  # type: ignore[call-arg]
        env={},
        ops=False,
    )
    await router.start()
    yield sim, router
    await router.stop(0)
    await sim.stop()


class Harness:
    """Publishes tasks the way the gateway does and reads their outcome from Redis."""

    def __init__(
        self,
        *,
        amqp: AbstractRobustConnection,
        redis: Redis,
        topology: Topology,
        namespace: str,
        storage: Path,
        start: Callable[..., Awaitable[ExecutorApp]],
    ) -> None:
        self.amqp, self.topology, self.storage, self.start = amqp, topology, storage, start
        self.store = TaskStore(redis, namespace)
        self.publisher = TaskPublisher(amqp, topology)

    async def submit(
        self,
        workflow: dict[str, Any] | None = None,
        *,
        template: str = "",
        inputs: dict[str, Any] | None = None,
        max_attempts: int = 3,
        deadline_ms: int = 0,
        publish: bool = True,
    ) -> str:
        task_id = uuid.uuid4().hex
        workflow_json = json.dumps(workflow, ensure_ascii=False) if workflow is not None else ""
        await self.store.create(
            TaskRecord(
                id=task_id, tenant=TENANT, status="queued", name=(workflow or {}).get("name", template)
            ),
            workflow_json=workflow_json,
            inputs_json=json.dumps(inputs or {}),
        )
        if publish:
            await self.publisher.publish(
                self.envelope(task_id, workflow_json, template, inputs, max_attempts, deadline_ms)
            )
        return task_id

    @staticmethod
    def envelope(
        task_id: str,
        workflow_json: str,
        template: str = "",
        inputs: dict[str, Any] | None = None,
        max_attempts: int = 3,
        deadline_ms: int = 0,
    ) -> tasks_pb2.TaskEnvelope:
        return tasks_pb2.TaskEnvelope(
            task_id=task_id,
            tenant=TENANT,
            type="workflow.run",
            attempt=1,
            max_attempts=max_attempts,
            deadline_unix_ms=deadline_ms,
            created_unix_ms=now_ms(),
            workflow_json=workflow_json,
            template=template,
            inputs_json=json.dumps(inputs or {}),
        )

    async def wait(self, task_id: str, *statuses: str, within: float = 15.0) -> TaskRecord:
        wanted = statuses or ("succeeded", "failed", "cancelled")

        async def ended() -> TaskRecord | None:
            record = await self.store.get(TENANT, task_id, with_steps=True)
            return record if record is not None and record.status in wanted else None

        return await eventually(ended, within, f"task {task_id} reaching {wanted}")

    async def wait_event(self, task_id: str, event_type: str, step_id: str, within: float = 10.0) -> None:
        async def seen() -> bool:
            return (event_type, step_id) in await self.events(task_id)

        await eventually(seen, within, f"{event_type} {step_id} of task {task_id}")

    async def events(self, task_id: str) -> list[tuple[str, str]]:
        return [(e.type, e.step_id) for e in await self.store.events(TENANT, task_id, count=1000)]

    async def dead_letters(self, count: int, within: float = 10.0) -> list[AbstractIncomingMessage]:
        channel = await self.amqp.channel()
        queue = await channel.declare_queue(self.topology.dead_queue, passive=True)
        out: list[AbstractIncomingMessage] = []

        async def collected() -> bool:
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                out.append(message)
            return len(out) >= count

        await eventually(collected, within, f"{count} dead letters")
        await channel.close()
        assert len(out) == count
        return out

    async def dead_queue_depth(self) -> int:
        channel = await self.amqp.channel()
        queue = await channel.declare_queue(self.topology.dead_queue, passive=True)
        await channel.close()
        return int(queue.declaration_result.message_count or 0)

    async def publish_raw(self, body: bytes, **properties: Any) -> None:
        channel = await self.amqp.channel()
        exchange = await channel.get_exchange(self.topology.task_exchange)
        await exchange.publish(aio_pika.Message(body=body, **properties), routing_key=TASK_ROUTING_KEY)
        await channel.close()


@pytest.fixture
async def harness(
    amqp: AbstractRobustConnection,
    redis: Redis,
    topology: Topology,
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    tmp_path: Path,
) -> AsyncIterator[Harness]:
    apps: list[ExecutorApp] = []
    storage = tmp_path / "storage"

    async def start(router: RouterApp | None = None, **settings: Any) -> ExecutorApp:
        values: dict[str, Any] = {
            "namespace": namespace,
            "amqp_url": rabbitmq_url,
            "redis_url": redis_url,
            "metrics_port": 0,
            "storage_root": storage,
            "allow_private_network": True,
            "drain_seconds": 5.0,
            "router_addr": router.address if router is not None else "127.0.0.1:1",
        }
        values.update(settings)
        app = build(ExecutorSettings(**values), topology=topology)
        await app.start()
        apps.append(app)
        return app

    await topology.declare(await amqp.channel())
    h = Harness(amqp=amqp, redis=redis, topology=topology, namespace=namespace, storage=storage, start=start)
    yield h
    for app in apps:
        await app.stop()
    await h.publisher.close()


async def eventually(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    """Poll check until it returns something truthy; fail after `within` seconds (bounded, never a bare sleep)."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.03)


def outcome_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("openclaw_executor_tasks_total", {"outcome": outcome}) or 0.0


# -- the happy path ----------------------------------------------------------------------------------------


async def test_workflow_runs_end_to_end(
    harness: Harness, llm: tuple[Simulator, RouterApp], spans: InMemorySpanExporter
) -> None:
    _, router = llm
    app = await harness.start(router)
    workflow = {
        "name": "notes",
        "steps": [
            {"id": "save", "type": "file_write", "params": {"path": "notes/a.txt", "content": "alpha beta"}},
            {"id": "load", "type": "file_read", "params": {"path": "${{ steps.save.output.path }}"}},
            {
                "id": "ask",
                "type": "llm_call",
                "params": {
                    "model": "echo",
                    "prompt": "Repeat: ${{ steps.load.output.content }}",
                    "input": None,
                },
            },
            {"id": "shape", "type": "json_transform", "params": {"expression": "{said: content, by: model}"}},
        ],
        "outputs": {"answer": "${{ steps.shape.output }}", "file": "${{ steps.save.output.path }}"},
    }
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("submit") as submit_span:
        task_id = await harness.submit(workflow)
    record = await harness.wait(task_id)

    assert record.status == "succeeded", record.error
    assert record.result == {"answer": {"said": "Repeat: alpha beta", "by": "echo"}, "file": "notes/a.txt"}
    assert record.attempt == 1
    assert set(record.steps) == {"save", "load", "ask", "shape"}
    assert record.steps["ask"]["output"]["route"]["simulated"] is True
    assert await harness.events(task_id) == [
        ("task.queued", ""),
        ("task.started", ""),
        *[
            (kind, step)
            for step in ("save", "load", "ask", "shape")
            for kind in ("step.started", "step.completed")
        ],
        ("task.succeeded", ""),
    ]
    assert (harness.storage / TENANT / "notes" / "a.txt").read_text() == "alpha beta"

    # One trace: the submit span, the executor's CONSUMER span, its step and router spans.
    trace_id = submit_span.get_span_context().trace_id
    finished = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    consumer = [s for s in finished if s.kind == trace.SpanKind.CONSUMER]
    assert len(consumer) == 1
    assert consumer[0].attributes is not None
    assert consumer[0].attributes["messaging.system"] == "rabbitmq"
    assert consumer[0].attributes["messaging.destination.name"] == harness.topology.task_queue
    assert consumer[0].attributes["openclaw.task.id"] == task_id
    names = {s.name for s in finished}
    assert {"step save", "step ask", "RouterService/Chat"} <= names

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{app.ops_port}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {"amqp": "ok", "consumer": "consuming", "redis": "ok"}
        async with http.get(f"http://127.0.0.1:{app.ops_port}/metrics") as response:
            text = await response.text()
    assert 'openclaw_executor_tasks_total{outcome="succeeded"}' in text
    assert 'openclaw_executor_step_duration_seconds_count{outcome="succeeded",step_type="llm_call"}' in text


async def test_the_articles_workflow_with_s3(harness: Harness, llm: tuple[Simulator, RouterApp]) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        credentials = {
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "endpoint_url": f"http://{host}:{port}",
            "region_name": "us-east-1",
        }
        csv = "month,revenue\njan,100\nfeb,120\nmar,90\n"

        def seed() -> None:
            s3 = boto3.session.Session().client("s3", **credentials)  # type: ignore[call-overload]
            s3.create_bucket(Bucket="bucket")
            s3.put_object(Bucket="bucket", Key="data.csv", Body=csv.encode(), ContentType="text/csv")

        await asyncio.to_thread(seed)
        _, router = llm
        await harness.start(router, credentials={"aws_credentials": credentials})
        task_id = await harness.submit(ARTICLE)
        record = await harness.wait(task_id)
    finally:
        await asyncio.to_thread(server.stop)

    assert record.status == "succeeded", record.error
    download = record.steps["step1"]["output"]
    assert download["path"] == "data.csv" and download["size"] == len(csv)
    assert download["content_type"] == "text/csv" and download["text"] == csv
    assert (harness.storage / TENANT / "data.csv").read_text() == csv
    # The last step's output is the result; the model saw the prompt *and* the downloaded data.
    assert record.result["model"] == "claude-3"
    assert "分析数据并生成报告摘要" in record.result["content"]
    prompt = f"分析数据并生成报告摘要\n\nInput (data.csv):\n{csv}"
    assert record.result["usage"]["prompt_tokens"] == len(prompt.split())


async def test_a_template_runs_by_name(
    harness: Harness, llm: tuple[Simulator, RouterApp], tmp_path: Path
) -> None:
    sim, router = llm
    await harness.start(router)
    task_id = await harness.submit(
        template="summarise-url",
        inputs={"url": f"{sim.url}/healthz", "model": "echo"},
    )
    record = await harness.wait(task_id)
    assert record.status == "succeeded", record.error
    assert record.result["source"] == f"{sim.url}/healthz"
    assert record.result["summary"].startswith("Summarise this document in at most 3 sentences.\n\nInput:\n")


# -- bad input and failures ---------------------------------------------------------------------------------


async def test_poison_messages_are_dead_lettered_and_the_worker_keeps_working(harness: Harness) -> None:
    await harness.start()
    victim = await harness.submit(
        {"steps": [{"type": "json_transform", "params": {"expression": "@", "input": 1}}]}, publish=False
    )
    await harness.publish_raw(b"{not a protobuf}", content_type="application/json")
    await harness.publish_raw(
        b"\xff\xff\xff\xff",
        content_type="application/x-protobuf",
        message_id=victim,
        headers={TENANT_HEADER: TENANT},
    )
    dead = await harness.dead_letters(2)
    reasons = sorted(json.loads(str(m.headers[ERROR_HEADER]))["message"] for m in dead)
    assert reasons[0].startswith("message body is not a TaskEnvelope")
    assert reasons[1] == "unexpected content type 'application/json'"
    assert {m.body for m in dead} == {b"{not a protobuf}", b"\xff\xff\xff\xff"}

    record = await harness.wait(victim, "failed")
    assert record.error is not None and record.error["code"] == "poison_message"

    ok = await harness.submit(
        {"steps": [{"type": "json_transform", "params": {"expression": "a", "input": {"a": 7}}}]}
    )
    assert (await harness.wait(ok)).result == 7


async def test_an_invalid_workflow_fails_at_once(harness: Harness) -> None:
    await harness.start()
    task_id = await harness.submit({"steps": [{"type": "fly", "params": {}}]})
    record = await harness.wait(task_id)
    assert record.status == "failed"
    assert record.error is not None and record.error["code"] == "invalid_input"
    assert record.error["message"].startswith("steps[0].type: unknown step type 'fly'")
    assert ("task.started", "") not in await harness.events(task_id)


async def test_retryable_failures_retry_then_dead_letter(
    harness: Harness, llm: tuple[Simulator, RouterApp]
) -> None:
    sim, router = llm
    sim.behaviours.update("echo", {"outage": True})
    await harness.start(router)
    workflow = {"steps": [{"type": "llm_call", "params": {"model": "echo", "prompt": "hi"}}]}
    task_id = await harness.submit(workflow, max_attempts=3)

    record = await harness.wait(task_id, "failed", within=30)
    assert record.attempt == 3
    assert record.error is not None
    assert record.error["code"] == "unavailable" and record.error["attempts"] == 3
    assert record.error["step_id"] == "step1"
    assert record.error["message"].startswith("gave up after 3 attempts:")
    events = await harness.events(task_id)
    assert [t for t, _ in events].count("task.retrying") == 2
    assert [t for t, _ in events].count("task.started") == 3

    (dead,) = await harness.dead_letters(1)
    envelope = tasks_pb2.TaskEnvelope.FromString(dead.body)
    assert envelope.task_id == task_id and envelope.attempt == 3
    assert json.loads(str(dead.headers[ERROR_HEADER]))["attempts"] == 3


async def test_non_retryable_failures_fail_at_once(
    harness: Harness, llm: tuple[Simulator, RouterApp]
) -> None:
    _, router = llm
    await harness.start(router)
    task_id = await harness.submit(
        {"steps": [{"type": "llm_call", "params": {"model": "no-such-model", "prompt": "hi"}}]}
    )
    record = await harness.wait(task_id)
    assert record.status == "failed" and record.attempt == 1
    assert record.error is not None and record.error["code"] == "not_found" and not record.error["retryable"]
    assert "no-such-model" in record.error["message"]
    assert "task.retrying" not in [t for t, _ in await harness.events(task_id)]
    assert record.steps["step1"]["status"] == "failed"
    assert await harness.dead_queue_depth() == 0


async def test_a_task_past_its_deadline_fails(harness: Harness) -> None:
    await harness.start()
    task_id = await harness.submit(
        {"steps": [{"type": "json_transform", "params": {"expression": "@", "input": 1}}]},
        deadline_ms=now_ms() - 1000,
    )
    record = await harness.wait(task_id)
    assert record.status == "failed"
    assert record.error is not None and record.error["code"] == "deadline_exceeded"
    assert ("task.started", "") not in await harness.events(task_id)


# -- durability and cancellation ----------------------------------------------------------------------------


async def test_completed_steps_are_not_run_again(harness: Harness) -> None:
    await harness.start()
    workflow = {
        "steps": [
            {"type": "file_write", "params": {"path": "fresh.txt", "content": "written"}},
            {"type": "json_transform", "params": {"expression": "path"}},
        ]
    }
    task_id = await harness.submit(workflow, publish=False)
    await harness.store.checkpoint(
        TENANT,
        task_id,
        "step1",
        {
            "status": "succeeded",
            "type": "file_write",
            "output": {"path": "seeded.txt", "size": 1, "sha256": "x"},
        },
    )
    await harness.publisher.publish(harness.envelope(task_id, json.dumps(workflow)))
    record = await harness.wait(task_id)
    assert record.status == "succeeded", record.error
    assert record.result == "seeded.txt"
    assert not (harness.storage / TENANT / "fresh.txt").exists()
    assert ("step.started", "step1") not in await harness.events(task_id)


async def test_a_task_cancelled_while_queued_is_skipped(harness: Harness) -> None:
    await harness.start()
    before = outcome_count("cancelled")
    workflow = {"steps": [{"type": "file_write", "params": {"path": "never.txt", "content": "x"}}]}
    task_id = await harness.submit(workflow, publish=False)
    assert await harness.store.request_cancel(TENANT, task_id) == "cancelled"
    await harness.publisher.publish(harness.envelope(task_id, json.dumps(workflow)))

    async def skipped() -> bool:
        return outcome_count("cancelled") >= before + 1

    await eventually(skipped, 10, "the cancelled task to be skipped")
    assert outcome_count("cancelled") == before + 1
    assert ("task.started", "") not in await harness.events(task_id)
    assert not (harness.storage / TENANT / "never.txt").exists()


async def test_cancellation_between_steps(harness: Harness, llm: tuple[Simulator, RouterApp]) -> None:
    sim, router = llm
    sim.behaviours.update("echo", {"latency_ms": 600})
    await harness.start(router)
    workflow = {
        "steps": [
            {"id": "slow", "type": "llm_call", "params": {"model": "echo", "prompt": "hi"}},
            {"id": "after", "type": "file_write", "params": {"path": "after.txt", "content": "x"}},
        ]
    }
    task_id = await harness.submit(workflow)
    await harness.wait_event(task_id, "step.started", "slow")
    assert await harness.store.request_cancel(TENANT, task_id) == "running"
    record = await harness.wait(task_id)
    assert record.status == "cancelled"
    assert record.error is not None and record.error["step_id"] == "after"
    events = await harness.events(task_id)
    assert ("step.completed", "slow") in events and ("step.started", "after") not in events
    assert events[-1] == ("task.cancelled", "")
    assert not (harness.storage / TENANT / "after.txt").exists()


async def test_stopping_hands_in_flight_work_back(harness: Harness, llm: tuple[Simulator, RouterApp]) -> None:
    sim, router = llm
    sim.behaviours.update("echo", {"latency_ms": 3000})
    first = await harness.start(router, drain_seconds=0.2)
    task_id = await harness.submit(
        {"steps": [{"type": "llm_call", "params": {"model": "echo", "prompt": "hi"}}]}
    )
    await harness.wait_event(task_id, "step.started", "step1")
    await first.stop()
    assert (await harness.store.get(TENANT, task_id)) is not None
    assert (await harness.store.get(TENANT, task_id)).status == "running"  # type: ignore[union-attr]

    sim.behaviours.update("echo", {"latency_ms": 0})
    await harness.start(router)
    record = await harness.wait(task_id)
    assert record.status == "succeeded", record.error
    assert record.result["content"] == "hi"
    assert [t for t, _ in await harness.events(task_id)].count("task.started") == 2


async def test_stopping_lets_short_work_finish(harness: Harness, llm: tuple[Simulator, RouterApp]) -> None:
    sim, router = llm
    sim.behaviours.update("echo", {"latency_ms": 300})
    app = await harness.start(router, drain_seconds=10)
    task_id = await harness.submit(
        {"steps": [{"type": "llm_call", "params": {"model": "echo", "prompt": "hi"}}]}
    )
    await harness.wait_event(task_id, "step.started", "step1")
    await app.stop()
    record = await harness.store.get(TENANT, task_id)
    assert record is not None and record.status == "succeeded"


# -- one run at a time, infrastructure outages, crash loops -------------------------------------------------


class SlowServer:
    """A loopback HTTP server whose answers wait until the test lets them go; counts the requests."""

    def __init__(self) -> None:
        self.hits = 0
        self.release = asyncio.Event()
        self.url = ""
        self._runner: aiohttp.web.AppRunner | None = None

    async def start(self) -> None:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            self.hits += 1
            await self.release.wait()
            return web.json_response({"hit": self.hits})

        app = web.Application()
        app.router.add_get("/", handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def slow_server() -> AsyncIterator[SlowServer]:
    server = SlowServer()
    await server.start()
    yield server
    await server.stop()


async def test_a_duplicate_delivery_never_runs_beside_the_first_run(
    harness: Harness, slow_server: SlowServer
) -> None:
    # Worker A holds one delivery at a time, so the duplicate goes to worker B while A runs the step.
    await harness.start(prefetch=1)
    before = outcome_count("deferred")
    workflow = {"steps": [{"id": "call", "type": "http_request", "params": {"url": slow_server.url}}]}
    task_id = await harness.submit(workflow)
    await eventually(lambda: asyncio.sleep(0, slow_server.hits == 1), 10, "the first run's request")

    # What a connection blip or the broker's consumer timeout does: the same envelope delivered again.
    await harness.publisher.publish(harness.envelope(task_id, json.dumps(workflow)))
    await harness.start()
    await eventually(lambda: asyncio.sleep(0, outcome_count("deferred") >= before + 2), 10, "B to defer it")
    assert slow_server.hits == 1

    slow_server.release.set()
    record = await harness.wait(task_id)
    assert record.status == "succeeded", record.error
    assert record.result["body"] == {"hit": 1}

    # The deferred copy comes back, finds the task ended, and is dropped: still one run, one outcome.
    async def drained() -> bool:
        channel = await harness.amqp.channel()
        depths = []
        for name in (
            harness.topology.task_queue,
            *map(harness.topology.retry_queue, harness.topology.retry_delays_ms),
        ):
            queue = await channel.declare_queue(name, passive=True)
            depths.append(queue.declaration_result.message_count or 0)
        await channel.close()
        return not any(depths)

    await eventually(drained, 10, "the deferred copy to be consumed")
    await asyncio.sleep(0.5)
    assert slow_server.hits == 1
    events = [t for t, _ in await harness.events(task_id)]
    assert events.count("task.started") == 1 and events.count("task.succeeded") == 1
    assert await harness.dead_queue_depth() == 0


async def test_a_redelivery_to_the_worker_already_running_the_task_is_deferred(
    harness: Harness, slow_server: SlowServer
) -> None:
    await harness.start()
    workflow = {"steps": [{"id": "call", "type": "http_request", "params": {"url": slow_server.url}}]}
    task_id = await harness.submit(workflow)
    await eventually(lambda: asyncio.sleep(0, slow_server.hits == 1), 10, "the first run's request")
    before = outcome_count("deferred")
    await harness.publisher.publish(harness.envelope(task_id, json.dumps(workflow)))
    await eventually(lambda: asyncio.sleep(0, outcome_count("deferred") >= before + 1), 10, "the deferral")
    slow_server.release.set()
    record = await harness.wait(task_id)
    assert record.status == "succeeded" and slow_server.hits == 1


async def test_the_lease_is_renewed_while_a_long_step_runs(
    harness: Harness, slow_server: SlowServer, redis: Redis, namespace: str
) -> None:
    await harness.start(lease_seconds=0.6)
    workflow = {"steps": [{"id": "call", "type": "http_request", "params": {"url": slow_server.url}}]}
    task_id = await harness.submit(workflow)
    await eventually(lambda: asyncio.sleep(0, slow_server.hits == 1), 10, "the first run's request")
    key = f"{namespace}:{TENANT}:task:{task_id}"
    first = int(await redis.hget(key, "lease_until_ms"))  # type: ignore[misc]
    await asyncio.sleep(1.5)  # well past the first lease: only renewals keep it
    assert int(await redis.hget(key, "lease_until_ms")) > first + 1000  # type: ignore[misc]
    assert (await harness.store.claim(TENANT, task_id, attempt=1, owner="someone-else")).outcome == "leased"
    slow_server.release.set()
    assert (await harness.wait(task_id)).status == "succeeded"


async def test_redis_out_of_reach_puts_deliveries_back_instead_of_burning_the_delivery_limit(
    harness: Harness, rabbitmq_url: str, tmp_path: Path
) -> None:
    import socket

    from services.common.redis_client import open_redis

    with socket.socket() as sock:  # a port nobody listens on: Redis "down" for this executor
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    down = open_redis(f"redis://127.0.0.1:{closed_port}/0")
    settings = ExecutorSettings(
        namespace=harness.topology.namespace,
        amqp_url=rabbitmq_url,
        redis_url=f"redis://127.0.0.1:{closed_port}/0",
        metrics_port=0,
        storage_root=harness.storage,
        drain_seconds=1.0,
    )
    outage = build(settings, topology=harness.topology, redis=down)
    before = outcome_count("deferred")
    workflow = {"steps": [{"type": "json_transform", "params": {"expression": "a", "input": {"a": 3}}}]}
    task_ids = [await harness.submit(workflow) for _ in range(2)]
    await outage.start()
    try:
        # Each task went round well past the delivery limit (5) and was never dead-lettered.
        limit = harness.topology.delivery_limit
        await eventually(
            lambda: asyncio.sleep(0, outcome_count("deferred") >= before + 2 * (limit + 1)), 20, "put-backs"
        )
        assert await harness.dead_queue_depth() == 0
        for task_id in task_ids:
            record = await harness.store.get(TENANT, task_id)
            assert record is not None and record.status == "queued" and record.attempt == 0
    finally:
        await outage.stop()
        await down.aclose()

    await harness.start()  # Redis back
    for task_id in task_ids:
        record = await harness.wait(task_id)
        assert record.status == "succeeded" and record.result == 3 and record.attempt == 1
    assert await harness.dead_queue_depth() == 0


async def test_a_delivery_near_the_delivery_limit_is_failed_and_dead_lettered_with_the_reason(
    harness: Harness,
) -> None:
    workflow = {"steps": [{"type": "file_write", "params": {"path": "crash.txt", "content": "x"}}]}
    task_id = await harness.submit(workflow)
    # A worker crash loop, as the broker sees it: the delivery is returned unacknowledged, again and again.
    channel = await harness.amqp.channel()
    queue = await channel.declare_queue(harness.topology.task_queue, passive=True)
    for _ in range(harness.topology.delivery_limit - 1):
        message = await eventually(lambda: queue.get(fail=False), 5, "the delivery")
        await message.nack(requeue=True)
    await channel.close()

    await harness.start()
    record = await harness.wait(task_id)
    assert record.status == "failed"
    assert record.error is not None and record.error["code"] == "abandoned"
    assert record.error["message"] == "crashed or was abandoned by workers 4 times"
    assert ("task.started", "") not in await harness.events(task_id)
    assert not (harness.storage / TENANT / "crash.txt").exists()
    (dead,) = await harness.dead_letters(1)
    assert tasks_pb2.TaskEnvelope.FromString(dead.body).task_id == task_id
    assert json.loads(str(dead.headers[ERROR_HEADER]))["message"] == record.error["message"]


async def test_a_redelivered_task_below_the_limit_runs(harness: Harness) -> None:
    workflow = {"steps": [{"type": "json_transform", "params": {"expression": "a", "input": {"a": 1}}}]}
    task_id = await harness.submit(workflow)
    channel = await harness.amqp.channel()
    queue = await channel.declare_queue(harness.topology.task_queue, passive=True)
    message = await eventually(lambda: queue.get(fail=False), 5, "the delivery")
    await message.nack(requeue=True)
    await channel.close()
    await harness.start()
    assert (await harness.wait(task_id)).status == "succeeded"


async def test_an_unexpected_error_fails_the_task_and_dead_letters_the_delivery(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await harness.start()
    assert app.worker is not None

    async def bug(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(app.worker, "_run", bug)
    task_id = await harness.submit(
        {"steps": [{"type": "json_transform", "params": {"expression": "@", "input": 1}}]}
    )
    record = await harness.wait(task_id)
    assert record.status == "failed"
    assert record.error is not None and record.error["code"] == "internal"
    assert "ZeroDivisionError" in record.error["message"]
    (dead,) = await harness.dead_letters(1)
    assert dead.message_id == task_id
    assert "ZeroDivisionError" in json.loads(str(dead.headers[ERROR_HEADER]))["message"]


async def test_a_delivery_with_odd_headers_is_processed_normally(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime
    import decimal

    import pamqp.encode
    from pamqp import common as pamqp_common

    from services.common import envelope

    await harness.start()
    workflow = {"steps": [{"type": "json_transform", "params": {"expression": "a", "input": {"a": 5}}}]}
    task_id = await harness.submit(workflow, publish=False)
    message = envelope.to_message(
        harness.envelope(task_id, json.dumps(workflow)),
        {
            "x-not-utf8": "NOT-UTF8",
            "traceparent": "NOT-UTF8",
            "tracestate": 12,
            "baggage": ["a", 1, None],
            "x-table": {"nested": {"deeper": True}},
            "x-decimal": decimal.Decimal("1.5"),
            "x-time": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
            "x-bytes": bytearray(b"\x00\xff"),
            "x-none": None,
        },
    )
    encode = pamqp.encode.long_string

    def not_utf8(value: str) -> bytes:  # what a non-Python producer can send: a longstr that is not UTF-8
        if value == "NOT-UTF8":
            raw = b"\xff\xfe\xc3"
            return bytes(pamqp_common.Struct.integer.pack(len(raw)) + raw)
        return bytes(encode(value))

    monkeypatch.setattr(pamqp.encode, "long_string", not_utf8)
    channel = await harness.amqp.channel()
    await channel.default_exchange.publish(message, harness.topology.task_queue)
    await channel.close()
    monkeypatch.setattr(pamqp.encode, "long_string", encode)

    record = await harness.wait(task_id)
    assert record.status == "succeeded", record.error
    assert record.result == 5
    assert await harness.dead_queue_depth() == 0


async def test_a_task_that_succeeds_after_a_retry_keeps_no_error(harness: Harness) -> None:
    from aiohttp import web

    calls = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response({"ok": calls}, status=503 if calls == 1 else 200)

    app = web.Application()
    app.router.add_get("/", flaky)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await harness.start()
        task_id = await harness.submit(
            {"steps": [{"type": "http_request", "params": {"url": f"http://127.0.0.1:{port}/"}}]}
        )
        record = await harness.wait(task_id)
    finally:
        await runner.cleanup()
    assert record.status == "succeeded" and record.attempt == 2
    assert record.error is None
    assert "task.retrying" in [t for t, _ in await harness.events(task_id)]
