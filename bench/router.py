"""Router benchmark: our gRPC router against the LiteLLM proxy, both in front of the same simulator.

Method: the simulator and our router run as local processes (the launcher, a private namespace, free ports), the
router with one model `bench` pointing at the simulator's OpenAI endpoint (max_concurrency 10,000, so the router's
queue never decides). LiteLLM's proxy is installed from PyPI into its own virtualenv (`.bench/litellm-venv`, once;
`--litellm-version` picks it), started with one model `bench` pointing at the same simulator endpoint, its access log
off, no database, a master key, `LITELLM_TELEMETRY=False` and `LITELLM_LOCAL_MODEL_COST_MAP=True` (FACTS.md), and
`--num_workers` as given (1 by default: one process each, as our router). The simulator answers after
--latency-ms (50 by default). One client process (this one) runs closed-loop workers at each concurrency: gRPC
`Chat` over one channel for our router, `POST /v1/chat/completions` over aiohttp for LiteLLM and for the simulator
alone. Each cell warms up 2 s, then measures --seconds; RPS = completed requests / measured time; errors are
counted, never retried. "added p50" = p50(target) − p50(simulator alone) at the same concurrency. Ratios are ours
÷ LiteLLM's in the same run. Everything (client included) shares this machine's cores.

The floor: `bench.bare_hop`, a bare grpc.aio server forwarding Chat to the simulator with aiohttp (the router's
two transports and nothing else), is measured in the same run as "bare hop", so the router's added latency can
be read against what its transports alone add on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import grpc

from openclaw.launcher import LocalStack, StackConfig, free_port, port_answers
from openclaw.v1 import router_pb2, router_pb2_grpc

LITELLM_VENV = Path(".bench/litellm-venv")
MASTER_KEY = "sk-bench-master-key"


@dataclass
class Cell:
    target: str
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _closed_loop(
    target: str, once: Callable[[], Awaitable[bool]], concurrency: int, seconds: float
) -> Cell:
    latencies: list[float] = []
    errors = 0
    measuring = False
    stop_at = time.monotonic() + 2.0

    async def worker() -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                ok = await once()
            except (aiohttp.ClientError, grpc.RpcError, TimeoutError):
                ok = False
            if measuring:
                if ok:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    measuring = True
    began = time.monotonic()
    stop_at = began + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - began
    return Cell(
        target,
        concurrency,
        len(latencies),
        errors,
        len(latencies) / elapsed,
        _pct(latencies, 0.5),
        _pct(latencies, 0.99),
    )


def _install_litellm(version: str) -> Path:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing LiteLLM {version or '(latest)'} into {LITELLM_VENV} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        spec = f"litellm[proxy]=={version}" if version else "litellm[proxy]"
        subprocess.run([str(python), "-m", "pip", "install", "-q", spec], check=True)
    return LITELLM_VENV / "bin" / "litellm"


def _start_litellm(
    binary: Path, simulator_url: str, workers: int, log_dir: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = Path(log_dir) / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: openai/bench\n"
        f"      api_base: {simulator_url}/v1\n"
        "      api_key: sk-simulated\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
    )
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": MASTER_KEY,
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
    }
    log = (Path(log_dir) / "litellm.log").open("ab")
    proc = subprocess.Popen(
        [str(binary), "--config", str(config), "--port", str(port), "--num_workers", str(workers)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not port_answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"LiteLLM did not start; see {log_dir}/litellm.log")
        time.sleep(0.5)
    return proc, f"http://127.0.0.1:{port}"


async def _set_latency(sim_url: str, latency_ms: int) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{sim_url}/_sim/models/bench", json={"latency_ms": latency_ms}) as response,
    ):
        response.raise_for_status()


async def _measure(
    args: argparse.Namespace, config: StackConfig, litellm_url: str | None, bare_port: int
) -> list[Cell]:
    body = {"model": "bench", "messages": [{"role": "user", "content": "ping"}]}
    cells: list[Cell] = []
    request = router_pb2.ChatRequest(
        model="bench", messages=[router_pb2.ChatMessage(role="user", content="ping")], tenant="bench"
    )
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{config.router_port}") as channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{bare_port}") as bare_channel,
    ):
        stub = router_pb2_grpc.RouterServiceStub(channel)
        bare_stub = router_pb2_grpc.RouterServiceStub(bare_channel)
        for concurrency in args.concurrency:
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=60)
            ) as http:

                async def sim() -> bool:
                    async with http.post(f"{config.simulator_url}/v1/chat/completions", json=body) as r:
                        await r.read()
                        return r.status == 200

                async def ours() -> bool:
                    await stub.Chat(request, timeout=60)
                    return True

                async def bare() -> bool:
                    await bare_stub.Chat(request, timeout=60)
                    return True

                async def litellm() -> bool:
                    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
                    async with http.post(
                        f"{litellm_url}/v1/chat/completions", json=body, headers=headers
                    ) as r:
                        await r.read()
                        return r.status == 200

                targets: list[tuple[str, Callable[[], Awaitable[bool]]]] = [
                    ("simulator", sim),
                    ("bare hop", bare),
                    ("openclaw", ours),
                ]
                if litellm_url:
                    targets.append(("litellm", litellm))
                for name, once in targets:
                    print(f"  {name:<9} c={concurrency:<3} ...", end="", flush=True)
                    cell = await _closed_loop(name, once, concurrency, args.seconds)
                    cells.append(cell)
                    print(
                        f" {cell.rps:8.1f} req/s  p50 {cell.p50_ms:7.2f} ms  p99 {cell.p99_ms:7.2f} ms  errors {cell.errors}",
                        flush=True,
                    )
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--peer", choices=["litellm", "none"], default="litellm")
    parser.add_argument("--litellm-version", default="")
    parser.add_argument("--litellm-workers", type=int, default=1)
    parser.add_argument("--out", default="bench/results/router.json")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="openclaw-bench-router-")
    config = StackConfig.isolated(f"benchr{uuid.uuid4().hex[:6]}", f"{tmp}/log", f"{tmp}/storage")
    models = Path(tmp) / "models.yaml"
    models.write_text(
        "models:\n  - name: bench\n    provider: openai\n    endpoint: ${OPENCLAW_SIMULATOR_URL}/v1\n"
        "    max_concurrency: 10000\n"
    )
    config.extra_env = {"OPENCLAW_LOG_LEVEL": "warning", "OPENCLAW_ROUTER_MODELS": str(models)}
    stack = LocalStack(config)
    litellm_proc = None
    print(f"starting simulator and router; logs in {tmp}/log", flush=True)
    stack.start(progress=True, only=("simulator", "router"))
    bare_port = free_port()
    bare_proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_hop", config.simulator_url, str(bare_port)],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_answers(bare_port):
            if bare_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the bare hop (bench.bare_hop) did not start")
            time.sleep(0.2)
        litellm_url = None
        if args.peer == "litellm":
            binary = _install_litellm(args.litellm_version)
            print(f"starting the LiteLLM proxy ({args.litellm_workers} worker(s))", flush=True)
            litellm_proc, litellm_url = _start_litellm(
                binary, config.simulator_url, args.litellm_workers, f"{tmp}/log"
            )
        asyncio.run(_set_latency(config.simulator_url, args.latency_ms))
        cells = asyncio.run(_measure(args, config, litellm_url, bare_port))
    finally:
        bare_proc.terminate()
        bare_proc.wait(timeout=30)
        if litellm_proc is not None:
            litellm_proc.terminate()
            litellm_proc.wait(timeout=30)
        stack.stop()
    print(f"\nsimulator latency {args.latency_ms} ms")
    print(
        "| concurrency | simulator alone req/s · p50 | bare hop req/s · added | OpenClaw req/s · p50 · p99 · added | LiteLLM req/s · p50 · p99 · added | OpenClaw ÷ LiteLLM req/s |"
    )
    print("|---|---|---|---|---|---|")
    for c in args.concurrency:
        row = {cell.target: cell for cell in cells if cell.concurrency == c}
        sim, ours, peer, floor = row["simulator"], row["openclaw"], row.get("litellm"), row["bare hop"]
        peer_text = (
            f"{peer.rps:.0f} · {peer.p50_ms:.2f} · {peer.p99_ms:.2f} · {peer.p50_ms - sim.p50_ms:+.2f} ms"
            if peer
            else "—"
        )
        ratio = f"{ours.rps / peer.rps:.1f}×" if peer and peer.rps else "—"
        print(
            f"| {c} | {sim.rps:.0f} · {sim.p50_ms:.2f} ms | {floor.rps:.0f} · {floor.p50_ms - sim.p50_ms:+.2f} ms "
            f"| {ours.rps:.0f} · {ours.p50_ms:.2f} · {ours.p99_ms:.2f} · "
            f"{ours.p50_ms - sim.p50_ms:+.2f} ms | {peer_text} | {ratio} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cells": [asdict(c) for c in cells], "args": vars(args)}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
