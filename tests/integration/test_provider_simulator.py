"""The simulator's Gemini, Ollama, Azure OpenAI and Cohere formats, over raw HTTP and the official Azure client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncAzureOpenAI

from services.simulator import SIMULATED_HEADER, Simulator

pytestmark = pytest.mark.integration

USER: Any = {"role": "user", "content": "Summarise this please"}
API_VERSION = "2024-10-21"


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=sim.url) as session:
        yield session


@pytest.fixture
async def azure(sim: Simulator) -> AsyncIterator[AsyncAzureOpenAI]:
    client = AsyncAzureOpenAI(azure_endpoint=sim.url, api_version=API_VERSION, api_key="sim", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


async def post(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    async with http.post(path, json=body) as response:
        assert response.headers[SIMULATED_HEADER] == "true"
        return response.status, await response.json()


# -- Azure OpenAI, driven by the official client ------------------------------------------------------


async def test_azure_client_chat_stream_and_embeddings(azure: AsyncAzureOpenAI, sim: Simulator) -> None:
    completion = await azure.chat.completions.create(model="my-deployment", messages=[USER])
    assert completion.choices[0].message.content == (
        '[simulated my-deployment] received 3 words in 1 line; first line: "Summarise this please"'
    )
    stream = await azure.chat.completions.create(
        model="my-deployment",
        messages=[USER],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == completion.choices[0].message.content
    vectors = await azure.embeddings.create(model="my-embedder", input=["a b", "a c"])
    assert [len(d.embedding) for d in vectors.data] == [16, 16]
    assert sim.stats.count("my-deployment", "ok") == 2 and sim.stats.count("my-embedder", "ok") == 1


async def test_azure_without_api_version_is_400_naming_it(http: aiohttp.ClientSession) -> None:
    status, body = await post(http, "/openai/deployments/d/chat/completions", {"messages": [USER]})
    assert status == 400 and body["error"]["param"] == "api-version"


async def test_azure_content_filter_is_the_client_bad_request(
    azure: AsyncAzureOpenAI, sim: Simulator
) -> None:
    sim.behaviours.update("strict", {"content_policy": True})
    with pytest.raises(openai.BadRequestError) as caught:
        await azure.chat.completions.create(model="strict", messages=[USER])
    assert caught.value.code == "content_filter"


# -- Gemini --------------------------------------------------------------------------------------------

GEMINI = {
    "systemInstruction": {"parts": [{"text": "be brief"}]},
    "contents": [{"role": "user", "parts": [{"text": "Summarise this please"}]}],
}


async def test_gemini_generate_content(http: aiohttp.ClientSession) -> None:
    status, body = await post(http, "/v1beta/models/g-1:generateContent", GEMINI)
    assert status == 200
    candidate = body["candidates"][0]
    assert candidate["content"]["role"] == "model" and candidate["finishReason"] == "STOP"
    assert candidate["content"]["parts"][0]["text"].startswith("[simulated g-1]")
    assert body["usageMetadata"]["promptTokenCount"] == 5
    assert body["modelVersion"] == "g-1"


async def test_gemini_stream_is_sse_of_whole_responses(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1beta/models/g-echo:streamGenerateContent?alt=sse", json=GEMINI) as response:
        assert response.content_type == "text/event-stream"
        raw = await response.text()
    events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]
    texts = [e["candidates"][0]["content"]["parts"][0]["text"] for e in events]
    assert "".join(texts) == "Summarise this please"
    assert "finishReason" in events[-1]["candidates"][0] and "usageMetadata" in events[-1]
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])


async def test_gemini_forced_function_call(http: aiohttp.ClientSession) -> None:
    tools = [{"functionDeclarations": [{"name": "lookup"}, {"name": "other"}]}]
    body = {**GEMINI, "tools": tools, "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}
    status, answer = await post(http, "/v1beta/models/g-1:generateContent", body)
    assert status == 200
    assert answer["candidates"][0]["content"]["parts"] == [{"functionCall": {"name": "lookup", "args": {}}}]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v1beta/models/g-1:generateContent", {"contents": []}, 400, "contents"),
        (
            "/v1beta/models/g-1:generateContent",
            {"contents": [{"role": "bot", "parts": []}]},
            400,
            "contents[0].role",
        ),
        (
            "/v1beta/models/g-1:generateContent",
            {**GEMINI, "generationConfig": {"maxOutputTokens": 0}},
            400,
            "generationConfig.maxOutputTokens",
        ),
        ("/v1beta/models/g-1:streamGenerateContent", GEMINI, 400, "alt"),
        ("/v1beta/models/g-1:embedEverything", GEMINI, 404, "embedEverything"),
    ],
)
async def test_gemini_bad_requests_name_the_field(
    http: aiohttp.ClientSession, path: str, body: Any, status: int, words: str
) -> None:
    got, answer = await post(http, path, body)
    assert got == status and words in answer["error"]["message"]
    assert answer["error"]["code"] == status and answer["error"]["status"]


async def test_gemini_rate_limit_has_retry_info_and_policy_block_is_a_200(
    http: aiohttp.ClientSession, sim: Simulator
) -> None:
    sim.behaviours.update("g-busy", {"rate_limited": True, "retry_after_s": 9})
    status, body = await post(http, "/v1beta/models/g-busy:generateContent", GEMINI)
    assert (status, body["error"]["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert body["error"]["details"][0]["retryDelay"] == "9s"
    sim.behaviours.update("g-strict", {"content_policy": True})
    status, body = await post(http, "/v1beta/models/g-strict:generateContent", GEMINI)
    assert (status, body["promptFeedback"]) == (200, {"blockReason": "SAFETY"})
    assert "candidates" not in body


# -- Ollama ----------------------------------------------------------------------------------------------


async def test_ollama_streams_ndjson_unless_told_not_to(http: aiohttp.ClientSession) -> None:
    async with http.post("/api/chat", json={"model": "o-echo", "messages": [USER]}) as response:
        assert response.content_type == "application/x-ndjson"
        lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "Summarise this please"
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert (lines[-1]["prompt_eval_count"], lines[-1]["eval_count"], lines[-1]["done_reason"]) == (
        3,
        3,
        "stop",
    )

    status, body = await post(http, "/api/chat", {"model": "o-echo", "messages": [USER], "stream": False})
    assert status == 200 and body["done"] is True and body["message"]["content"] == "Summarise this please"


async def test_ollama_calls_a_tool_the_user_names(http: aiohttp.ClientSession) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    ask = {"role": "user", "content": "use get_weather please"}
    status, body = await post(
        http, "/api/chat", {"model": "o", "messages": [ask], "tools": tools, "stream": False}
    )
    assert status == 200
    assert body["message"]["tool_calls"] == [{"function": {"name": "get_weather", "arguments": {}}}]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"messages": [USER]}, "model"),
        ({"model": "o", "messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content"),
        ({"model": "o", "messages": [USER], "options": {"temperature": 9}}, "options.temperature"),
    ],
)
async def test_ollama_bad_requests_name_the_field(http: aiohttp.ClientSession, body: Any, words: str) -> None:
    status, answer = await post(http, "/api/chat", body)
    assert status == 400 and words in answer["error"]


# -- Cohere ----------------------------------------------------------------------------------------------


async def test_cohere_chat_and_its_event_stream(http: aiohttp.ClientSession) -> None:
    status, body = await post(http, "/v2/chat", {"model": "c-echo", "messages": [USER]})
    assert status == 200 and body["finish_reason"] == "COMPLETE"
    assert body["message"]["content"] == [{"type": "text", "text": "Summarise this please"}]
    assert body["usage"]["tokens"] == {"input_tokens": 3, "output_tokens": 3}
    async with http.post(
        "/v2/chat", json={"model": "c-echo", "messages": [USER], "stream": True}
    ) as response:
        raw = await response.text()
    kinds = [line[7:] for line in raw.splitlines() if line.startswith("event: ")]
    assert kinds == ["message-start", "content-start", *["content-delta"] * 3, "content-end", "message-end"]


async def test_cohere_required_tool_and_bad_tool_choice(http: aiohttp.ClientSession) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    body = {"model": "c", "messages": [USER], "tools": tools, "tool_choice": "REQUIRED"}
    status, answer = await post(http, "/v2/chat", body)
    assert status == 200 and answer["finish_reason"] == "TOOL_CALL"
    assert answer["message"]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": "{}"}
    status, answer = await post(http, "/v2/chat", {**body, "tool_choice": "auto"})
    assert status == 400 and "tool_choice" in answer["message"]


# -- behaviours that every format answers in its own words ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "w", "messages": [USER]}),
        ("/v1/messages", {"model": "w", "max_tokens": 9, "messages": [USER]}),
        ("/v1beta/models/w:generateContent", {"contents": [{"parts": [{"text": "Summarise this please"}]}]}),
        ("/api/chat", {"model": "w", "messages": [USER], "stream": False}),
        ("/v2/chat", {"model": "w", "messages": [USER]}),
    ],
)
async def test_context_window_applies_to_every_format(
    http: aiohttp.ClientSession, sim: Simulator, path: str, body: Any
) -> None:
    sim.behaviours.update("w", {"context_window": 2})
    status, answer = await post(http, path, body)
    assert status == 400 and "3" in json.dumps(answer)
    sim.behaviours.update("w", {"context_window": 3})
    status, _ = await post(http, path, body)
    assert status == 200
    assert sim.stats.count("w", "context_window") == 1 and sim.stats.count("w", "ok") == 1


@pytest.mark.parametrize(
    ("patch", "field"), [({"context_window": 0}, "context_window"), ({"content_policy": 1}, "content_policy")]
)
async def test_new_behaviour_fields_are_validated(
    http: aiohttp.ClientSession, patch: dict[str, Any], field: str
) -> None:
    async with http.put("/_sim/models/x", json=patch) as response:
        assert response.status == 400
        assert (await response.json())["error"]["field"] == field
