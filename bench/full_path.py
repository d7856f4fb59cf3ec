"""Full-path benchmark: HTTP → gateway → RabbitMQ → executor → gRPC router → simulator → result.

Method: the platform runs as real local processes (LocalStack, the same launcher as `openclaw run`), with a private
namespace and free ports. One client process (this one, aiohttp, one connection per concurrent worker) runs
closed-loop workers: each request submits a one-step workflow (`llm_call` on the simulated model `bench`) with
POST /v1/tasks?wait=30 (submit and long-poll in one request; GET /v1/tasks/{id}?wait=30 follows only if it has not
ended within the wait); the latency is the time until the ended task is read.
Each cell (concurrency × simulator latency) warms up for 2 s, then measures for --seconds; RPS = completed tasks /
measured time; failures are counted, never retried. The same client also measures the simulator alone (one
POST /v1/chat/completions per request) at the same settings: "added" is p50(full path) − p50(simulator alone),
the cost of the platform itself at concurrency 1. The peer, Celery (bench/celery_peer.py, method there), runs the
same work in the same run against the same simulator, and the table reports full path ÷ Celery. Everything shares
this machine's cores, client included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import aiohttp

from openclaw.launcher import LocalStack, StackConfig, ensure_local_services
from services.gateway.auth import mint_token

WORKFLOW = {"name": "bench", "steps": [{"type": "llm_call", "params": {"model": "bench", "prompt": "ping"}}]}


@dataclass
class Cell:
    target: str
    concurrency: int
    sim_latency_ms: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _task_once(session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> bool:
    async with session.post(
        f"{base}/v1/tasks", params={"wait": "30"}, json={"workflow": WORKFLOW}, headers=headers
    ) as response:
        if response.status not in (200, 202):
            return False
        body = await response.json()
    task_id = body["id"]
    while body["status"] not in ("succeeded", "failed", "cancelled"):
        async with session.get(
            f"{base}/v1/tasks/{task_id}", params={"wait": "30"}, headers=headers
        ) as response:
            body = await response.json()
    return bool(body["status"] == "succeeded")


async def _sim_once(session: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> bool:
    body = {"model": "bench", "messages": [{"role": "user", "content": "ping"}]}
    async with session.post(f"{base}/v1/chat/completions", json=body, headers=headers) as response:
        await response.read()
        return response.status == 200


async def _run_cell(
    target: str, base: str, headers: dict[str, str], concurrency: int, seconds: float
) -> Cell:
    once = _task_once if target == "full_path" else _sim_once
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = 0.0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                ok = await once(session, base, headers)
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if measuring:
                if ok:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        stop_at = time.monotonic() + 2.0
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        measuring = True
        began = time.monotonic()
        stop_at = began + seconds
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    return Cell(
        target,
        concurrency,
        0,
        len(latencies),
        errors,
        len(latencies) / elapsed,
        _pct(latencies, 0.5),
        _pct(latencies, 0.99),
    )


def _load_peer() -> ModuleType | None:
    try:
        from bench import celery_peer
    except ImportError:
        print("celery is not installed (pip install -e '.[bench]'): running without the peer", flush=True)
        return None
    return celery_peer


def _celery_cell(peer: ModuleType, simulator_url: str, concurrency: int, seconds: float) -> Cell:
    latencies, errors, elapsed = peer.run_closed_loop(simulator_url, concurrency, seconds)
    return Cell(
        "celery",
        concurrency,
        0,
        len(latencies),
        errors,
        len(latencies) / elapsed,
        _pct(latencies, 0.5),
        _pct(latencies, 0.99),
    )


async def _set_latency(sim_url: str, latency_ms: int) -> None:
    url = f"{sim_url}/_sim/models/bench"
    async with (
        aiohttp.ClientSession() as session,
        session.put(url, json={"latency_ms": latency_ms}) as response,
    ):
        response.raise_for_status()


async def _main(args: argparse.Namespace) -> list[Cell]:
    cells: list[Cell] = []
    tmp = tempfile.mkdtemp(prefix="openclaw-bench-")
    config = StackConfig.isolated(f"bench{uuid.uuid4().hex[:6]}", f"{tmp}/log", f"{tmp}/storage")
    config.executors = args.executors
    # The benchmark measures throughput: the per-tenant rate limit (on by default) would refuse it.
    config.extra_env = {"OPENCLAW_LOG_LEVEL": "warning", "OPENCLAW_RATE_LIMIT_ENABLED": "false"}
    models = Path(tmp) / "models.yaml"
    models.write_text(
        "models:\n"
        "  - name: bench\n    provider: openai\n    endpoint: ${OPENCLAW_SIMULATOR_URL}/v1\n"
        "    max_concurrency: 1000\n"
    )
    config.extra_env["OPENCLAW_ROUTER_MODELS"] = str(models)
    stack = LocalStack(config)
    peer = _load_peer() if args.peer == "celery" else None
    print(f"starting the platform ({args.executors} executor process(es)); logs in {tmp}/log", flush=True)
    stack.start(progress=True)
    try:
        token = mint_token(
            config.jwt_secret, tenant="bench", ttl_s=3600, issuer="openclaw", audience="openclaw-api"
        )
        headers = {"Authorization": f"Bearer {token}"}
        worker = None
        if peer is not None:
            print("starting the peer: a Celery worker (threads pool, 64 threads)", flush=True)
            worker = peer.start_worker(f"{tmp}/log/celery.log")
            await asyncio.to_thread(peer.wait_ready, config.simulator_url)
        for latency in args.latencies:
            await _set_latency(config.simulator_url, latency)
            for concurrency in args.concurrency:
                targets = ["simulator", "full_path"] + (["celery"] if peer is not None else [])
                for target in targets:
                    print(f"  {target:<10} c={concurrency:<3} sim={latency}ms ...", end="", flush=True)
                    if target == "celery":
                        assert peer is not None
                        cell = await asyncio.to_thread(
                            _celery_cell, peer, config.simulator_url, concurrency, args.seconds
                        )
                    else:
                        base_url = config.gateway_url if target == "full_path" else config.simulator_url
                        cell = await _run_cell(target, base_url, headers, concurrency, args.seconds)
                    cell.sim_latency_ms = latency
                    cells.append(cell)
                    print(
                        f" {cell.rps:8.1f} req/s  p50 {cell.p50_ms:7.2f} ms  p99 {cell.p99_ms:7.2f} ms  errors {cell.errors}",
                        flush=True,
                    )
    finally:
        if peer is not None and worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        stack.stop()
        await asyncio.to_thread(stack.purge)  # purge runs its own event loop
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--latencies", type=int, nargs="+", default=[0, 50], help="simulator latency in ms")
    parser.add_argument("--executors", type=int, default=1)
    parser.add_argument("--peer", choices=["celery", "none"], default="celery", help="measure Celery too")
    parser.add_argument("--out", default="bench/results/full_path.json")
    args = parser.parse_args()
    ensure_local_services()
    cells = asyncio.run(_main(args))
    print(
        "\n| sim latency | concurrency | simulator alone req/s · p50 | full path req/s · p50 · p99 | added p50 "
        "| Celery req/s · p50 · p99 | full path ÷ Celery (req/s) |"
    )
    print("|---|---|---|---|---|---|---|")

    def find(target: str, concurrency: int, latency: int) -> Cell | None:
        return next(
            (
                c
                for c in cells
                if (c.target, c.concurrency, c.sim_latency_ms) == (target, concurrency, latency)
            ),
            None,
        )

    for latency in args.latencies:
        for concurrency in args.concurrency:
            sim, full = find("simulator", concurrency, latency), find("full_path", concurrency, latency)
            peer = find("celery", concurrency, latency)
            assert sim is not None and full is not None
            peer_text = f"{peer.rps:.0f} · {peer.p50_ms:.2f} · {peer.p99_ms:.2f} ms" if peer else "—"
            ratio = f"{full.rps / peer.rps:.2f}×" if peer and peer.rps else "—"
            print(
                f"| {latency} ms | {concurrency} | {sim.rps:.0f} · {sim.p50_ms:.2f} ms | "
                f"{full.rps:.0f} · {full.p50_ms:.2f} · {full.p99_ms:.2f} ms | {full.p50_ms - sim.p50_ms:+.2f} ms "
                f"| {peer_text} | {ratio} |"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cells": [asdict(c) for c in cells], "args": vars(args)}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
