"""Executor benchmark: trivial one-step tasks through the whole platform beside Celery, and the engine's cost per step.

Method.
1. Full path. The platform runs as real local processes (LocalStack, as `openclaw run`: gateway, router, simulator
   and --executors executor processes, 2 by default) in a private namespace with every durability guarantee on:
   persistent messages with publisher confirms, quorum queue, manual acks after the outcome is stored, the task
   record, lease, step checkpoint and events in Redis. The client (this process, aiohttp) runs --concurrency
   closed-loop workers; each submits a one-step workflow (`math_sum` of [1, 2]) with POST /v1/tasks?wait=30, which
   answers when the task has ended (GET /v1/tasks/{id}?wait=30 follows only if it had not within the wait; the
   same one-publish, one-result-wait shape as Celery's apply_async + get). The gateway's per-tenant rate limit is
   off: throughput, not quotas, is measured. After --warmup tasks (not counted), --tasks tasks are timed from the first submit to the
   last result: tasks/s = tasks / that time. Failures are counted, never retried.
2. Peer. Celery 5 (installed by this benchmark into its own environment, --peer-env, so the project's
   dependencies are untouched) with RabbitMQ as broker, Redis as result backend, acks_late, and one worker with
   the prefork pool of 2 processes; the task adds two numbers. A client process in that environment runs the
   same closed loop (--concurrency threads, apply_async then AsyncResult.get) over the same counts. The report
   gives full path ÷ Celery.
3. Engine overhead. The engine alone, in this process, with an in-memory journal (no Redis) runs workflows of
   10 and of 100 steps of a no-op operation (10 × --engine-runs and --engine-runs times); the time per step, in
   microseconds, is what the engine itself adds to every step: scheduling, expression scope, params validation,
   output checks, metrics, spans. (The scope each step sees holds every earlier output, so long workflows cost
   a little more per step.)

Everything shares this machine's cores, client included: read the figures as indicative, and compare the two
systems within one run. Progress is printed while it runs. Never part of CI (`make bench-executor`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEER_QUEUE = os.environ.get("BENCH_PEER_QUEUE", "bench-executor-peer")
PEER_BROKER = os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
PEER_BACKEND = os.environ.get("BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/2")
WORKFLOW = {"name": "bench-trivial", "steps": [{"type": "math_sum", "params": {"items": [1, 2]}}]}

try:  # only in the peer's environment: this module is also the Celery app its worker loads
    from celery import Celery
except ImportError:
    peer_app: Any = None
else:
    peer_app = Celery("bench_executor_peer", broker=PEER_BROKER, backend=PEER_BACKEND)
    peer_app.conf.update(
        task_acks_late=True,
        task_default_queue=PEER_QUEUE,
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @peer_app.task(name="bench.trivial")  # type: ignore[untyped-decorator]
    def trivial(x: int, y: int) -> int:
        """The peer's one-step task."""
        return x + y


# -- the full path --------------------------------------------------------------------------------------------


async def _full_path(args: argparse.Namespace, base: str, headers: dict[str, str]) -> dict[str, Any]:
    import aiohttp

    seen: set[str] = set()

    def refused(what: str, status: int, body: Any) -> bool:
        if what not in seen:  # say once per kind why requests fail, not 5,000 times
            seen.add(what)
            print(f"    {what} answered {status}: {str(body)[:300]}", flush=True)
        return False

    async def once(session: aiohttp.ClientSession) -> bool:
        async with session.post(
            f"{base}/v1/tasks", params={"wait": "30"}, json={"workflow": WORKFLOW}, headers=headers
        ) as response:
            if response.status not in (200, 202):
                return refused("submit", response.status, await response.text())
            body = await response.json()
        task_id = body["id"]
        while True:
            if body["status"] in ("succeeded", "failed", "cancelled"):
                return (body["status"] == "succeeded" and body["result"] == 3) or refused("task", 200, body)
            async with session.get(f"{base}/v1/tasks/{task_id}", params={"wait": "30"}, headers=headers) as r:
                if r.status != 200:
                    return refused("result", r.status, await r.text())
                body = await r.json()

    async def batch(session: aiohttp.ClientSession, count: int, label: str) -> tuple[int, int, float]:
        left, done, errors = count, 0, 0

        async def worker() -> None:
            nonlocal left, done, errors
            while left > 0:
                left -= 1
                try:
                    ok = await once(session)
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                done += 1
                errors += not ok
                if done % 1000 == 0:
                    print(f"    {label}: {done}/{count}", flush=True)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        return done, errors, time.perf_counter() - began

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await batch(session, args.warmup, "warm-up")
        done, errors, seconds = await batch(session, args.tasks, "full path")
    return {"tasks": done, "errors": errors, "seconds": seconds, "tasks_per_s": done / seconds}


async def _platform(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    from openclaw.launcher import LocalStack, StackConfig
    from services.gateway.auth import mint_token

    config = StackConfig.isolated(f"benchx{uuid.uuid4().hex[:6]}", f"{tmp}/log", f"{tmp}/storage")
    config.executors = args.executors
    # Throughput, not quotas, is measured: the tenant's request rate limit would refuse part of the load.
    config.extra_env = {"OPENCLAW_LOG_LEVEL": "warning", "OPENCLAW_RATE_LIMIT_ENABLED": "false"}
    stack = LocalStack(config)
    print(f"starting the platform ({args.executors} executor processes); logs in {tmp}/log", flush=True)
    try:
        stack.start(progress=True)
        token = mint_token(
            config.jwt_secret, tenant="bench", ttl_s=3600, issuer="openclaw", audience="openclaw-api"
        )
        print(
            f"  full path: {args.warmup} warm-up, then {args.tasks} tasks at concurrency {args.concurrency}"
        )
        return await _full_path(args, config.gateway_url, {"Authorization": f"Bearer {token}"})
    finally:
        stack.stop()
        await asyncio.to_thread(stack.purge)  # purge runs its own event loop


# -- the peer -------------------------------------------------------------------------------------------------


def _peer_python(env_dir: Path) -> str:
    """The peer environment's interpreter, creating the environment with Celery on first use."""
    python = env_dir / "bin" / "python"
    if not python.exists():
        print(f"creating the peer environment {env_dir} (celery[redis]) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
        subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", "celery[redis]>=5.4,<6"], check=True)
    return str(python)


def _peer(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    python = _peer_python(Path(args.peer_env))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(f"{tmp}/celery.log", "ab")  # noqa: SIM115 - handed to the child process
    command = [python, "-m", "celery", "-A", "bench.executor:peer_app", "worker", "--pool", "prefork"]
    command += ["--concurrency", "2", "--loglevel", "WARNING", "-Q", PEER_QUEUE]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    print("starting the peer: one Celery worker, prefork pool of 2 processes", flush=True)
    worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = [python, "-m", "bench.executor", "--peer-client", "--tasks", str(args.tasks)]
        client += ["--warmup", str(args.warmup), "--concurrency", str(args.concurrency)]
        print(f"  Celery: {args.warmup} warm-up, then {args.tasks} tasks at concurrency {args.concurrency}")
        out = subprocess.run(client, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, timeout=1800)
        result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
        return result
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
        asyncio.run(_delete_queue(PEER_QUEUE))


async def _delete_queue(name: str) -> None:
    """Remove the peer's queue, which Celery declares durable, so no run leaves it behind."""
    import aio_pika

    from services.common.settings import CommonSettings

    connection = await aio_pika.connect(CommonSettings().amqp_url)
    try:
        await (await connection.channel()).queue_delete(name)
    finally:
        await connection.close()


def _peer_client(args: argparse.Namespace) -> int:
    """In the peer environment: purge, warm up, then time the closed loop; one JSON line on stdout."""
    assert peer_app is not None, "celery is not installed in this environment"
    peer_app.control.purge()
    trivial.apply_async(args=(1, 2)).get(timeout=120)  # the worker is up

    def batch(count: int, label: str) -> tuple[int, int, float]:
        lock = threading.Lock()
        state = {"left": count, "done": 0, "errors": 0}

        def caller() -> None:
            while True:
                with lock:
                    if state["left"] <= 0:
                        return
                    state["left"] -= 1
                try:
                    ok = trivial.apply_async(args=(1, 2)).get(timeout=60) == 3
                except Exception:
                    ok = False
                with lock:
                    state["done"] += 1
                    state["errors"] += not ok
                    if state["done"] % 1000 == 0:
                        print(f"    {label}: {state['done']}/{count}", file=sys.stderr, flush=True)

        threads = [threading.Thread(target=caller, daemon=True) for _ in range(args.concurrency)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return state["done"], state["errors"], time.perf_counter() - began

    batch(args.warmup, "warm-up")
    done, errors, seconds = batch(args.tasks, "Celery")
    print(json.dumps({"tasks": done, "errors": errors, "seconds": seconds, "tasks_per_s": done / seconds}))
    return 0


# -- the engine alone -----------------------------------------------------------------------------------------


async def _engine_overhead(runs: int, steps: int = 100) -> dict[str, Any]:
    from pydantic import BaseModel, ConfigDict

    from services.executor.context import OpContext, OpServices, RunState
    from services.executor.dsl import Step, parse_workflow
    from services.executor.engine import Engine
    from services.executor.ops import catalogue
    from services.executor.ops.base import Operation

    class NoParams(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

    async def nothing(_: NoParams, __: OpContext) -> None:
        return None

    noop = Operation(name="bench_noop", category="bench", description="nothing", params=NoParams, run=nothing)

    class MemoryJournal:
        """The worker's journal without Redis: checkpoints kept in a dict."""

        def __init__(self) -> None:
            self.steps: dict[str, Any] = {}

        async def completed_steps(self) -> dict[str, Any]:
            return {}

        async def step_started(self, step: Step) -> None:
            return None

        async def step_succeeded(self, step: Step, output: Any, duration_ms: float) -> None:
            self.steps[step.id] = output

        async def step_finished(
            self, step: Step, output: Any, duration_ms: float, *, status: str, error: dict[str, Any] | None
        ) -> None:
            self.steps[step.id] = output

        async def step_failed(self, step: Step, error: dict[str, Any], duration_ms: float) -> None:
            self.steps[step.id] = error

        async def cancel_requested(self) -> bool:
            return False

    ops = catalogue().with_operations(noop)
    engine = Engine(ops, OpServices(storage_root=Path(tempfile.gettempdir())))
    workflow = parse_workflow({"steps": [{"type": "bench_noop"} for _ in range(steps)]}, known_ops=ops)

    async def once() -> None:
        state = RunState(workflow=workflow, task_id="bench", tenant="bench", attempt=1, inputs={})
        await engine.run(workflow, state, MemoryJournal())

    for _ in range(max(1, runs // 10)):  # warm-up
        await once()
    began = time.perf_counter()
    for _ in range(runs):
        await once()
    seconds = time.perf_counter() - began
    return {"runs": runs, "steps": steps, "us_per_step": seconds / (runs * steps) * 1e6}


# -- main -----------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=5000, help="timed tasks per system")
    parser.add_argument("--warmup", type=int, default=500, help="tasks run first and not timed")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop callers")
    parser.add_argument("--executors", type=int, default=2, help="executor processes (Celery gets 2)")
    parser.add_argument("--engine-runs", type=int, default=300, help="runs of the 100-step engine workflow")
    parser.add_argument("--peer", choices=["celery", "none"], default="celery")
    parser.add_argument(
        "--peer-env", default=str(ROOT / "var" / "bench-peer-env"), help="Celery's environment"
    )
    parser.add_argument("--peer-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/executor.json")
    args = parser.parse_args()
    if args.peer_client:
        return _peer_client(args)

    from openclaw.launcher import ensure_local_services

    ensure_local_services()
    results: dict[str, Any] = {"args": vars(args)}
    results["engine"] = []
    for steps, runs in ((10, 10 * args.engine_runs), (100, args.engine_runs)):
        print(f"engine alone: {runs} runs of {steps} no-op steps ...", flush=True)
        results["engine"].append(asyncio.run(_engine_overhead(runs, steps)))
        print(f"  {results['engine'][-1]['us_per_step']:.1f} µs per step", flush=True)
    tmp = tempfile.mkdtemp(prefix="openclaw-bench-executor-")
    results["full_path"] = asyncio.run(_platform(args, tmp))
    print(f"  {results['full_path']['tasks_per_s']:.0f} tasks/s, {results['full_path']['errors']} errors")
    if args.peer == "celery":
        results["celery"] = _peer(args, tmp)
        print(f"  {results['celery']['tasks_per_s']:.0f} tasks/s, {results['celery']['errors']} errors")
        results["ratio"] = results["full_path"]["tasks_per_s"] / results["celery"]["tasks_per_s"]
    full, peer = results["full_path"], results.get("celery")
    print("\n| | tasks | errors | seconds | tasks/s |\n|---|---|---|---|---|")
    print(
        f"| full path | {full['tasks']} | {full['errors']} | {full['seconds']:.1f} | {full['tasks_per_s']:.0f} |"
    )
    if peer is not None:
        print(
            f"| Celery | {peer['tasks']} | {peer['errors']} | {peer['seconds']:.1f} | {peer['tasks_per_s']:.0f} |"
        )
        print(f"\nfull path ÷ Celery: {results['ratio']:.2f}×")
    for engine in results["engine"]:
        print(f"engine overhead: {engine['us_per_step']:.1f} µs per step in {engine['steps']}-step workflows")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
