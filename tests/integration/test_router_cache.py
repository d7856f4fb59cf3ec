"""The response cache and coalescing through the real router (gRPC), the simulator (HTTP) and Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from openclaw.v1 import router_pb2, router_pb2_grpc
from services.router.bootstrap import RouterApp, build
from services.router.settings import RouterSettings
from services.simulator.app import Simulator

Stub: TypeAlias = Any  # the generated RouterServiceStub (generated code is not type-checked)
MakeRouter: TypeAlias = Callable[..., Awaitable[tuple[RouterApp, Stub]]]


@pytest.fixture
async def make_router(sim: Simulator, namespace: str, redis: Redis) -> AsyncIterator[MakeRouter]:
    """Routers in the test's namespace (their Redis keys are deleted afterwards), each with a stub."""
    apps: list[RouterApp] = []
    channels: list[grpc.aio.Channel] = []

    async def make(**overrides: Any) -> tuple[RouterApp, Stub]:
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "metrics_port": 0,
            "simulator_url": sim.url,
            "openai_api_key": "",
            "anthropic_api_key": "",
            "namespace": namespace,
            **overrides,
        }
        app = build(RouterSettings(**values), env={})
        await app.start()
        apps.append(app)
        channel = grpc.aio.insecure_channel(app.address)
        channels.append(channel)
        return app, router_pb2_grpc.RouterServiceStub(channel)

    yield make
    for channel in channels:
        await channel.close(None)
    for app in apps:
        await app.stop(0)


def chat(
    model: str = "gpt-4-mini", text: str = "what is the answer", **fields: Any
) -> router_pb2.ChatRequest:
    fields.setdefault("temperature", 0.0)
    fields.setdefault("tenant", "acme")
    return router_pb2.ChatRequest(
        model=model, messages=[router_pb2.ChatMessage(role="user", content=text)], **fields
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"gave up waiting for {what}")


# -- the cache -------------------------------------------------------------------------------------


async def test_a_cache_hit_makes_no_provider_call(make_router: MakeRouter, sim: Simulator) -> None:
    _, stub = await make_router()
    hits = metric("openclaw_router_cache_requests_total", model="gpt-4-mini", outcome="hit")
    first = await stub.Chat(chat())
    assert first.route.cache == "miss"
    assert sim.stats.count("gpt-4-mini") == 1
    second = await stub.Chat(chat())
    assert sim.stats.count("gpt-4-mini") == 1  # served from Redis
    assert second.route.cache == "hit"
    assert second.message.content == first.message.content
    assert second.message.content.startswith("[simulated gpt-4-mini]")
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (
        first.usage.prompt_tokens,
        first.usage.completion_tokens,
    )
    assert metric("openclaw_router_cache_requests_total", model="gpt-4-mini", outcome="hit") == hits + 1
    await stub.Chat(chat(text="a different question"))
    assert sim.stats.count("gpt-4-mini") == 2


async def test_tenants_never_get_each_others_cached_answers(
    make_router: MakeRouter, sim: Simulator, redis: Redis, namespace: str
) -> None:
    _, stub = await make_router()
    cached = await stub.Chat(chat(tenant="tenant-a"))
    assert cached.route.cache == "miss"
    # The provider is now down: only a cached answer can still come back.
    sim.behaviours.update("gpt-4-mini", {"outage": True})
    again = await stub.Chat(chat(tenant="tenant-a"))
    assert again.route.cache == "hit" and again.message.content == cached.message.content
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(chat(tenant="tenant-b"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # tenant b asked the provider, never a's cache
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Chat(chat(tenant="tenant-a:x"))  # no tenant name can reach into another's keys
    keys = [key async for key in redis.scan_iter(match=f"{namespace}:router:cache:*")]
    assert len(keys) == 1 and keys[0].startswith(f"{namespace}:router:cache:tenant-a:")


async def test_only_deterministic_or_opted_in_requests_are_cached(
    make_router: MakeRouter, sim: Simulator
) -> None:
    _, stub = await make_router()
    for _ in range(2):
        reply = await stub.Chat(chat(text="creative", temperature=0.8))
        assert reply.route.cache == "bypass"
    plain = router_pb2.ChatRequest(
        model="gpt-4-mini",
        tenant="acme",
        messages=[router_pb2.ChatMessage(role="user", content="no temperature")],
    )
    await stub.Chat(plain)
    await stub.Chat(plain)
    assert sim.stats.count("gpt-4-mini") == 4

    opted = chat(text="creative but cache it", temperature=0.8, cache="on")
    assert (await stub.Chat(opted)).route.cache == "miss"
    assert (await stub.Chat(opted)).route.cache == "hit"
    assert sim.stats.count("gpt-4-mini") == 5

    assert (await stub.Chat(chat(text="fresh please", cache="off"))).route.cache == "bypass"
    reply = await stub.Chat(chat(text="fresh please"), metadata=(("openclaw-cache", "off"),))
    assert reply.route.cache == "bypass"
    assert sim.stats.count("gpt-4-mini") == 7


async def test_an_unknown_cache_mode_is_refused_naming_the_field(
    make_router: MakeRouter, sim: Simulator
) -> None:
    _, stub = await make_router()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(chat(cache="forever"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cache" in (caught.value.details() or "") and "forever" in (caught.value.details() or "")
    assert sim.stats.count() == 0


async def test_ttls_are_global_and_per_model(
    make_router: MakeRouter, sim: Simulator, redis: Redis, namespace: str
) -> None:
    _, stub = await make_router(cache_ttl_seconds=120, cache_models={"echo": 0, "llama-3": 30})
    await stub.Chat(chat("gpt-4-mini"))
    await stub.Chat(chat("llama-3"))
    for _ in range(2):
        assert (await stub.Chat(chat("echo", cache="on"))).route.cache == "bypass"  # TTL 0: never cached
    assert sim.stats.count("echo") == 2
    ttls = {}
    async for key in redis.scan_iter(match=f"{namespace}:router:cache:*"):
        ttls[key] = await redis.pttl(key)
    assert len(ttls) == 2
    assert sorted(ttls.values())[0] <= 30_000 < sorted(ttls.values())[1] <= 120_000


async def test_streams_are_cached_and_replayed_as_streams(make_router: MakeRouter, sim: Simulator) -> None:
    _, stub = await make_router()
    request = chat(text="tell me a short story about caching")
    first = [chunk async for chunk in stub.ChatStream(request)]
    assert first[0].route.cache == "miss"
    assert sim.stats.count("gpt-4-mini") == 1
    replay = [chunk async for chunk in stub.ChatStream(request)]
    assert sim.stats.count("gpt-4-mini") == 1
    assert len(replay) > 3  # a stream, not one blob
    assert replay[0].route.cache == "hit" and replay[-1].route.cache == "hit"
    assert "".join(c.delta for c in replay) == "".join(c.delta for c in first)
    assert replay[-1].finish_reason == first[-1].finish_reason
    assert replay[-1].usage.completion_tokens == first[-1].usage.completion_tokens
    unary = await stub.Chat(request)  # the same answer serves the unary call too
    assert unary.route.cache == "hit" and unary.message.content == "".join(c.delta for c in first)


async def test_cached_answers_are_sealed_at_rest_when_master_keys_are_set(
    make_router: MakeRouter, sim: Simulator, redis: Redis, namespace: str
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    _, stub = await make_router(master_keys=json.dumps({"k1": key}), master_key_id="k1")
    first = await stub.Chat(chat(text="a secret question"))
    keys = [k async for k in redis.scan_iter(match=f"{namespace}:router:cache:*")]
    assert len(keys) == 1
    raw = await redis.get(keys[0])
    assert raw.startswith("enc:v1:")
    assert "secret" not in raw and "simulated" not in raw
    second = await stub.Chat(chat(text="a secret question"))
    assert second.route.cache == "hit" and second.message.content == first.message.content
    # A value moved to another tenant's key does not open there: that tenant gets a miss, not the answer.
    await redis.set(keys[0].replace(":acme:", ":other:"), raw)
    moved = await stub.Chat(chat(text="a secret question", tenant="other"))
    assert moved.route.cache == "miss"
    assert sim.stats.count("gpt-4-mini") == 2


async def test_a_cached_answer_never_outlives_the_tenants_access_to_the_model(
    make_router: MakeRouter, sim: Simulator, tmp_path: Path
) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants:\n  acme: {models: ['*']}\n")
    app, stub = await make_router(tenants_file=tenants, tenants_mode="closed", shared_state=True)
    assert (await stub.Chat(chat())).route.cache == "miss"
    assert app.router.tenants is not None
    await app.router.tenants.put("acme", {"models": ["llama-3"]})  # the admin takes gpt-4-mini away
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(chat())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError):
        await anext(aiter(stub.ChatStream(chat())))
    assert sim.stats.count("gpt-4-mini") == 1


async def test_redis_out_of_reach_never_fails_a_request(make_router: MakeRouter, sim: Simulator) -> None:
    _, stub = await make_router(redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    errors = metric("openclaw_router_cache_requests_total", model="gpt-4-mini", outcome="error")
    for _ in range(2):
        reply = await stub.Chat(chat())
        assert reply.message.content.startswith("[simulated gpt-4-mini]")
    chunks = [chunk async for chunk in stub.ChatStream(chat())]
    assert chunks[-1].finish_reason
    assert sim.stats.count("gpt-4-mini") == 3  # no cache, so every request went to the provider
    assert metric("openclaw_router_cache_requests_total", model="gpt-4-mini", outcome="error") == errors + 3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUsage(router_pb2.GetUsageRequest(tenant="acme"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# -- coalescing ------------------------------------------------------------------------------------


class GatedUpstream:
    """An OpenAI-compatible server holding every request until released; answers ``status``."""

    def __init__(self) -> None:
        self.received = 0
        self.gate = asyncio.Event()
        self.status = 200
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received += 1
        await self.gate.wait()
        if body.get("stream") and self.status == 200:
            return await self.stream(request)
        if self.status != 200:
            error = {"error": {"message": "the prompt breaks a rule", "type": "invalid_request_error"}}
            return web.json_response(error, status=self.status)
        return web.json_response(
            {
                "id": f"up-{self.received}",
                "model": "gated",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "shared"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": f"up-{self.received}", "model": "gated"}
        chunks: list[dict[str, Any]] = [
            {**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            for word in ("shared ", "by ", "all")
        ]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        chunks.append(
            {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
        )
        for chunk in chunks:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[GatedUpstream]:
    server = GatedUpstream()
    await server.start()
    yield server
    await server.stop()


async def gated_router(make_router: MakeRouter, upstream: GatedUpstream, model: str, tmp_path: Path) -> Stub:
    """A router whose one model is served by the gated upstream."""
    table = tmp_path / "models.yaml"
    table.write_text(
        f"models:\n  - {{name: {model}, provider: openai, endpoint: '{upstream.url}', max_concurrency: 50}}\n"
    )
    _, stub = await make_router(models=str(table))
    return stub


async def test_identical_requests_in_flight_share_one_provider_call(
    make_router: MakeRouter, upstream: GatedUpstream, tmp_path: Path
) -> None:
    stub = await gated_router(make_router, upstream, "gated-share", tmp_path)
    joined = metric("openclaw_router_coalesced_requests_total", model="gated-share")
    calls = [asyncio.ensure_future(stub.Chat(chat("gated-share"))) for _ in range(5)]
    other_tenant = asyncio.ensure_future(stub.Chat(chat("gated-share", tenant="someone-else")))
    await until(
        lambda: metric("openclaw_router_coalesced_requests_total", model="gated-share") == joined + 4,
        "four requests joining the first one's call",
    )
    await until(lambda: upstream.received == 2, "one provider call per tenant")
    upstream.gate.set()
    replies = await asyncio.gather(*calls)
    assert upstream.received == 2
    assert all(reply.message.content == "shared" for reply in replies)
    assert sorted(reply.route.cache for reply in replies) == ["coalesced"] * 4 + ["miss"]
    assert (await other_tenant).route.cache == "miss"


async def test_a_cancelled_caller_does_not_cancel_the_shared_call(
    make_router: MakeRouter, upstream: GatedUpstream, tmp_path: Path
) -> None:
    stub = await gated_router(make_router, upstream, "gated-cancel", tmp_path)
    joined = metric("openclaw_router_coalesced_requests_total", model="gated-cancel")
    leader = stub.Chat(chat("gated-cancel"))
    leader_task = asyncio.ensure_future(leader)
    await until(lambda: upstream.received == 1, "the first call to reach the provider")
    follower = asyncio.ensure_future(stub.Chat(chat("gated-cancel")))
    await until(
        lambda: metric("openclaw_router_coalesced_requests_total", model="gated-cancel") == joined + 1,
        "the second request to join",
    )
    leader.cancel()  # the caller that started the provider call goes away
    with pytest.raises(asyncio.CancelledError):
        await leader_task
    upstream.gate.set()
    reply = await follower
    assert reply.message.content == "shared" and reply.route.cache == "coalesced"
    assert upstream.received == 1


async def test_an_error_is_shared_by_every_coalesced_caller(
    make_router: MakeRouter, upstream: GatedUpstream, tmp_path: Path
) -> None:
    stub = await gated_router(make_router, upstream, "gated-error", tmp_path)
    upstream.status = 400
    joined = metric("openclaw_router_coalesced_requests_total", model="gated-error")
    calls = [asyncio.ensure_future(stub.Chat(chat("gated-error"))) for _ in range(3)]
    await until(
        lambda: metric("openclaw_router_coalesced_requests_total", model="gated-error") == joined + 2,
        "two requests joining the first one's call",
    )
    upstream.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert upstream.received == 1
    for result in results:
        assert isinstance(result, grpc.aio.AioRpcError)
        assert result.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "breaks a rule" in (result.details() or "")


async def test_identical_streams_in_flight_share_one_provider_stream(
    make_router: MakeRouter, upstream: GatedUpstream, tmp_path: Path
) -> None:
    stub = await gated_router(make_router, upstream, "gated-stream", tmp_path)
    joined = metric("openclaw_router_coalesced_requests_total", model="gated-stream")

    async def read() -> list[Any]:
        return [chunk async for chunk in stub.ChatStream(chat("gated-stream"))]

    readers = [asyncio.ensure_future(read()) for _ in range(3)]
    await until(
        lambda: metric("openclaw_router_coalesced_requests_total", model="gated-stream") == joined + 2,
        "two streams joining the first one's",
    )
    upstream.gate.set()
    streams = await asyncio.gather(*readers)
    assert upstream.received == 1
    for chunks in streams:
        assert "".join(c.delta for c in chunks) == "shared by all"
        assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.completion_tokens == 3
    assert sorted(chunks[0].route.cache for chunks in streams) == ["coalesced", "coalesced", "miss"]
    replay = await read()  # and the finished stream was stored
    assert replay[0].route.cache == "hit" and "".join(c.delta for c in replay) == "shared by all"
    assert upstream.received == 1
