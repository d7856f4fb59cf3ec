"""Every provider adapter over real HTTP against the simulator speaking that provider's wire format."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.router.chat import ChatDelta, ChatRequest, Message, ToolCall
from services.router.providers import ProviderAdapter, build_adapters
from services.router.providers.base import ContextWindowError, HttpPool, ProviderError, ProviderRejectedError
from services.router.registry import ModelSpec, SpecContext, build_spec
from services.simulator import Simulator

pytestmark = pytest.mark.integration

PROVIDERS = ["openai", "anthropic", "gemini", "ollama", "azure", "cohere"]
SUFFIX = {"openai": "/v1"}  # OpenAI-compatible endpoints are given as the /v1 base; the others as the host
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
FORCE = {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
PROMPT = "Summarise this please\nsecond line here"


@pytest.fixture
async def adapters() -> AsyncIterator[dict[str, ProviderAdapter]]:
    pool = HttpPool()
    await pool.start()
    try:
        yield build_adapters(pool)
    finally:
        await pool.close()


def model_spec(sim: Simulator, provider: str, name: str, **fields: Any) -> ModelSpec:
    definition = {
        "name": name,
        "provider": provider,
        "endpoint": sim.url + SUFFIX.get(provider, ""),
        **fields,
    }
    return build_spec(definition, SpecContext(simulator_url=sim.url))


def chat(text: str = PROMPT, **fields: Any) -> ChatRequest:
    return ChatRequest(model="m", messages=(Message("system", "be brief"), Message("user", text)), **fields)


async def collect(adapter: ProviderAdapter, spec: ModelSpec, request: ChatRequest) -> list[ChatDelta]:
    return [delta async for delta in adapter.stream(spec, request)]


async def failure(
    adapter: ProviderAdapter, spec: ModelSpec, request: ChatRequest, *, stream: bool
) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        if stream:
            await collect(adapter, spec, request)
        else:
            await adapter.chat(spec, request)
    return caught.value


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_plain_reply_with_usage(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str
) -> None:
    spec = model_spec(sim, provider, f"{provider}-plain")
    result = await adapters[provider].chat(spec, chat())
    expected = (
        f'[simulated {provider}-plain] received 6 words in 2 lines; first line: "Summarise this please"'
    )
    assert result.content == expected
    assert result.finish_reason == "stop"
    # Simulated tokens are words: "be brief" and the prompt in, the reply out.
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (8, len(expected.split()))
    assert result.tool_calls == ()
    assert sim.stats.count(f"{provider}-plain", "ok") == 1


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_streamed_reply_word_by_word_with_usage_last(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str
) -> None:
    spec = model_spec(sim, provider, f"{provider}-echo")
    deltas = await collect(adapters[provider], spec, chat("one two three four"))
    texts = [d.text for d in deltas if d.text]
    assert texts == ["one ", "two ", "three ", "four"]
    last = deltas[-1]
    assert last.finish_reason == "stop" and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (6, 4)
    assert all(not d.finish_reason for d in deltas[:-1])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_max_tokens_cuts_the_reply(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str, stream: bool
) -> None:
    spec = model_spec(sim, provider, f"{provider}-echo")
    request = chat("one two three four", max_tokens=2)
    if stream:
        deltas = await collect(adapters[provider], spec, request)
        text, finish = "".join(d.text for d in deltas), deltas[-1].finish_reason
    else:
        result = await adapters[provider].chat(spec, request)
        text, finish = result.content, result.finish_reason
    assert (text, finish) == ("one two ", "length")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_requested_tool_call_comes_back(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str, stream: bool
) -> None:
    spec = model_spec(sim, provider, f"{provider}-tools")
    # Ollama has no tool_choice: its simulated model calls a tool the user names.
    request = chat("call get_weather for Paris", extra=FORCE)
    if stream:
        deltas = await collect(adapters[provider], spec, request)
        calls, finish = deltas[-1].tool_calls, deltas[-1].finish_reason
        assert "".join(d.text for d in deltas) == ""
    else:
        result = await adapters[provider].chat(spec, request)
        calls, finish = result.tool_calls, result.finish_reason
    assert finish == "tool_calls"
    assert [(c.name, c.arguments, c.type) for c in calls] == [("get_weather", "{}", "function")]
    assert calls[0].id


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_tool_turns_are_accepted_in_the_providers_shape(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str
) -> None:
    spec = model_spec(sim, provider, f"{provider}-turns")
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    messages = (
        Message("system", "be brief"),
        Message("user", "weather in Paris?"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", '{"temp_c": 21}', name="get_weather", tool_call_id="call_1"),
        Message("user", "and so?"),
    )
    result = await adapters[provider].chat(
        spec, ChatRequest(model="m", messages=messages, extra={"tools": TOOLS})
    )
    assert result.content.startswith(f"[simulated {provider}-turns] received 2 words")
    assert sim.stats.count(f"{provider}-turns", "bad_request") == 0


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_rate_limit_carries_retry_after(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str, stream: bool
) -> None:
    spec = model_spec(sim, provider, f"{provider}-limited")
    sim.behaviours.update(spec.provider_model, {"rate_limited": True, "retry_after_s": 7})
    err = await failure(adapters[provider], spec, chat(), stream=stream)
    assert (err.kind, err.status, err.retry_after) == ("rate_limited", 429, 7.0)
    assert err.retryable and err.fallback


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("behaviour", "status"), [({"outage": True}, 503), ({"fail_next": 1}, 500)])
async def test_server_errors(
    sim: Simulator,
    adapters: dict[str, ProviderAdapter],
    provider: str,
    behaviour: dict[str, Any],
    status: int,
) -> None:
    spec = model_spec(sim, provider, f"{provider}-down")
    sim.behaviours.update(spec.provider_model, behaviour)
    err = await failure(adapters[provider], spec, chat(), stream=False)
    assert (err.kind, err.status) == ("server_error", status)
    assert "[simulated]" in err.message


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_prompt_over_the_context_window(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str, stream: bool
) -> None:
    spec = model_spec(sim, provider, f"{provider}-small")
    sim.behaviours.update(spec.provider_model, {"context_window": 5})
    err = await failure(adapters[provider], spec, chat(), stream=stream)
    assert isinstance(err, ContextWindowError)
    assert err.kind == "context_window_exceeded" and err.fallback and not err.retryable
    # Under the window the same model answers.
    assert (await adapters[provider].chat(spec, chat("hi"))).content.startswith("[simulated")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_content_policy_refusal(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str, stream: bool
) -> None:
    spec = model_spec(sim, provider, f"{provider}-strict")
    sim.behaviours.update(spec.provider_model, {"content_policy": True})
    err = await failure(adapters[provider], spec, chat(), stream=stream)
    assert isinstance(err, ProviderRejectedError) and not isinstance(err, ContextWindowError)
    assert err.kind == "content_policy" and not err.fallback
    assert sim.stats.count(spec.provider_model, "content_policy") == 1


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_no_answer_in_time_is_a_timeout(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str, stream: bool
) -> None:
    spec = model_spec(sim, provider, f"{provider}-slow", timeout_seconds=0.05)
    sim.behaviours.update(spec.provider_model, {"latency_ms": 400})
    err = await failure(adapters[provider], spec, chat(), stream=stream)
    assert err.kind == "timeout" and err.fallback


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_stream_broken_off_is_an_error_not_a_short_reply(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str
) -> None:
    spec = model_spec(sim, provider, f"{provider}-flaky")
    sim.behaviours.update(spec.provider_model, {"stream_fail_after": 2})
    err = await failure(adapters[provider], spec, chat(), stream=True)
    assert err.kind in ("server_error", "connection_error")
    assert sim.stats.count(spec.provider_model, "stream_broken") == 1
