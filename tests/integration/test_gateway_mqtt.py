"""MQTT 5 ingress against the machine's Mosquitto (127.0.0.1:1883): request/response, refusals, shared
subscription across two gateways, reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiomqtt
import pytest
from aio_pika.abc import AbstractRobustConnection
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError
from redis.asyncio import Redis

from services.common.topology import Topology
from services.gateway import GatewayApp, GatewaySettings, build
from tests.integration.test_gateway import (  # noqa: F401
    SECRET,
    TRACE_ID,
    TRACEPARENT,
    WORKFLOW,
    _auth,
    _settings,
    router_addr,
)

pytestmark = pytest.mark.integration

BROKER = ("127.0.0.1", 1883)
Start = Callable[..., Awaitable[GatewayApp]]


@pytest.fixture
async def start(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,  # noqa: F811
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
) -> AsyncIterator[Start]:
    apps: list[GatewayApp] = []

    async def start(url: str = "mqtt://127.0.0.1:1883") -> GatewayApp:
        settings = _settings(
            namespace,
            rabbitmq_url,
            redis_url,
            router_addr,
            mqtt_url=url,
            mqtt_share_group=f"g{namespace}",
            mqtt_topic_prefix=namespace,  # the test's own topic tree
        )
        app = build(settings, topology=topology)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop()


class Requester:
    """An MQTT 5 client that sends requests with a Response Topic and Correlation Data."""

    def __init__(self, client: aiomqtt.Client, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.reply_to = f"{prefix}-replies/{uuid.uuid4().hex}"

    async def send(
        self,
        topic: str,
        payload: bytes | str,
        *,
        correlation: bytes = b"c1",
        token: str | None = "tenant-a",
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_to
        props.CorrelationData = correlation
        user = list(extra or [])
        if token is not None:
            user.append(("authorization", _auth(token)["Authorization"]))
        if user:
            props.UserProperty = user
        await self.client.publish(f"{self.prefix}/{topic}", payload, qos=1, properties=props)

    async def reply(self) -> tuple[dict[str, Any], bytes, dict[str, str]]:
        async for message in self.client.messages:
            props = message.properties
            body = json.loads(bytes(message.payload))
            return body, props.CorrelationData, dict(props.UserProperty)  # type: ignore[union-attr]
        raise AssertionError("the client's message stream ended")

    async def ask(
        self, topic: str, payload: bytes | str, **kw: Any
    ) -> tuple[dict[str, Any], bytes, dict[str, str]]:
        await self.send(topic, payload, **kw)
        return await self.reply()


@pytest.fixture
async def requester(namespace: str) -> AsyncIterator[Requester]:
    async with aiomqtt.Client(*BROKER, protocol=aiomqtt.ProtocolVersion.V5) as client:
        req = Requester(client, namespace)
        await client.subscribe(req.reply_to, qos=1)
        yield req


async def test_submit_and_get_with_correlation_and_trace_context(
    start: Start, requester: Requester, redis: Redis, namespace: str
) -> None:
    await start()
    body, correlation, user = await requester.ask(
        "tenant-a/tasks/submit",
        json.dumps({"task": {"workflow": WORKFLOW}}),
        correlation=b"\x00submit-1",
        extra=[("traceparent", TRACEPARENT)],
    )
    assert correlation == b"\x00submit-1"
    assert user["status"] == "ok"
    assert user["traceparent"].split("-")[1] == TRACE_ID
    task = body["task"]
    assert task["status"] == "queued" and task["trace_id"] == TRACE_ID
    read, _, _ = await requester.ask("tenant-a/tasks/get", json.dumps({"task_id": task["id"]}))
    assert read["task"]["id"] == task["id"]


async def test_refusals_are_error_replies_with_a_reason(start: Start, requester: Requester) -> None:
    await start()
    cases = [
        ("tenant-a/tasks/submit", "{oops", "tenant-a", "invalid_input", "payload is malformed JSON"),
        ("tenant-a/tasks/submit", "{}", None, "unauthenticated", "bearer token is required"),
        ("tenant-b/tasks/submit", '{"task": {}}', "tenant-a", "permission_denied", "not the token's tenant"),
        ("tenant-a/tasks/teleport", "{}", "tenant-a", "not_found", "unknown command 'teleport'"),
        ("tenant-a/tasks/get", '{"task_id": 7}', "tenant-a", "invalid_input", "task_id: required"),
        (
            "tenant-a/tasks/submit",
            '{"task": {"workflow": {"steps": []}}}',
            "tenant-a",
            "invalid_input",
            "steps",
        ),
    ]
    for i, (topic, payload, token, code, reason) in enumerate(cases):
        body, correlation, user = await requester.ask(
            topic, payload, token=token, correlation=str(i).encode()
        )
        assert correlation == str(i).encode()
        assert user["status"] == "error"
        assert body["error"]["code"] == code, body
        assert reason in body["error"]["message"], body
    # After all that the ingress still serves.
    ok, _, _ = await requester.ask("tenant-a/tasks/submit", json.dumps({"task": {"workflow": WORKFLOW}}))
    assert ok["task"]["status"] == "queued"


async def test_two_gateways_share_the_subscription_and_answer_each_request_once(
    start: Start, requester: Requester, redis: Redis, namespace: str
) -> None:
    first, second = await start(), await start()
    n = 12
    for i in range(n):
        payload = json.dumps({"task": {"workflow": WORKFLOW}})
        await requester.send("tenant-a/tasks/submit", payload, correlation=f"r{i}".encode())
    answered: dict[bytes, str] = {}
    while len(answered) < n:
        body, correlation, _ = await requester.reply()
        assert correlation not in answered, f"{correlation!r} answered twice"
        answered[correlation] = body["task"]["id"]
    await first.stop()
    await second.stop()  # both drained: any second run of a request would have stored its task by now
    tasks = [
        key
        async for key in redis.scan_iter(match=f"{namespace}:tenant-a:task:*")
        if key.count(b":" if isinstance(key, bytes) else ":") == 3
    ]
    assert len(tasks) == n
    assert len(set(answered.values())) == n


class _Proxy:
    """A TCP proxy to the broker whose connections the test can cut."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*BROKER)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


async def test_reconnects_after_the_broker_connection_drops(start: Start, requester: Requester) -> None:
    proxy = _Proxy()
    port = await proxy.start()
    try:
        await start(f"mqtt://127.0.0.1:{port}")
        before, _, _ = await requester.ask(
            "tenant-a/tasks/submit", json.dumps({"task": {"workflow": WORKFLOW}})
        )
        assert before["task"]["status"] == "queued"
        proxy.cut()
        # A request sent while no gateway is subscribed is dropped by the broker (no session), so ask until
        # the reconnected gateway answers; the test's timeout bounds the wait.
        while True:
            await requester.send(
                "tenant-a/tasks/submit", json.dumps({"task": {"workflow": WORKFLOW}}), correlation=b"after"
            )
            try:
                after, correlation, _ = await asyncio.wait_for(requester.reply(), 1.0)
            except TimeoutError:
                continue
            if correlation == b"after":
                break
        assert after["task"]["status"] == "queued"
    finally:
        await proxy.close()


def test_a_bad_broker_url_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCLAW_GATEWAY_MQTT_URL", "http://broker:1883")
    with pytest.raises(ValidationError, match="OPENCLAW_GATEWAY_MQTT_URL"):
        GatewaySettings(env="test", jwt_secret=SECRET)  # type: ignore[arg-type]
