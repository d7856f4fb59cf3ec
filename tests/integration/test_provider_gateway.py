"""The official openai client → gateway → router → every wire format: embeddings, and tool calls both ways."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import openai
import pytest
from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr
from redis.asyncio import Redis

from openclaw.v1 import router_pb2, router_pb2_grpc
from services.common.topology import Topology
from services.gateway import GatewayApp, GatewaySettings, build, mint_token
from services.router.bootstrap import RouterApp
from services.router.bootstrap import build as build_router
from services.router.settings import RouterSettings
from services.simulator import Simulator

pytestmark = pytest.mark.integration

SECRET = "integration-test-secret-0123456789abcdef"
MODEL = "sim-embed"  # served by the simulator in the router's default model table
Stub = Any  # the generated RouterServiceStub (generated code is not type-checked)


@pytest.fixture
async def router(sim: Simulator) -> AsyncIterator[RouterApp]:
    settings = RouterSettings(
        listen="127.0.0.1:0",
        simulator_url=sim.url,
        openai_api_key=SecretStr(""),
        anthropic_api_key=SecretStr(""),
    )  # type: ignore[call-arg]
    app = build_router(settings, env={}, ops=False)
    await app.start()
    yield app
    await app.stop(0)


@pytest.fixture
async def stub(router: RouterApp) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(router.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


@pytest.fixture
async def gateway(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router: RouterApp,
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
) -> AsyncIterator[GatewayApp]:
    settings = GatewaySettings(
        env="test",
        namespace=namespace,
        amqp_url=rabbitmq_url,
        redis_url=redis_url,
        router_addr=router.address,
        jwt_secret=SecretStr(SECRET),
        http_port=0,
        grpc_port=0,
        max_body_bytes=64 * 1024,
        drain_seconds=2,
    )
    app = build(settings, topology=topology)
    await app.start()
    yield app
    await app.stop()


@pytest.fixture
async def client(gateway: GatewayApp) -> AsyncIterator[openai.AsyncOpenAI]:
    token = mint_token(SECRET, tenant="tenant-a")
    async with openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gateway.http_port}/v1", api_key=token, max_retries=0
    ) as oai:
        yield oai


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


async def rpc_error(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


async def test_embed_rpc_returns_one_vector_per_input_in_order(stub: Stub, sim: Simulator) -> None:
    texts = ["the cat sat on the mat", "the cat sat on a mat", "quantum field theory lecture"]
    response = await stub.Embed(router_pb2.EmbedRequest(model=MODEL, input=texts, dimensions=64), timeout=10)
    vectors = [list(item.values) for item in response.data]
    assert [len(v) for v in vectors] == [64, 64, 64]
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert response.usage.prompt_tokens == 6 + 6 + 4
    assert (response.route.model, response.route.provider, response.route.simulated) == (
        MODEL,
        "openai",
        True,
    )
    assert sim.stats.count(MODEL, "ok") == 1
    again = await stub.Embed(router_pb2.EmbedRequest(model=MODEL, input=texts[:1], dimensions=64), timeout=10)
    assert list(again.data[0].values) == vectors[0]


async def test_azure_deployment_serves_embeddings(stub: Stub, sim: Simulator) -> None:
    response = await stub.Embed(router_pb2.EmbedRequest(model="sim-azure", input=["hello world"]), timeout=10)
    assert len(response.data) == 1 and len(response.data[0].values) == 16
    assert response.route.provider == "azure"
    assert sim.stats.count("sim-azure", "ok") == 1


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": ["ok", ""]}, "input[1]"),
        ({"model": MODEL, "input": ["ok"], "dimensions": 0}, "dimensions"),
        ({"input": ["ok"]}, "model"),
    ],
)
async def test_bad_embed_requests_name_the_field(
    stub: Stub, request_fields: dict[str, Any], field: str
) -> None:
    code, message = await rpc_error(stub.Embed(router_pb2.EmbedRequest(**request_fields), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith(f"{field}:")


async def test_a_chat_only_provider_refuses_embeddings_by_name(stub: Stub, sim: Simulator) -> None:
    code, message = await rpc_error(
        stub.Embed(router_pb2.EmbedRequest(model="claude-3", input=["hi"]), timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'anthropic'" in message and "serves no embeddings" in message
    assert sim.stats.count() == 0


async def test_provider_outage_is_unavailable_with_the_attempt(stub: Stub, sim: Simulator) -> None:
    sim.behaviours.update(MODEL, {"outage": True})
    code, message = await rpc_error(
        stub.Embed(router_pb2.EmbedRequest(model=MODEL, input=["hi"]), timeout=10)
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    assert f"{MODEL}: server_error" in message


async def test_openai_client_embeddings_create(client: openai.AsyncOpenAI) -> None:
    # The SDK asks for base64 unless told otherwise and decodes it itself: both forms must agree.
    default = await client.embeddings.create(model=MODEL, input=["red apples", "green apples", "tax law"])
    floats = await client.embeddings.create(
        model=MODEL, input=["red apples", "green apples", "tax law"], encoding_format="float"
    )
    assert [d.index for d in default.data] == [0, 1, 2]
    for a, b in zip(default.data, floats.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    apples = cosine(floats.data[0].embedding, floats.data[1].embedding)
    assert apples > cosine(floats.data[0].embedding, floats.data[2].embedding)
    assert floats.model == MODEL
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 6

    sized = await client.embeddings.create(
        model=MODEL, input="one text", dimensions=40, encoding_format="float"
    )
    assert len(sized.data) == 1 and len(sized.data[0].embedding) == 40


async def test_openai_client_sees_bad_input_and_unknown_models_as_its_errors(
    client: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as tokens:
        await client.embeddings.create(model=MODEL, input=[[1, 2, 3]])
    assert "token arrays" in tokens.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        await client.embeddings.create(model=MODEL, input=[])
    assert "'input'" in empty.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        await client.embeddings.create(model="no-such-model", input="hi")
    assert "no-such-model" in missing.value.message


TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
CHOICE: Any = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(
    "model", ["sim-gemini", "sim-ollama", "sim-azure", "sim-cohere", "claude-3", "gpt-4-mini"]
)
async def test_openai_client_tool_calls_through_every_format(client: openai.AsyncOpenAI, model: str) -> None:
    ask: Any = [{"role": "user", "content": "call get_weather for Oslo"}]
    completion = await client.chat.completions.create(
        model=model, messages=ask, tools=TOOLS, tool_choice=CHOICE
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls: list[Any] = list(choice.message.tool_calls or [])
    assert [(c.type, c.function.name, c.function.arguments) for c in calls] == [
        ("function", "get_weather", "{}")
    ]

    # The tool's answer goes back in the provider's own shape, and the model replies in text.
    history: Any = [
        *ask,
        {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp_c": 21}'},
        {"role": "user", "content": "thanks"},
    ]
    reply = await client.chat.completions.create(model=model, messages=history, tools=TOOLS)
    assert (
        reply.choices[0].message.content
        == f'[simulated {model}] received 1 word in 1 line; first line: "thanks"'
    )

    stream = await client.chat.completions.create(
        model=model, messages=ask, tools=TOOLS, tool_choice=CHOICE, stream=True
    )
    streamed = [c async for c in stream]
    fragments = [t for c in streamed for t in (c.choices[0].delta.tool_calls or []) if c.choices]
    assert [f.function.name for f in fragments if f.function] == ["get_weather"]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
