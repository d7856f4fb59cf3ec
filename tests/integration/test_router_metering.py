"""Micro-batched embeddings, metering with GetUsage, and the catalogue through the real router and simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from openclaw.v1 import router_pb2, router_pb2_grpc
from services.router.bootstrap import RouterApp, build
from services.router.settings import RouterSettings
from services.simulator.app import Simulator

Stub: TypeAlias = Any  # the generated RouterServiceStub (generated code is not type-checked)
MakeRouter: TypeAlias = Callable[..., Awaitable[tuple[RouterApp, Stub]]]

# Prices that make the simulator's models cost something (USD per million tokens), and small context windows.
CATALOGUE = """
models:
  - {name: gpt-4-mini, provider: openai, input_per_mtok: 1000, output_per_mtok: 3000}
  - {name: sim-embed, provider: openai, input_per_mtok: 500, capabilities: [embeddings]}
  - {name: echo, provider: openai, context_window: 30}
  - {name: claude-3, provider: anthropic, context_window: 30}
  - {name: cat-small, provider: openai, context_window: 30, input_per_mtok: 1000, output_per_mtok: 1000}
  - {name: cat-tiny, provider: openai, context_window: 20}
  - {name: cat-big, provider: openai, context_window: 100000, input_per_mtok: 2000, output_per_mtok: 2000}
"""
# Model groups: each deployment names a model of the catalogue above.
GROUPS = """
models:
  - name: duo
    provider: openai
    endpoint: ${OPENCLAW_SIMULATOR_URL}/v1
    deployments:
      - {name: a, provider_model: cat-small}
      - {name: b, provider_model: cat-tiny}
  - name: mixed
    provider: openai
    endpoint: ${OPENCLAW_SIMULATOR_URL}/v1
    deployments:
      - {name: a, provider_model: cat-small}
      - {name: b, provider_model: cat-big}
"""


@pytest.fixture
async def make_router(
    sim: Simulator, namespace: str, redis: Redis, tmp_path: Path
) -> AsyncIterator[MakeRouter]:
    """Routers in the test's namespace with the test catalogue, each with a stub."""
    catalogue = tmp_path / "catalogue.yaml"
    catalogue.write_text(CATALOGUE)
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
            "catalogue": str(catalogue),
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


def chat(model: str, text: str, tenant: str, **fields: Any) -> router_pb2.ChatRequest:
    return router_pb2.ChatRequest(
        model=model, tenant=tenant, messages=[router_pb2.ChatMessage(role="user", content=text)], **fields
    )


def embed(text: str, tenant: str = "acme") -> router_pb2.EmbedRequest:
    return router_pb2.EmbedRequest(model="sim-embed", input=[text], tenant=tenant)


# -- micro-batching --------------------------------------------------------------------------------


async def test_embed_requests_together_go_out_as_one_provider_call(
    make_router: MakeRouter, sim: Simulator
) -> None:
    texts = ["red apples", "green apples and pears", "a blue sky", "apples"]
    # A long window and a batch size of four texts: the batch leaves when the fourth request arrives.
    _, stub = await make_router(embed_batch_window_ms=1000, embed_batch_max_inputs=4)
    batched = await asyncio.gather(*(stub.Embed(embed(text)) for text in texts))
    assert sim.stats.count("sim-embed") == 1

    _, alone = await make_router(embed_batch_window_ms=0)
    singles = [await alone.Embed(embed(text)) for text in texts]
    assert sim.stats.count("sim-embed") == 5
    for together, single in zip(batched, singles, strict=True):
        assert len(together.data) == 1
        assert list(together.data[0].values) == pytest.approx(list(single.data[0].values))
    # The provider's token count for the batch (words, in the simulator) is shared out in full.
    assert sum(reply.usage.prompt_tokens for reply in batched) == sum(len(t.split()) for t in texts)


async def test_an_unknown_model_fails_alone_and_does_not_join_a_batch(
    make_router: MakeRouter, sim: Simulator
) -> None:
    _, stub = await make_router(embed_batch_window_ms=1000, embed_batch_max_inputs=2)
    bad = router_pb2.EmbedRequest(model="no-such-model", input=["x"], tenant="acme")
    results = await asyncio.gather(
        stub.Embed(bad), stub.Embed(embed("one")), stub.Embed(embed("two")), return_exceptions=True
    )
    assert isinstance(results[0], grpc.aio.AioRpcError) and results[0].code() == grpc.StatusCode.NOT_FOUND
    assert all(isinstance(r, router_pb2.EmbedResponse) for r in results[1:])
    assert sim.stats.count("sim-embed") == 1


# -- metering --------------------------------------------------------------------------------------


def cost_metric(model: str, deployment: str) -> float:
    labels = {"model": model, "deployment": deployment}
    return REGISTRY.get_sample_value("openclaw_router_cost_usd_total", labels) or 0.0


async def test_usage_is_metered_per_tenant_model_and_deployment(
    make_router: MakeRouter, sim: Simulator
) -> None:
    _, stub = await make_router()
    first = await stub.Chat(chat("gpt-4-mini", "one two three", "tenant-a", temperature=0.7))
    deployment = first.route.deployment or "default"
    before = cost_metric("gpt-4-mini", deployment)
    second = await stub.Chat(chat("gpt-4-mini", "four five", "tenant-a", temperature=0.7))
    other = await stub.Chat(chat("gpt-4-mini", "six", "tenant-b", temperature=0.7))
    # A cache hit makes no provider call, so it is not metered.
    await stub.Chat(chat("gpt-4-mini", "cached", "tenant-a", temperature=0))
    await stub.Chat(chat("gpt-4-mini", "cached", "tenant-a", temperature=0))
    vectors = await stub.Embed(embed("seven eight nine", tenant="tenant-a"))

    usage = await stub.GetUsage(router_pb2.GetUsageRequest(tenant="tenant-a"))
    rows = {(r.model, r.deployment): r for r in usage.records}
    assert set(rows) == {("gpt-4-mini", deployment), ("sim-embed", vectors.route.deployment or "default")}
    chat_row = rows[("gpt-4-mini", deployment)]
    replies = [first, second]
    replies.append(await stub.Chat(chat("gpt-4-mini", "cached", "tenant-a", temperature=0)))
    assert chat_row.requests == 3
    prompt = first.usage.prompt_tokens + second.usage.prompt_tokens + replies[2].usage.prompt_tokens
    completion = sum(r.usage.completion_tokens for r in replies)
    assert (chat_row.prompt_tokens, chat_row.completion_tokens) == (prompt, completion)
    assert chat_row.cost_usd == pytest.approx((prompt * 1000 + completion * 3000) / 1e6)
    embed_row = rows[("sim-embed", vectors.route.deployment or "default")]
    assert embed_row.prompt_tokens == 3 and embed_row.cost_usd == pytest.approx(3 * 500 / 1e6)
    assert usage.cost_usd == pytest.approx(chat_row.cost_usd + embed_row.cost_usd)
    assert usage.requests == 4 and usage.from_day == usage.to_day == chat_row.day

    theirs = await stub.GetUsage(router_pb2.GetUsageRequest(tenant="tenant-b"))
    assert [(r.model, r.requests, r.prompt_tokens) for r in theirs.records] == [
        ("gpt-4-mini", 1, other.usage.prompt_tokens)
    ]
    nobody = await stub.GetUsage(router_pb2.GetUsageRequest(tenant="tenant-c"))
    assert list(nobody.records) == [] and nobody.cost_usd == 0
    since = [second, other, replies[2]]  # the calls made after ``before`` (the cache miss made one)
    metered = sum(r.usage.prompt_tokens * 1000 + r.usage.completion_tokens * 3000 for r in since)
    assert cost_metric("gpt-4-mini", deployment) == pytest.approx(before + metered / 1e6)


async def test_usage_survives_in_redis_across_router_restarts(
    make_router: MakeRouter, sim: Simulator
) -> None:
    app, stub = await make_router()
    await stub.Chat(chat("gpt-4-mini", "remember me", "tenant-a"))
    await app.stop(0)  # writes the pending counts
    _, fresh = await make_router()
    usage = await fresh.GetUsage(router_pb2.GetUsageRequest(tenant="tenant-a"))
    assert [r.requests for r in usage.records] == [1]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({}, "tenant"),
        ({"tenant": "a", "from_day": "last week"}, "from_day"),
        ({"tenant": "a", "to_day": "2026-02-30"}, "to_day"),
        ({"tenant": "a", "from_day": "2026-02-02", "to_day": "2026-02-01"}, "from_day"),
        ({"tenant": "a", "from_day": "2020-01-01", "to_day": "2026-01-01"}, "from_day"),
    ],
)
async def test_get_usage_refuses_bad_input_naming_the_field(
    make_router: MakeRouter, request_fields: dict[str, str], field: str
) -> None:
    _, stub = await make_router()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUsage(router_pb2.GetUsageRequest(**request_fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(field)


# -- the catalogue ---------------------------------------------------------------------------------


async def test_a_prompt_over_the_context_window_is_refused_before_any_call(
    make_router: MakeRouter, sim: Simulator
) -> None:
    _, stub = await make_router()
    long_prompt = "lorem ipsum dolor sit amet " * 20  # about 135 tokens by the estimate; echo's window is 30
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(chat("echo", long_prompt, "acme"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert details.startswith("messages:") and "'echo'" in details and "echo: 30 tokens" in details
    with pytest.raises(grpc.aio.AioRpcError):
        await anext(aiter(stub.ChatStream(chat("echo", long_prompt, "acme"))))
    assert sim.stats.count() == 0
    assert (await stub.Chat(chat("echo", "short", "acme"))).message.content == "short"


async def test_a_fallback_with_room_still_takes_a_prompt_too_big_for_the_model(
    make_router: MakeRouter, sim: Simulator
) -> None:
    _, stub = await make_router()
    sim.behaviours.update(
        "claude-3", {"context_window": 30}
    )  # the simulated provider agrees with the catalogue
    reply = await stub.Chat(chat("claude-3", "lorem ipsum dolor sit amet " * 20, "acme"))
    assert reply.route.model == "gpt-4-mini"  # claude-3's fallback, whose window is not known
    assert [a.outcome for a in reply.route.attempts][-1] == "ok"


async def test_list_catalogue(make_router: MakeRouter) -> None:
    _, stub = await make_router()
    everything = await stub.ListCatalogue(router_pb2.ListCatalogueRequest())
    assert {m.provider for m in everything.models} == {
        "openai",
        "anthropic",
        "gemini",
        "ollama",
        "azure",
        "cohere",
    }
    anthropic = await stub.ListCatalogue(router_pb2.ListCatalogueRequest(provider="anthropic"))
    sonnet = next(m for m in anthropic.models if m.name == "claude-3-5-sonnet")
    assert (sonnet.input_per_mtok, sonnet.output_per_mtok, sonnet.context_window) == (3.0, 15.0, 200000)
    assert "claude-3-5-sonnet-latest" in sonnet.aliases and "tools" in sonnet.capabilities
    assert any(m.name == "claude-3" and m.context_window == 30 for m in anthropic.models)  # the user's file


async def test_model_groups_are_checked_and_priced_per_deployment(
    make_router: MakeRouter, sim: Simulator, tmp_path: Path
) -> None:
    table = tmp_path / "groups.yaml"
    table.write_text(GROUPS)
    _, stub = await make_router(models=str(table))
    long_prompt = "lorem ipsum dolor sit amet " * 20  # about 135 tokens by the estimate
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Chat(chat("duo", long_prompt, "acme"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "duo/a: 30, duo/b: 20 tokens" in (caught.value.details() or "")
    assert sim.stats.count() == 0

    replies = [await stub.Chat(chat("mixed", long_prompt, "acme")) for _ in range(2)]
    usage = await stub.GetUsage(router_pb2.GetUsageRequest(tenant="acme"))
    prices = {"a": 1000, "b": 2000}
    for row in usage.records:
        served = [r for r in replies if r.route.deployment == row.deployment]
        tokens = sum(r.usage.prompt_tokens + r.usage.completion_tokens for r in served)
        assert row.model == "mixed" and row.requests == len(served)
        assert row.cost_usd == pytest.approx(tokens * prices[row.deployment] / 1e6)
    assert sum(row.requests for row in usage.records) == 2
