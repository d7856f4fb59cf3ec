"""The simulator's Gemini and Ollama formats as the vendors' own SDKs see them (google-genai, ollama)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import ollama
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from services.simulator import Simulator

pytestmark = [
    pytest.mark.integration,
    # google-genai's async transport subclasses aiohttp's ClientSession, which aiohttp warns about.
    pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning"),
]

PROMPT = "Summarise this please"


@pytest.fixture
async def gemini(sim: Simulator) -> AsyncIterator[genai.Client]:
    client = genai.Client(api_key="sim", http_options=types.HttpOptions(base_url=sim.url))
    try:
        yield client
    finally:
        await client.aio.aclose()
        client.close()


@pytest.fixture
async def local(sim: Simulator) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=sim.url)
    try:
        yield client
    finally:
        await client.close()  # type: ignore[no-untyped-call]  # ollama leaves it unannotated


async def test_google_genai_generate_and_stream(gemini: genai.Client) -> None:
    config = types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=50)
    response = await gemini.aio.models.generate_content(model="g-echo", contents=PROMPT, config=config)
    assert response.text == PROMPT
    assert response.usage_metadata is not None
    assert (response.usage_metadata.prompt_token_count, response.usage_metadata.candidates_token_count) == (
        5,
        3,
    )
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP

    pieces = [
        c.text async for c in await gemini.aio.models.generate_content_stream(model="g-echo", contents=PROMPT)
    ]
    assert pieces == ["Summarise ", "this ", "please"]


async def test_google_genai_function_call(gemini: genai.Client) -> None:
    config = types.GenerateContentConfig(
        tools=[
            types.Tool(function_declarations=[types.FunctionDeclaration(name="lookup", description="find")])
        ],
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.ANY)
        ),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    response = await gemini.aio.models.generate_content(model="g-1", contents=PROMPT, config=config)
    assert response.function_calls is not None
    assert [(c.name, c.args) for c in response.function_calls] == [("lookup", {})]


async def test_google_genai_sees_a_rate_limit_as_its_client_error(
    gemini: genai.Client, sim: Simulator
) -> None:
    sim.behaviours.update("g-busy", {"rate_limited": True})
    with pytest.raises(genai_errors.ClientError) as caught:
        await gemini.aio.models.generate_content(model="g-busy", contents=PROMPT)
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"


async def test_ollama_client_chat_stream_and_tools(local: ollama.AsyncClient) -> None:
    response = await local.chat(model="o-echo", messages=[{"role": "user", "content": PROMPT}])
    assert response.message.content == PROMPT
    assert (response.prompt_eval_count, response.eval_count, response.done) == (3, 3, True)

    parts = [
        p
        async for p in await local.chat(
            model="o-echo", messages=[{"role": "user", "content": PROMPT}], stream=True
        )
    ]
    assert "".join(p.message.content or "" for p in parts) == PROMPT
    assert parts[-1].done and parts[-1].eval_count == 3

    tool = {
        "type": "function",
        "function": {"name": "get_weather", "description": "weather", "parameters": {"type": "object"}},
    }
    called = await local.chat(
        model="o", messages=[{"role": "user", "content": "use get_weather for Oslo"}], tools=[tool]
    )
    assert called.message.tool_calls is not None
    assert [(c.function.name, dict(c.function.arguments)) for c in called.message.tool_calls] == [
        ("get_weather", {})
    ]


async def test_ollama_client_sees_an_outage_as_its_response_error(
    local: ollama.AsyncClient, sim: Simulator
) -> None:
    sim.behaviours.update("o-down", {"outage": True})
    with pytest.raises(ollama.ResponseError) as caught:
        await local.chat(model="o-down", messages=[{"role": "user", "content": PROMPT}])
    assert caught.value.status_code == 503 and "[simulated]" in caught.value.error
