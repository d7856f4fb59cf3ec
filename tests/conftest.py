"""Fixtures shared by every tier: the machine's services (started if absent), isolated names per test."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from services.common.redis_client import open_redis
from services.common.topology import Topology
from services.simulator.app import Simulator
from services.simulator.app import start as start_simulator
from services.simulator.settings import SimulatorSettings

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"

_START = {
    5672: ["rabbitmq-server", "-detached"],
    6379: ["redis-server", "--daemonize", "yes", "--port", "6379", "--save", "", "--appendonly", "no"],
    1883: ["mosquitto", "-d", "-c", "/etc/mosquitto/mosquitto.conf"],
}


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ensure_service(port: int, timeout_s: float = 60.0) -> None:
    """Start the machine's service on port if it does not answer; fail (never skip) if it cannot."""
    if _answers(port):
        return
    command = _START[port]
    if shutil.which(command[0]) is None:
        pytest.fail(f"service on port {port} is down and {command[0]} is not installed")
    subprocess.run(command, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _answers(port):
            if port == 5672:
                subprocess.run(["rabbitmqctl", "await_startup"], check=False, capture_output=True, timeout=60)
            return
        time.sleep(0.5)
    pytest.fail(f"{command[0]} did not start answering on port {port} within {timeout_s}s")


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    """A running RabbitMQ (guest/guest on loopback)."""
    ensure_service(5672)
    return AMQP_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A running Redis on loopback."""
    ensure_service(6379)
    return REDIS_URL


@pytest.fixture
def namespace() -> str:
    """A namespace unique to this test: queue names and Redis keys never collide with another test's."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_url: str, namespace: str) -> AsyncIterator[Redis]:
    """A Redis client; every key under the test's namespace is deleted afterwards."""
    client = open_redis(redis_url)
    yield client
    async for key in client.scan_iter(match=f"{namespace}:*", count=500):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
async def amqp(
    rabbitmq_url: str, topology: Topology, request: pytest.FixtureRequest
) -> AsyncIterator[AbstractRobustConnection]:
    """A connection named after the test; the test's topology is deleted afterwards."""
    connection = await aio_pika.connect_robust(
        rabbitmq_url, client_properties={"connection_name": request.node.nodeid}
    )
    yield connection
    channel = await connection.channel()
    await topology.delete(channel)
    await connection.close()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """The provider simulator on a free loopback port."""
    simulator = await start_simulator(SimulatorSettings(host="127.0.0.1", port=0))
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
def topology(namespace: str) -> Topology:
    """Fast retry delays so retry tests finish quickly."""
    return Topology(namespace, retry_delays_ms=(200, 400))


class _Recorder(SpanProcessor):
    """Keeps finished spans only while a test listens, so spans do not pile up (or warn) between tests."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.listening = False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self.listening:
            self.exporter.export((span,))


_RECORDER = _Recorder()


@pytest.fixture(scope="session", autouse=True)
def tracing() -> _Recorder:
    """One real tracer provider for the whole test process, whatever order tests run in (OpenTelemetry ignores
    a second set_tracer_provider)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider.add_span_processor(_RECORDER)
    return _RECORDER


@pytest.fixture
def spans(tracing: _Recorder) -> Iterator[InMemorySpanExporter]:
    """The spans finished during this test, recorded in memory."""
    tracing.exporter.clear()
    tracing.listening = True
    yield tracing.exporter
    tracing.listening = False
    tracing.exporter.clear()
