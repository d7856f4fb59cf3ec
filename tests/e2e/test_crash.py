"""Crash test: executor processes killed with SIGKILL in the middle of 200 five-step workflows.

Two real executor processes consume one namespace on the real RabbitMQ and Redis. Each workflow alternates a
pause (an HTTP call to a test server that answers after a few tens of milliseconds, so kills land mid-run) with
a side effect: ``file_append_lines`` appends the step's name, ``sK``, to the task's own file. That step's
output, checkpointed in Redis, holds the file's size after its append, which names the one line the
checkpointed run wrote. Kills: executor-0 once a fifth of the tasks have ended, executor-1 once three fifths
have; each is restarted at once.

What the design guarantees, and what is asserted: every workflow succeeds; every step has one checkpoint; the
checkpointed run of each step is the last run of it (a completed step never runs again) and ran after its
predecessor's checkpointed run; a step runs more than once only when a worker died while it was in flight:
per task, at most one step run again per interrupted delivery. How often that happened is printed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiohttp import web
from redis.asyncio import Redis

from openclaw.launcher import StackConfig, free_port
from openclaw.v1 import tasks_pb2
from services.common.envelope import now_ms
from services.common.publisher import TaskPublisher
from services.common.taskstore import TaskRecord, TaskStore
from services.common.topology import Topology

pytestmark = pytest.mark.e2e

TENANT = "crash"
TASKS = 200
STEPS = 5
PAUSE_S = 0.05
ROOT = Path(__file__).resolve().parents[2]


def workflow(task_id: str, pause_url: str) -> dict[str, Any]:
    """Five effect steps s1..s5, each after a pause step p1..p5."""
    steps: list[dict[str, Any]] = []
    for k in range(1, STEPS + 1):
        steps.append({"id": f"p{k}", "type": "http_request", "params": {"url": f"{pause_url}/{task_id}/{k}"}})
        steps.append(
            {
                "id": f"s{k}",
                "type": "file_append_lines",
                "params": {"path": f"runs/{task_id}.log", "lines": f"s{k}"},
            }
        )
    return {"name": "crash", "steps": steps}


class PauseServer:
    """Answers each GET after PAUSE_S; counts the calls per path (a pause step's runs)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _pause(self, request: web.Request) -> web.Response:
        self.calls[request.match_info["tail"]] += 1
        await asyncio.sleep(PAUSE_S)
        return web.json_response({})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/pause/{tail:.+}", self._pause)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/pause"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class Executors:
    """Executor processes of one namespace, started, killed and restarted by name."""

    config: StackConfig
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, name: str) -> None:
        port = free_port()
        env = self.config.env()
        env.update(
            {
                "OPENCLAW_SERVICE_INSTANCE": name,
                "OPENCLAW_EXECUTOR_METRICS_PORT": str(port),
                "OPENCLAW_EXECUTOR_PREFETCH": "8",
                # A dead worker's tasks are taken over once their lease lapses: keep that short here.
                "OPENCLAW_EXECUTOR_LEASE_SECONDS": "2",
                "OPENCLAW_EXECUTOR_ALLOW_PRIVATE_NETWORK": "true",
                "OPENCLAW_ROUTER_ADDR": "127.0.0.1:1",
            }
        )
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "services.executor"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.ports[name] = port

    def ready(self, name: str) -> bool:
        assert self.procs[name].poll() is None, f"{name} exited:\n{self.log(name)}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(timeout=10)

    def stop_all(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(timeout=5)
        return codes

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.fixture
async def executors(
    namespace: str, rabbitmq_url: str, redis_url: str, tmp_path: Path
) -> AsyncIterator[Executors]:
    config = StackConfig(
        namespace=namespace,
        amqp_url=rabbitmq_url,
        redis_url=redis_url,
        storage_root=str(tmp_path / "storage"),
        log_dir=str(tmp_path / "log"),
    )
    (tmp_path / "log").mkdir()
    procs = Executors(config, tmp_path / "log")
    yield procs
    await asyncio.to_thread(procs.stop_all)
    connection = await aio_pika.connect(rabbitmq_url)
    await Topology(namespace).delete(await connection.channel())
    await connection.close()


@pytest.fixture
async def pause() -> AsyncIterator[PauseServer]:
    server = PauseServer()
    await server.start()
    yield server
    await server.stop()


async def until(check: Callable[[], bool | Awaitable[bool]], within: float, what: str) -> None:
    """Poll a (sync or async) check until it is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_sigkill_mid_run_loses_no_step_and_reruns_no_completed_step(
    executors: Executors, pause: PauseServer, redis: Redis, namespace: str, rabbitmq_url: str
) -> None:
    storage = Path(executors.config.storage_root) / TENANT / "runs"
    store = TaskStore(redis, namespace)
    connection = await aio_pika.connect_robust(rabbitmq_url)
    topology = Topology(namespace)
    publisher = TaskPublisher(connection, topology)
    try:
        for name in ("executor-0", "executor-1"):
            executors.start(name)
        await until(lambda: all(executors.ready(n) for n in executors.procs), 45, "both executors ready")

        # Submitted as the gateway does: the record first, then a confirmed persistent publish.
        ids = [uuid.uuid4().hex for _ in range(TASKS)]
        for task_id in ids:
            text = json.dumps(workflow(task_id, pause.url))
            await store.create(TaskRecord(id=task_id, tenant=TENANT, status="queued"), workflow_json=text)
            await publisher.publish(
                tasks_pb2.TaskEnvelope(
                    task_id=task_id,
                    tenant=TENANT,
                    type="workflow.run",
                    attempt=1,
                    max_attempts=3,
                    created_unix_ms=now_ms(),
                    workflow_json=text,
                )
            )

        async def ended() -> int:
            async with redis.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hget(store.task_key(TENANT, task_id), "status")
                statuses = await pipe.execute()
            return sum(s in ("succeeded", "failed", "cancelled") for s in statuses)

        async def at_least(count: int) -> bool:
            return await ended() >= count

        kills = [("executor-0", TASKS // 5), ("executor-1", 3 * TASKS // 5)]
        killed_at: list[int] = []
        for name, threshold in kills:
            await until(functools.partial(at_least, threshold), 60, f"{threshold} tasks ended")
            executors.kill(name)
            killed_at.append(await ended())
            executors.start(name)
        await until(functools.partial(at_least, TASKS), 90, "every task ended")
    finally:
        await publisher.close()
        await connection.close()

    effects_rerun = pauses_rerun = resumed_tasks = 0
    for task_id in ids:
        record = await store.get(TENANT, task_id, with_steps=True)
        assert record is not None and record.status == "succeeded", (task_id, record)
        starts = [e for e in await store.events(TENANT, task_id, count=1000) if e.type == "task.started"]
        interrupted = len(starts) - 1  # every step succeeds: a second start is a crash's redelivery
        resumed_tasks += interrupted > 0
        lines = (storage / f"{task_id}.log").read_text().splitlines()
        assert set(lines) == {f"s{k}" for k in range(1, STEPS + 1)}, f"{task_id}: {lines}"
        previous = 0  # the line index of the previous step's checkpointed run
        reruns = 0  # of this task's steps, pauses included
        for k in range(1, STEPS + 1):
            step = f"s{k}"
            state = record.steps[step]
            assert state["status"] == "succeeded"
            at = state["output"]["size"] // 3  # each line is "sK\n"
            assert lines[at - 1] == step, f"{task_id}: the checkpoint of {step} names line {at}: {lines}"
            runs = [i for i, line in enumerate(lines, 1) if line == step]
            assert runs[-1] == at, f"{task_id}: {step} ran again after its checkpoint: {lines}"
            assert runs[0] > previous, f"{task_id}: {step} ran before its predecessor completed: {lines}"
            effects_rerun += len(runs) - 1
            previous = at
            calls = pause.calls[f"{task_id}/{k}"]
            assert calls >= 1, f"{task_id}: pause p{k} never ran"
            pauses_rerun += calls - 1
            reruns += len(runs) - 1 + calls - 1
        # Steps run one after another: each interrupted delivery was in the middle of one step at most.
        assert reruns <= interrupted, f"{task_id}: {reruns} step(s) ran again after {interrupted} crash(es)"

    # The kills did land mid-run: each interrupted tasks that then resumed on another worker.
    assert resumed_tasks >= len(kills), f"only {resumed_tasks} task(s) were interrupted"
    print(
        f"\ncrash test: {TASKS} workflows x {2 * STEPS} steps, SIGKILL at {killed_at} tasks ended; "
        f"{resumed_tasks} task(s) resumed after a crash; effect steps run twice: {effects_rerun} of "
        f"{TASKS * STEPS}; pause steps run twice: {pauses_rerun} of {TASKS * STEPS}"
    )
    codes = executors.stop_all()
    assert codes == {"executor-0": 0, "executor-1": 0}, codes
