"""Scripted tool calls (``sim-call:``) in every wire format of the simulator, read back by the router's provider
adapters over real HTTP: the arguments survive the round trip, plain and streamed, and each assistant turn the
adapter sends back in its provider's shape moves the script on to the next call."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from services.router.chat import ChatRequest, Message, ToolCall
from services.router.providers import ProviderAdapter, build_adapters
from services.router.providers.base import HttpPool
from services.router.registry import ModelSpec, SpecContext, build_spec
from services.simulator import Simulator

pytestmark = pytest.mark.integration

PROVIDERS = ["openai", "anthropic", "gemini", "ollama", "azure", "cohere"]
SUFFIX = {"openai": "/v1"}
TEXT_ARGUMENTS = {"openai", "azure", "cohere"}  # formats that carry arguments as JSON text, verbatim
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "parameters": {"type": "object", "properties": {}},
        },
    }
    for name in ("get_weather", "get_time")
]
WEATHER = {"city": "Paris", "days": 2, "units": {"temp": "C"}, "tags": ["rain", "wind"], "exact": True}
TIME = {"zone": "Europe/Paris", "format": "24h"}
SCRIPT = f"be brief\nsim-call: get_weather {json.dumps(WEATHER)}\nsim-call: get_time {json.dumps(TIME)}"


@pytest.fixture
async def adapters() -> AsyncIterator[dict[str, ProviderAdapter]]:
    pool = HttpPool()
    await pool.start()
    try:
        yield build_adapters(pool)
    finally:
        await pool.close()


def model_spec(sim: Simulator, provider: str) -> ModelSpec:
    definition = {
        "name": f"{provider}-tools",
        "provider": provider,
        "endpoint": sim.url + SUFFIX.get(provider, ""),
    }
    return build_spec(definition, SpecContext(simulator_url=sim.url))


@dataclass
class Turn:
    """What one chat turn gave, plain or streamed alike."""

    content: str
    finish_reason: str
    tool_calls: tuple[ToolCall, ...]


async def ask(
    adapter: ProviderAdapter, spec: ModelSpec, messages: tuple[Message, ...], *, stream: bool, **extra: Any
) -> Turn:
    """One chat turn, plain or streamed (the stream's pieces and its final delta folded together)."""
    request = ChatRequest(model="m", messages=messages, extra={"tools": TOOLS, **extra})
    if not stream:
        result = await adapter.chat(spec, request)
        return Turn(result.content, result.finish_reason, result.tool_calls)
    deltas = [delta async for delta in adapter.stream(spec, request)]
    return Turn("".join(d.text for d in deltas), str(deltas[-1].finish_reason), tuple(deltas[-1].tool_calls))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_scripted_arguments_survive_the_round_trip_and_the_script_moves_on(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str, stream: bool
) -> None:
    adapter, spec = adapters[provider], model_spec(sim, provider)
    messages: tuple[Message, ...] = (Message("system", SCRIPT), Message("user", "what should I wear?"))

    first = await ask(adapter, spec, messages, stream=stream)
    assert first.finish_reason == "tool_calls"
    (call,) = first.tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == WEATHER
    assert call.id

    # The adapter sends the call back in its provider's shape; the simulator sees it and answers the next one.
    messages += (
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", '{"temp_c": 14}', name=call.name, tool_call_id=call.id),
    )
    second = await ask(adapter, spec, messages, stream=stream)
    (call,) = second.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_time", TIME)

    messages += (
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", '{"time": "09:00"}', name=call.name, tool_call_id=call.id),
        Message("user", "so?"),
    )
    done = await ask(adapter, spec, messages, stream=stream)
    assert done.tool_calls == () and done.finish_reason == "stop"
    assert done.content.startswith(f"[simulated {provider}-tools]")
    assert sim.stats.count(f"{provider}-tools", "bad_request") == 0


@pytest.mark.parametrize("provider", [p for p in PROVIDERS if p != "ollama"])  # Ollama has no tool_choice
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_forced_call_carries_the_scripted_arguments_of_its_tool(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str, stream: bool
) -> None:
    adapter, spec = adapters[provider], model_spec(sim, provider)
    messages = (Message("system", SCRIPT), Message("user", "weather please"))
    forced = {"type": "function", "function": {"name": "get_weather"}}
    result = await ask(adapter, spec, messages, stream=stream, tool_choice=forced)
    (call,) = result.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", WEATHER)
    # Forcing a tool the script does not call next: the call comes, with no arguments.
    other = {"type": "function", "function": {"name": "get_time"}}
    result = await ask(adapter, spec, messages, stream=stream, tool_choice=other)
    (call,) = result.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_time", {})


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_arguments_that_are_not_a_json_object_are_passed_on_as_far_as_the_format_allows(
    sim: Simulator, adapters: dict[str, ProviderAdapter], provider: str
) -> None:
    adapter, spec = adapters[provider], model_spec(sim, provider)
    messages = (Message("system", 'sim-call: get_weather {"city": "Par'), Message("user", "weather?"))
    (call,) = (await ask(adapter, spec, messages, stream=False)).tool_calls
    if provider in TEXT_ARGUMENTS:
        assert call.arguments == '{"city": "Par'
    else:  # an object format: the text goes as the router's own spelling of unparseable arguments
        assert json.loads(call.arguments) == {"_raw": '{"city": "Par'}


async def test_ollama_script_lines_do_not_also_name_the_tool(
    sim: Simulator, adapters: dict[str, ProviderAdapter]
) -> None:
    adapter, spec = adapters["ollama"], model_spec(sim, "ollama")
    call = ToolCall(id="call_0", name="get_weather", arguments=json.dumps(WEATHER))
    messages = (
        Message("user", f"sim-call: get_weather {json.dumps(WEATHER)}"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", '{"temp_c": 14}', name="get_weather", tool_call_id="call_0"),
    )
    # The script is done; the only mention of get_weather is its script line, so the reply is text.
    result = await ask(adapter, spec, messages, stream=False)
    assert result.tool_calls == () and result.finish_reason == "stop"
