"""The peer for the full-path benchmark: Celery doing the same work (one LLM call to the simulator per task).

Method: a Celery 5 app with RabbitMQ as broker (persistent messages, acks_late: acknowledged after the task ran,
as our executor does) and Redis as result backend — Celery's usual production setup. The task POSTs one chat
completion to the same simulator our router calls (no router hop: the peer gets the shorter path). The worker uses
the threads pool with 64 threads, so it can hold as many calls in flight as the load offers, on one process
(our executor is one process too). The client submits with apply_async and waits with AsyncResult.get, one
thread per concurrent caller, closed loop, and reports RPS and p50/p99 like bench/full_path.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

from celery import Celery

BROKER = os.environ.get("BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND = os.environ.get("BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/1")
QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench-celery")

app = Celery("bench_peer", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_acks_late=True,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=1,
    result_expires=600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.llm_call")  # type: ignore[untyped-decorator]
def llm_call(simulator_url: str, model: str, prompt: str) -> dict[str, object]:
    """One chat completion against the simulator, like our llm_call step."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]}).encode()
    request = urllib.request.Request(
        f"{simulator_url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        reply: dict[str, object] = json.loads(response.read())
    return reply


def start_worker(log_path: str, threads: int = 64) -> subprocess.Popen[bytes]:
    """A Celery worker process for the peer app."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.celery_peer",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(threads),
            "--loglevel",
            "WARNING",
            "-Q",
            QUEUE,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(simulator_url: str, timeout_s: float = 60.0) -> None:
    """Block until the worker runs a task."""
    llm_call.apply_async(args=(simulator_url, "bench", "warm up")).get(timeout=timeout_s)


def run_closed_loop(
    simulator_url: str, concurrency: int, seconds: float, warmup_s: float = 2.0
) -> tuple[list[float], int, float]:
    """Latencies (ms) of successful tasks, the error count and the measured wall time."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    measuring = threading.Event()
    stop_at = [time.monotonic() + warmup_s + seconds]

    def caller() -> None:
        nonlocal errors
        while time.monotonic() < stop_at[0]:
            start = time.perf_counter()
            try:
                llm_call.apply_async(args=(simulator_url, "bench", "ping")).get(timeout=30)
                ok = True
            except Exception:
                ok = False
            if measuring.is_set():
                with lock:
                    if ok:
                        latencies.append((time.perf_counter() - start) * 1000)
                    else:
                        errors += 1

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(warmup_s)
    measuring.set()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    return latencies, errors, time.monotonic() - began


def purge() -> None:
    """Empty the peer's queue (leftovers from an interrupted run)."""
    app.control.purge()


Runner = Callable[[str, int, float], tuple[list[float], int, float]]
