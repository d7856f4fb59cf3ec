"""Runs the whole platform as local processes: simulator, router, executor(s) and gateway.

Used by `openclaw run`, the end-to-end tests and the benchmarks, so all three start the platform the same way.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_SERVICE_COMMANDS: dict[int, list[str]] = {
    5672: ["rabbitmq-server", "-detached"],
    6379: ["redis-server", "--daemonize", "yes", "--port", "6379", "--save", "", "--appendonly", "no"],
}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ensure_local_services(timeout_s: float = 90.0) -> None:
    """Start RabbitMQ and Redis if they are installed but not answering."""
    for port, command in _SERVICE_COMMANDS.items():
        if port_answers(port):
            continue
        if shutil.which(command[0]) is None:
            raise RuntimeError(f"nothing answers on port {port} and {command[0]} is not installed")
        print(f"starting {command[0]} ...", flush=True)
        subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not port_answers(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not answer on port {port} within {timeout_s:.0f}s")
            time.sleep(0.5)
        if port == 5672 and shutil.which("rabbitmqctl"):
            subprocess.run(["rabbitmqctl", "await_startup"], check=False, capture_output=True, timeout=120)


@dataclass
class StackConfig:
    """Where each process listens and what it connects to; defaults are the documented ports."""

    namespace: str = "openclaw"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str = "redis://127.0.0.1:6379/0"
    simulator_port: int = 8090
    router_port: int = 50051
    router_metrics_port: int = 9102
    executor_metrics_port: int = 9103
    gateway_http_port: int = 8080
    gateway_grpc_port: int = 50052
    executors: int = 1
    jwt_secret: str = "dev-only-secret-change-me-0123456789abcdef"
    otlp_endpoint: str = ""
    storage_root: str = "./var/storage"
    log_dir: str = "./var/log"
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def isolated(cls, namespace: str, log_dir: str, storage_root: str) -> StackConfig:
        """Free ports and a private namespace, so a stack can run beside another (tests, benchmarks)."""
        return cls(
            namespace=namespace,
            simulator_port=free_port(),
            router_port=free_port(),
            router_metrics_port=free_port(),
            executor_metrics_port=0,
            gateway_http_port=free_port(),
            gateway_grpc_port=free_port(),
            log_dir=log_dir,
            storage_root=storage_root,
        )

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_http_port}"

    @property
    def simulator_url(self) -> str:
        return f"http://127.0.0.1:{self.simulator_port}"

    def env(self) -> dict[str, str]:
        """The environment every service process gets."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLAW_")}
        env.update(
            {
                "OPENCLAW_ENV": "dev",
                "OPENCLAW_NAMESPACE": self.namespace,
                "OPENCLAW_AMQP_URL": self.amqp_url,
                "OPENCLAW_REDIS_URL": self.redis_url,
                "OPENCLAW_OTLP_ENDPOINT": self.otlp_endpoint,
                "OPENCLAW_SIMULATOR_PORT": str(self.simulator_port),
                "OPENCLAW_SIMULATOR_URL": self.simulator_url,
                "OPENCLAW_ROUTER_LISTEN": f"127.0.0.1:{self.router_port}",
                "OPENCLAW_ROUTER_METRICS_PORT": str(self.router_metrics_port),
                "OPENCLAW_ROUTER_ADDR": f"127.0.0.1:{self.router_port}",
                "OPENCLAW_EXECUTOR_METRICS_PORT": str(self.executor_metrics_port),
                "OPENCLAW_EXECUTOR_STORAGE_ROOT": self.storage_root,
                "OPENCLAW_GATEWAY_HTTP_PORT": str(self.gateway_http_port),
                "OPENCLAW_GATEWAY_GRPC_PORT": str(self.gateway_grpc_port),
                "OPENCLAW_JWT_SECRET": self.jwt_secret,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env


async def _purge(config: StackConfig) -> None:
    import aio_pika

    from services.common.redis_client import open_redis
    from services.common.topology import Topology

    connection = await aio_pika.connect(config.amqp_url)
    try:
        await Topology(config.namespace).delete(await connection.channel())
    finally:
        await connection.close()
    redis = open_redis(config.redis_url)
    try:
        async for key in redis.scan_iter(match=f"{config.namespace}:*", count=1000):
            await redis.delete(key)
    finally:
        await redis.aclose()


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path


class LocalStack:
    """Starts, watches and stops the platform's processes; logs go to one file per process."""

    def __init__(self, config: StackConfig, *, python: str = sys.executable, cwd: str | None = None) -> None:
        self.config = config
        self._python = python
        self._cwd = cwd or str(Path(__file__).resolve().parent.parent)
        self._procs: list[_Proc] = []
        self.metrics_urls: dict[str, str] = {}  # process name -> its Prometheus /metrics URL, once started

    def _spawn(self, name: str, module: str, env_overrides: dict[str, str] | None = None) -> _Proc:
        log_dir = Path(self.config.log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        log = log_path.open("ab")
        env = self.config.env()
        env.update(env_overrides or {})
        env["OPENCLAW_SERVICE_INSTANCE"] = name
        popen = subprocess.Popen(
            [self._python, "-m", module],
            cwd=self._cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own process group: a terminal's Ctrl-C reaches only us, and we stop the services in order.
            start_new_session=True,
        )
        proc = _Proc(name, popen, log, log_path)
        self._procs.append(proc)
        return proc

    def _wait_http(self, proc: _Proc, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{proc.name} not ready at {url} within {timeout_s:.0f}s; see {proc.log_path}")

    def _wait_port(self, proc: _Proc, port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not port_answers(port):
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{proc.name} not listening on {port} within {timeout_s:.0f}s; see {proc.log_path}"
                )
            time.sleep(0.1)

    def start(
        self, timeout_s: float = 60.0, progress: bool = False, only: Collection[str] | None = None
    ) -> None:
        """Start every process (or ``only`` those named) in dependency order and wait until each is ready."""
        cfg = self.config
        wanted = set(only) if only is not None else {"simulator", "router", "executor", "gateway"}

        def step(message: str) -> None:
            if progress:
                print(message, flush=True)

        if "simulator" in wanted:
            step(f"simulator   http://127.0.0.1:{cfg.simulator_port}  (SIMULATED provider, not a real model)")
            sim = self._spawn("simulator", "services.simulator")
            self._wait_http(sim, f"{cfg.simulator_url}/healthz", timeout_s)
        if "router" in wanted:
            step(f"router      grpc 127.0.0.1:{cfg.router_port}  metrics :{cfg.router_metrics_port}")
            router = self._spawn("router", "services.router")
            self._wait_port(router, cfg.router_port, timeout_s)
            self.metrics_urls["router"] = f"http://127.0.0.1:{cfg.router_metrics_port}/metrics"
        for i in range(cfg.executors if "executor" in wanted else 0):
            step(f"executor-{i}  consuming {cfg.namespace}.tasks")
            metrics_port = cfg.executor_metrics_port + i if cfg.executor_metrics_port else free_port()
            executor = self._spawn(
                f"executor-{i}", "services.executor", {"OPENCLAW_EXECUTOR_METRICS_PORT": str(metrics_port)}
            )
            self._wait_http(executor, f"http://127.0.0.1:{metrics_port}/readyz", timeout_s)
            self.metrics_urls[f"executor-{i}"] = f"http://127.0.0.1:{metrics_port}/metrics"
        if "gateway" in wanted:
            step(f"gateway     {cfg.gateway_url}  grpc 127.0.0.1:{cfg.gateway_grpc_port}")
            gateway = self._spawn("gateway", "services.gateway")
            self._wait_http(gateway, f"{cfg.gateway_url}/readyz", timeout_s)
            self.metrics_urls["gateway"] = f"{cfg.gateway_url}/metrics"

    def check_alive(self) -> list[str]:
        """Names of processes that have exited."""
        return [p.name for p in self._procs if p.popen.poll() is not None]

    def stop(self, grace_s: float = 25.0) -> dict[str, int | None]:
        """SIGTERM in reverse order (gateway first), SIGKILL whatever outlives the grace period."""
        codes: dict[str, int | None] = {}
        for proc in reversed(self._procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(timeout=5)
            codes[proc.name] = proc.popen.returncode
            proc.log.close()
        self._procs.clear()
        return codes

    def purge(self) -> None:
        """Delete this stack's queues and Redis keys (isolated stacks of tests and benchmarks)."""
        asyncio.run(_purge(self.config))

    def kill(self, name: str) -> None:
        """SIGKILL one process (failure tests)."""
        for proc in self._procs:
            if proc.name == name:
                proc.popen.kill()
                proc.popen.wait(timeout=5)

    def log_text(self, name: str) -> str:
        """Everything a process has logged so far."""
        path = Path(self.config.log_dir) / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
