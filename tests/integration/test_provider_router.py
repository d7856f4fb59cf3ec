"""The new wire formats through the whole router: gRPC in, the default simulated models, fallbacks across formats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from pydantic import SecretStr

from openclaw.v1 import router_pb2, router_pb2_grpc
from services.router.bootstrap import RouterApp, build
from services.router.settings import RouterSettings
from services.simulator import Simulator

pytestmark = pytest.mark.integration

Stub = Any  # the generated RouterServiceStub (generated code is not type-checked)
DEFAULTS = [
    ("sim-gemini", "gemini"),
    ("sim-ollama", "ollama"),
    ("sim-azure", "azure"),
    ("sim-cohere", "cohere"),
]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
async def router(sim: Simulator) -> AsyncIterator[RouterApp]:
    settings = RouterSettings(
        listen="127.0.0.1:0",
        metrics_port=0,
        simulator_url=sim.url,
        openai_api_key=SecretStr(""),
        anthropic_api_key=SecretStr(""),
    )  # type: ignore[call-arg]
    app = build(settings, env={}, ops=False)
    await app.start()
    yield app
    await app.stop(0)


@pytest.fixture
async def stub(router: RouterApp) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(router.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def chat_request(model: str, text: str = "hello there, router", **extra: Any) -> router_pb2.ChatRequest:
    request = router_pb2.ChatRequest(
        model=model,
        messages=[
            router_pb2.ChatMessage(role="system", content="answer briefly"),
            router_pb2.ChatMessage(role="user", content=text),
        ],
    )
    if extra:
        request.extra.CopyFrom(struct_pb2.Struct())
        request.extra.update(extra)
    return request


async def add_model(stub: Stub, sim: Simulator, name: str, provider: str, fallbacks: list[str]) -> None:
    model = router_pb2.Model(name=name, provider=provider, endpoint=sim.url, fallback_models=fallbacks)
    await stub.AddModel(router_pb2.AddModelRequest(model=model), timeout=10)


@pytest.mark.parametrize(("model", "provider"), DEFAULTS)
async def test_default_simulated_models_chat_and_stream(stub: Stub, model: str, provider: str) -> None:
    response = await stub.Chat(chat_request(model), timeout=30)
    assert response.message.content.startswith(f"[simulated {model}]")
    assert response.finish_reason == "stop"
    assert (response.route.model, response.route.provider, response.route.simulated) == (
        model,
        provider,
        True,
    )
    assert response.usage.prompt_tokens == 5 and response.usage.completion_tokens > 0

    chunks = [c async for c in stub.ChatStream(chat_request(model), timeout=30)]
    assert "".join(c.delta for c in chunks) == response.message.content
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == response.usage.completion_tokens


@pytest.mark.parametrize(("model", "provider"), DEFAULTS)
async def test_tool_calls_come_back_through_grpc(stub: Stub, model: str, provider: str) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    request = chat_request(model, "call get_weather for Oslo", tools=TOOLS, tool_choice=choice)
    response = await stub.Chat(request, timeout=30)
    assert response.finish_reason == "tool_calls"
    assert [(c.name, c.arguments, c.type) for c in response.message.tool_calls] == [
        ("get_weather", "{}", "function")
    ]
    chunks = [c async for c in stub.ChatStream(request, timeout=30)]
    assert chunks[-1].finish_reason == "tool_calls"
    assert [c.name for chunk in chunks for c in chunk.tool_calls] == ["get_weather"]


async def test_outage_falls_back_to_another_wire_format(stub: Stub, sim: Simulator) -> None:
    await add_model(stub, sim, "primary-gemini", "gemini", ["sim-cohere"])
    sim.behaviours.update("primary-gemini", {"outage": True})
    response = await stub.Chat(chat_request("primary-gemini"), timeout=30)
    assert response.route.provider == "cohere"
    assert [(a.model, a.provider, a.outcome) for a in response.route.attempts] == [
        ("primary-gemini", "gemini", "server_error"),
        ("sim-cohere", "cohere", "ok"),
    ]


async def test_context_window_falls_back_but_content_policy_does_not(stub: Stub, sim: Simulator) -> None:
    await add_model(stub, sim, "small-ollama", "ollama", ["sim-azure"])
    sim.behaviours.update("small-ollama", {"context_window": 3})
    response = await stub.Chat(chat_request("small-ollama"), timeout=30)
    assert [(a.model, a.outcome) for a in response.route.attempts] == [
        ("small-ollama", "context_window_exceeded"),
        ("sim-azure", "ok"),
    ]

    sim.behaviours.update("small-ollama", {"context_window": None, "content_policy": True})
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Chat(chat_request("small-ollama"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "small-ollama: content_policy" in (refused.value.details() or "")
    assert sim.stats.count("sim-azure") == 1  # only the context-window fallback reached it


async def test_azure_model_without_an_endpoint_is_refused_naming_the_field(stub: Stub) -> None:
    model = router_pb2.Model(name="azure-nowhere", provider="azure")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.AddModel(router_pb2.AddModelRequest(model=model), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "endpoint" in (refused.value.details() or "") and "azure" in (refused.value.details() or "")
