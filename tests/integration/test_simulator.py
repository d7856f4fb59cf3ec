"""The provider simulator on loopback, driven by the official OpenAI and Anthropic SDKs and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from services.simulator import (
    SIMULATED_HEADER,
    SYSTEM_FINGERPRINT,
    BehaviourError,
    Simulator,
    SimulatorSettings,
    load_behaviour_file,
    start,
)

pytestmark = pytest.mark.integration

USER: Any = {"role": "user", "content": "Summarise this please\nsecond line here"}


def _nested(levels: int) -> Any:
    value: Any = {"latency_ms": 0}
    for _ in range(levels // 2):
        value = {"x": [value]}
    return value


DEEP = _nested(140)
"""Past the 64 levels a request body may nest, though well within what the JSON parser recurses through."""


@pytest.fixture
async def oai(sim: Simulator) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="sim", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def claude(sim: Simulator) -> AsyncIterator[AsyncAnthropic]:
    client = AsyncAnthropic(base_url=sim.url, api_key="sim", max_retries=0)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=sim.url) as session:
        yield session


async def put_behaviour(http: aiohttp.ClientSession, model: str, **fields: Any) -> dict[str, Any]:
    async with http.put(f"/_sim/models/{model}", json=fields) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def stats(http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get("/_sim/stats") as response:
        body: dict[str, Any] = await response.json()
        return body


# --- OpenAI format -------------------------------------------------------------------------------


async def test_health_is_labelled(http: aiohttp.ClientSession) -> None:
    async with http.get("/healthz") as response:
        assert response.status == 200
        assert response.headers[SIMULATED_HEADER] == "true"
        assert await response.json() == {"status": "ok", "simulated": True}


async def test_openai_plain_reply_is_labelled_and_counted(oai: AsyncOpenAI) -> None:
    raw = await oai.chat.completions.with_raw_response.create(model="llama-3", messages=[USER])
    assert raw.headers[SIMULATED_HEADER] == "true"
    completion = raw.parse()
    choice = completion.choices[0]
    assert (
        choice.message.content
        == '[simulated llama-3] received 6 words in 2 lines; first line: "Summarise this please"'
    )
    assert choice.finish_reason == "stop"
    assert completion.system_fingerprint == SYSTEM_FINGERPRINT
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 6
    assert completion.usage.completion_tokens == len(choice.message.content.split())
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


async def test_openai_echo_model_returns_the_last_user_message(oai: AsyncOpenAI) -> None:
    messages: Any = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "exactly this text"}]},
    ]
    completion = await oai.chat.completions.create(model="sim-echo", messages=messages)
    assert completion.choices[0].message.content == "exactly this text"


async def test_openai_long_first_line_is_truncated(oai: AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "x" * 500}]
    )
    content = completion.choices[0].message.content or ""
    assert content.endswith('x…"')
    assert len(content) < 300


async def test_openai_max_tokens_cuts_the_reply(oai: AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(
        model="sim-echo", messages=[{"role": "user", "content": "one two three four"}], max_tokens=2
    )
    assert completion.choices[0].message.content == "one two "
    assert completion.choices[0].finish_reason == "length"


async def test_openai_stream_matches_plain_reply_and_ends_with_usage(oai: AsyncOpenAI) -> None:
    plain = await oai.chat.completions.create(model="llama-3", messages=[USER])
    stream = await oai.chat.completions.create(
        model="llama-3", messages=[USER], stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == len(text.split())
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == len(content_chunks)
    assert all(c.system_fingerprint == SYSTEM_FINGERPRINT for c in chunks)


async def test_openai_stream_wire_format_ends_with_done(http: aiohttp.ClientSession) -> None:
    payload = {"model": "sim-echo", "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    async with http.post("/v1/chat/completions", json=payload) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        body = (await response.read()).decode()
    events = [line for line in body.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    deltas = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert deltas == ["", "a ", "b", None]


@pytest.mark.parametrize("path", ["/v1/chat", "/chat/completions"])
async def test_openai_route_aliases(http: aiohttp.ClientSession, path: str) -> None:
    payload = {"model": "sim-echo", "messages": [{"role": "user", "content": "alias"}]}
    async with http.post(path, json=payload) as response:
        assert response.status == 200
        assert (await response.json())["choices"][0]["message"]["content"] == "alias"


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME_TOOL: Any = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


async def test_openai_forced_tool_call(oai: AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(
        model="sim-chat",
        messages=[USER],
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == {}


async def test_openai_required_tool_call_streams(oai: AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="sim-chat", messages=[USER], tools=[WEATHER_TOOL], tool_choice="required", stream=True
    )
    chunks = [chunk async for chunk in stream]
    calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) == {}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_openai_auto_tool_choice_replies_with_text(oai: AsyncOpenAI) -> None:
    completion = await oai.chat.completions.create(model="sim-chat", messages=[USER], tools=[WEATHER_TOOL])
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.choices[0].message.content or "").startswith("[simulated sim-chat] ")


async def test_openai_embeddings_are_deterministic(oai: AsyncOpenAI) -> None:
    first = await oai.embeddings.create(model="sim-embed", input=["hello", "world"])
    again = await oai.embeddings.create(model="sim-embed", input="hello", encoding_format="float")
    assert [len(item.embedding) for item in first.data] == [16, 16]
    assert again.data[0].embedding == pytest.approx(first.data[0].embedding, abs=1e-6)
    assert first.data[0].embedding != first.data[1].embedding
    assert sum(v * v for v in first.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    assert first.usage.prompt_tokens == 2
    sized = await oai.embeddings.create(model="sim-embed", input="hello", dimensions=64)
    assert len(sized.data[0].embedding) == 64


async def test_openai_models(oai: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    await put_behaviour(http, "my-custom-model", latency_ms=0)
    ids = [model.id async for model in oai.models.list()]
    assert {"sim-chat", "sim-echo", "sim-embed", "my-custom-model"} <= set(ids)
    model = await oai.models.retrieve("anything/at-all")
    assert model.id == "anything/at-all"
    assert model.owned_by == "openclaw-simulator"


# --- Anthropic format ----------------------------------------------------------------------------


async def test_anthropic_plain_reply(claude: AsyncAnthropic) -> None:
    raw = await claude.messages.with_raw_response.create(
        model="claude-sim", max_tokens=100, system="you are terse", messages=[USER]
    )
    assert raw.headers[SIMULATED_HEADER] == "true"
    message = await raw.parse()
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    block = message.content[0]
    assert block.type == "text"
    assert block.text.startswith("[simulated claude-sim] received 6 words in 2 lines")
    assert message.usage.input_tokens == 6 + 3
    assert message.usage.output_tokens == len(block.text.split())


async def test_anthropic_stream(claude: AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="claude-echo", max_tokens=100, messages=[{"role": "user", "content": "stream me please"}]
    ) as stream:
        deltas = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert deltas == ["stream ", "me ", "please"]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3
    assert final.usage.input_tokens == 3


async def test_anthropic_stream_event_sequence(http: aiohttp.ClientSession) -> None:
    payload = {
        "model": "claude-echo",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "a b"}],
    }
    headers = {"x-api-key": "sim", "anthropic-version": "2023-06-01"}
    async with http.post("/v1/messages", json=payload, headers=headers) as response:
        body = (await response.read()).decode()
    names = [event.split("\n")[0].removeprefix("event: ") for event in body.split("\n\n") if event]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_anthropic_count_tokens(claude: AsyncAnthropic) -> None:
    counted = await claude.messages.count_tokens(model="claude-sim", system="be brief", messages=[USER])
    assert counted.input_tokens == 6 + 2


async def test_anthropic_forced_tool_use(claude: AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="claude-sim",
        max_tokens=100,
        messages=[USER],
        tools=[{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}],
        tool_choice={"type": "tool", "name": "lookup"},
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.name == "lookup"
    assert block.input == {}


async def test_anthropic_forced_tool_use_streams(claude: AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="claude-sim",
        max_tokens=100,
        messages=[USER],
        tools=[{"name": "lookup", "input_schema": {"type": "object", "properties": {}}}],
        tool_choice={"type": "any"},
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use"
    assert (block.name, block.input) == ("lookup", {})


# --- behaviours ----------------------------------------------------------------------------------


async def test_rate_limited_sends_retry_after(
    http: aiohttp.ClientSession, oai: AsyncOpenAI, claude: AsyncAnthropic
) -> None:
    await put_behaviour(http, "busy", rate_limited=True, retry_after_s=7)
    payload = {"model": "busy", "messages": [USER]}
    async with http.post("/v1/chat/completions", json=payload) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
        error = (await response.json())["error"]
        assert set(error) == {"message", "type", "code", "param"}
        assert error["code"] == "rate_limit_exceeded"
    async with http.post("/v1/messages", json={**payload, "max_tokens": 5}) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
        body = await response.json()
        assert set(body) == {"type", "error"}
        assert body["type"] == "error"
        assert body["error"]["type"] == "rate_limit_error"
        assert body["error"]["message"].startswith("[simulated]")
    with pytest.raises(openai.RateLimitError):
        await oai.chat.completions.create(model="busy", messages=[USER])
    with pytest.raises(anthropic.RateLimitError):
        await claude.messages.create(model="busy", max_tokens=5, messages=[USER])
    assert (await stats(http))["models"]["busy"]["outcomes"] == {"rate_limited": 4}


async def test_outage_answers_503(
    oai: AsyncOpenAI, claude: AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    await put_behaviour(http, "down", outage=True)
    with pytest.raises(openai.InternalServerError) as openai_error:
        await oai.chat.completions.create(model="down", messages=[USER])
    assert openai_error.value.status_code == 503
    with pytest.raises(anthropic.APIStatusError) as anthropic_error:
        await claude.messages.create(model="down", max_tokens=5, messages=[USER])
    assert anthropic_error.value.status_code == 503
    assert (await stats(http))["outcomes"] == {"outage": 2}


async def test_fail_next_fails_exactly_n_requests(oai: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    await put_behaviour(http, "flaky", fail_next=2, error_status=502)
    for _ in range(2):
        with pytest.raises(openai.APIStatusError) as error:
            await oai.chat.completions.create(model="flaky", messages=[USER])
        assert error.value.status_code == 502
    completion = await oai.chat.completions.create(model="flaky", messages=[USER])
    assert completion.choices[0].message.content
    assert (await stats(http))["models"]["flaky"]["outcomes"] == {"error": 2, "ok": 1}


async def test_default_behaviour_applies_to_every_model(
    http: aiohttp.ClientSession, oai: AsyncOpenAI
) -> None:
    await put_behaviour(http, "*", fail_next=1)
    await put_behaviour(http, "healthy", latency_ms=0)
    with pytest.raises(openai.InternalServerError):
        await oai.chat.completions.create(model="healthy", messages=[USER])
    await oai.chat.completions.create(model="other", messages=[USER])
    assert (await stats(http))["outcomes"] == {"error": 1, "ok": 1}


async def test_error_rate_is_reproducible(http: aiohttp.ClientSession) -> None:
    async def outcomes() -> list[int]:
        await put_behaviour(http, "coin", error_rate=0.5)
        statuses = []
        for _ in range(30):
            async with http.post("/v1/chat/completions", json={"model": "coin", "messages": [USER]}) as r:
                statuses.append(r.status)
        return statuses

    first = await outcomes()
    assert set(first) == {200, 500}
    assert await outcomes() == first


async def test_latency_delays_the_first_byte(oai: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    await put_behaviour(http, "slow", latency_ms=200)
    started = time.monotonic()
    await oai.chat.completions.create(model="slow", messages=[USER])
    assert time.monotonic() - started >= 0.2


async def test_token_latency_paces_the_stream(oai: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    await put_behaviour(http, "sim-echo", token_latency_ms=20)
    started = time.monotonic()
    stream = await oai.chat.completions.create(
        model="sim-echo", messages=[{"role": "user", "content": "a b c d e"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    # role chunk + 5 words + finish chunk + [DONE]: 7 gaps between 8 writes
    assert len(chunks) == 7
    assert time.monotonic() - started >= 7 * 0.020


async def test_stream_fail_after_breaks_the_connection(
    oai: AsyncOpenAI, claude: AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    await put_behaviour(http, "brittle", stream_fail_after=3)
    received: list[object] = []
    failure: Exception | None = None
    try:
        stream = await oai.chat.completions.create(model="brittle", messages=[USER], stream=True)
        async with stream:
            async for chunk in stream:
                received.append(chunk)
    except Exception as exc:
        failure = exc
    assert isinstance(failure, openai.APIConnectionError)
    assert len(received) == 3

    events: list[str] = []
    failure = None
    try:
        async with claude.messages.stream(model="brittle", max_tokens=50, messages=[USER]) as message_stream:
            async for event in message_stream:
                events.append(event.type)
    except Exception as exc:
        failure = exc
    assert failure is not None
    assert "message_stop" not in events
    assert (await stats(http))["models"]["brittle"]["outcomes"] == {"stream_broken": 2}


async def test_client_leaving_mid_stream_is_counted(sim: Simulator, http: aiohttp.ClientSession) -> None:
    await put_behaviour(http, "sim-echo", token_latency_ms=50)
    payload = {
        "model": "sim-echo",
        "stream": True,
        "messages": [{"role": "user", "content": "a b c d e f g"}],
    }
    async with http.post("/v1/chat/completions", json=payload) as response:
        await response.content.readuntil(b"\n\n")
        response.close()
    for _ in range(100):
        if sim.stats.count("sim-echo", "client_gone"):
            break
        await asyncio.sleep(0.02)
    assert sim.stats.count("sim-echo", "client_gone") == 1


async def test_stats_count_per_model_and_outcome(oai: AsyncOpenAI, http: aiohttp.ClientSession) -> None:
    await put_behaviour(http, "primary", outage=True)
    with pytest.raises(openai.InternalServerError):
        await oai.chat.completions.create(model="primary", messages=[USER])
    await oai.chat.completions.create(model="fallback", messages=[USER])
    snapshot = await stats(http)
    assert snapshot["requests"] == 2
    assert snapshot["models"]["primary"] == {"requests": 1, "outcomes": {"outage": 1}}
    assert snapshot["models"]["fallback"] == {"requests": 1, "outcomes": {"ok": 1}}
    async with http.post("/_sim/stats/reset") as response:
        assert response.status == 200
    assert (await stats(http))["requests"] == 0


# --- control API ---------------------------------------------------------------------------------


async def test_control_api_merges_reads_and_resets(http: aiohttp.ClientSession) -> None:
    await put_behaviour(http, "org/model", latency_ms=5)
    merged = await put_behaviour(http, "org/model", error_rate=0.25)
    assert merged["behaviour"]["latency_ms"] == 5
    assert merged["behaviour"]["error_rate"] == 0.25
    await put_behaviour(http, "*", token_latency_ms=3)
    async with http.get("/_sim/models") as response:
        models = (await response.json())["models"]
    assert models["*"]["token_latency_ms"] == 3
    assert models["org/model"]["token_latency_ms"] == 3
    async with http.delete("/_sim/models/org/model") as response:
        assert (await response.json())["behaviour"]["error_rate"] == 0
    async with http.delete("/_sim/models") as response:
        assert list((await response.json())["models"]) == ["*"]
    async with http.get("/_sim/models/org/model") as response:
        assert (await response.json())["behaviour"]["token_latency_ms"] == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"latency_ms": "slow"}, "latency_ms"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_status": 200}, "error_status"),
        ({"rate_limited": "yes"}, "rate_limited"),
        ({"fail_next": -2}, "fail_next"),
        ({"stream_fail_after": 1.5}, "stream_fail_after"),
        ({"latency": 10}, "latency"),
    ],
)
async def test_control_api_rejects_bad_fields(
    http: aiohttp.ClientSession, payload: dict[str, Any], field: str
) -> None:
    async with http.put("/_sim/models/x", json=payload) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["field"] == field
    assert field in error["message"]
    async with http.get("/_sim/models") as response:
        assert "x" not in (await response.json())["models"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"[" * 5000, json.dumps(DEEP).encode()])
async def test_control_api_rejects_bad_bodies(http: aiohttp.ClientSession, body: bytes) -> None:
    async with http.put("/_sim/models/x", data=body) as response:
        assert response.status == 400
        assert (await response.json())["error"]["message"]


# --- request validation --------------------------------------------------------------------------


async def test_malformed_json_gets_a_provider_shaped_400(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/chat/completions", data=b'{"model": "m",') as response:
        assert response.status == 400
        assert response.headers[SIMULATED_HEADER] == "true"
        error = (await response.json())["error"]
        assert error["type"] == "invalid_request_error"
        assert "malformed JSON" in error["message"]
    async with http.post("/v1/messages", data=b"nope") as response:
        assert response.status == 400
        body = await response.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert "malformed JSON" in body["error"]["message"]
    assert (await stats(http))["outcomes"] == {"bad_request": 2}


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/embeddings", "/v1/messages", "/v1/messages/count_tokens"]
)
@pytest.mark.parametrize(
    "body", [b"[" * 5000, json.dumps(DEEP).encode()], ids=["past-recursion", "past-limit"]
)
async def test_deeply_nested_body_is_a_provider_shaped_400(
    http: aiohttp.ClientSession, path: str, body: bytes
) -> None:
    async with http.post(path, data=body) as response:
        assert response.status == 400
        answer = await response.json()
    assert answer["error"]["type"] == "invalid_request_error"
    assert "nested too deeply" in answer["error"]["message"]
    if path.startswith("/v1/messages"):
        assert answer["type"] == "error"


def _oai(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **fields}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": [5]}]}, "messages[0].content[0]"),
        ({"model": "m", "messages": [{"role": "assistant", "tool_calls": 5}]}, "messages[0].tool_calls"),
        (_oai(max_tokens=10**30), "max_tokens"),
        (_oai(n=0), "n"),
        (_oai(temperature=10**400), "temperature"),
        (_oai(top_p=2), "top_p"),
        (_oai(stop=[1]), "stop"),
        (_oai(stream=True, stream_options="x"), "stream_options"),
    ],
)
async def test_openai_malformed_parameter_is_a_400_naming_it(
    http: aiohttp.ClientSession, body: dict[str, Any], param: str
) -> None:
    async with http.post("/v1/chat/completions", json=body) as response:
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def _anthropic(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 5, "messages": [USER], **fields}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"model": "m", "messages": [{"role": "user", "content": [5]}]}, "messages.0.content.0"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages.0.content"),
        (_anthropic(max_tokens=10**30), "max_tokens"),
        (_anthropic(temperature=10**400), "temperature"),
        (_anthropic(top_p=1.5), "top_p"),
        (_anthropic(stop_sequences="x"), "stop_sequences"),
        (_anthropic(system=[5]), "system"),
    ],
)
async def test_anthropic_malformed_field_is_a_400_naming_it(
    http: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        async with http.post(path, json=body) as response:
            assert response.status == 400, await response.text()
            answer = await response.json()
        assert answer["type"] == "error"
        assert answer["error"]["type"] == "invalid_request_error"
        assert answer["error"]["message"].startswith(f"{field}:")


async def test_missing_messages_is_a_400_naming_it(
    oai: AsyncOpenAI, claude: AsyncAnthropic, http: aiohttp.ClientSession
) -> None:
    async with http.post("/v1/chat/completions", json={"model": "m"}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="messages"):
        await oai.chat.completions.create(model="m", messages=[])
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        await claude.messages.create(model="m", max_tokens=5, messages=[])


# --- start-up ------------------------------------------------------------------------------------


async def test_behaviour_file_is_loaded_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text("models:\n  '*':\n    latency_ms: 1\n  down-model:\n    outage: true\n")
    simulator = await start(SimulatorSettings(port=0, config=config))
    try:
        assert simulator.behaviours.behaviour("down-model").outage
        assert simulator.behaviours.behaviour("down-model").latency_ms == 1
        async with (
            aiohttp.ClientSession(base_url=simulator.url) as http,
            http.post("/v1/chat/completions", json={"model": "down-model", "messages": [USER]}) as r,
        ):
            assert r.status == 503
        simulator.behaviours.update("down-model", {"outage": False})
        simulator.behaviours.reset("down-model")
        assert simulator.behaviours.behaviour("down-model").outage
    finally:
        await simulator.stop()


def test_bad_behaviour_file_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text("models:\n  m:\n    error_rate: 3\n")
    with pytest.raises(BehaviourError) as error:
        load_behaviour_file(config)
    assert error.value.field == "error_rate"
    assert "models.m" in str(error.value)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCLAW_SIMULATOR_PORT", "9123")
    monkeypatch.setenv("OPENCLAW_SIMULATOR_HOST", "0.0.0.0")
    settings = SimulatorSettings()
    assert (settings.host, settings.port, settings.config) == ("0.0.0.0", 9123, None)
