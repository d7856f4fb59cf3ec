"""Wire translation of the provider adapters, and how provider errors are classified (no I/O)."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import pytest

from services.common.breaker import AsyncBreaker
from services.router.chat import ChatRequest, Message, ToolCall
from services.router.providers import anthropic, openai
from services.router.providers.base import (
    ContextWindowError,
    ProviderError,
    ProviderRejectedError,
    ProviderUnavailableError,
    classify,
    error_text,
    parse_retry_after,
)
from services.router.registry import ModelSpec, SpecContext, build_spec

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


def spec(provider: str = "openai", **fields: object) -> ModelSpec:
    return build_spec(
        {"name": "m", "provider": provider, "provider_model": "up-model", **fields}, SpecContext()
    )


def request(**fields: Any) -> ChatRequest:
    fields.setdefault("messages", (Message("system", "be brief"), Message("user", "hi")))
    return ChatRequest(model="m", **fields)


def sse(*payloads: object) -> list[bytes]:
    return [p if isinstance(p, bytes) else json.dumps(p).encode() for p in payloads]


# -- endpoints -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("http://h:8000/v1/chat", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/chat/", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/chat/completions", "http://h:8000/v1/chat/completions"),
        ("https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1/chat/completions"),
    ],
)
def test_openai_endpoint_normalisation(endpoint: str, url: str) -> None:
    assert openai.completions_url(endpoint) == url


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
        ("http://sim:8090/v1", "http://sim:8090/v1/messages"),
        ("http://sim:8090/v1/messages", "http://sim:8090/v1/messages"),
    ],
)
def test_anthropic_endpoint_normalisation(endpoint: str, url: str) -> None:
    assert anthropic.messages_url(endpoint) == url


# -- OpenAI ----------------------------------------------------------------------------------------


def test_openai_body_params_extra_and_tools() -> None:
    req = request(
        temperature=0.2,
        max_tokens=50,
        top_p=0.9,
        stop=("\n",),
        user="u1",
        extra={
            "tools": TOOLS,
            "tool_choice": "auto",
            "response_format": {"type": "json_object"},
            "model": "x",
        },
    )
    body = openai.request_body(spec(), req, stream=False)
    assert body["model"] == "up-model"  # extra cannot override the routed model
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["stop"], body["user"]) == (
        0.2,
        50,
        0.9,
        ["\n"],
        "u1",
    )
    assert body["tools"] == TOOLS and body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"}
    assert "stream" not in body


def test_openai_stream_body_asks_for_usage() -> None:
    body = openai.request_body(spec(), request(extra={"stream_options": {"x": 1}}), stream=True)
    assert body["stream"] is True
    assert body["stream_options"] == {"x": 1, "include_usage": True}


def test_openai_tool_turns_encoded() -> None:
    call = ToolCall("call_1", "get_weather", '{"city":"Paris"}')
    req = request(
        messages=(
            Message("user", "weather?"),
            Message("assistant", "", tool_calls=(call,)),
            Message("tool", '{"temp": 20}', tool_call_id="call_1"),
        )
    )
    messages = openai.request_body(spec(), req, stream=False)["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert messages[2] == {"role": "tool", "content": '{"temp": 20}', "tool_call_id": "call_1"}


def test_openai_headers_bearer_only_with_key() -> None:
    assert "Authorization" not in openai.headers(spec())
    assert openai.headers(spec(api_key="sk-1"))["Authorization"] == "Bearer sk-1"


def test_openai_completion_parsed_with_tool_calls_and_usage() -> None:
    result = openai.parse_completion(
        {
            "id": "chatcmpl-1",
            "model": "up-model-2024",
            "created": 7,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"a":1}'},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
        }
    )
    assert (result.id, result.model, result.content, result.finish_reason, result.created) == (
        "chatcmpl-1",
        "up-model-2024",
        "",
        "tool_calls",
        7,
    )
    assert result.tool_calls == (ToolCall("c1", "f", '{"a":1}'),)
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (
        11,
        3,
        14,
    )


def test_openai_completion_without_choices_is_a_server_error() -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        openai.parse_completion({"id": "x", "choices": []})
    assert info.value.kind == "server_error"


def test_openai_stream_parsed() -> None:
    parser = openai.StreamParser()
    head = {"id": "c1", "model": "up", "object": "chat.completion.chunk"}
    payloads = sse(
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "id": "t1", "function": {"name": "f", "arguments": ""}}]
                    },
                }
            ],
        },
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}
            ],
        },
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}
            ],
        },
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
        b"[DONE]",
    )
    texts = [d.text for p in payloads if (d := parser.feed(p)) is not None]
    assert texts == ["Hel", "lo"]  # the role-only chunk is not a delta: it must not commit the stream
    assert parser.done
    last = parser.end()
    assert last.finish_reason == "tool_calls"
    assert last.tool_calls == (ToolCall("t1", "f", '{"a":1}'),)
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 2)
    assert (last.id, last.model) == ("c1", "up")


def test_openai_stream_cut_short_is_a_server_error() -> None:
    parser = openai.StreamParser()
    parser.feed(json.dumps({"id": "c", "choices": [{"index": 0, "delta": {"content": "x"}}]}).encode())
    with pytest.raises(ProviderUnavailableError, match="stream ended"):
        parser.end()
    with pytest.raises(ProviderUnavailableError, match="mid-stream"):
        openai.StreamParser().feed(b'{"error": {"message": "overloaded"}}')


# -- Anthropic -------------------------------------------------------------------------------------


def test_anthropic_body_moves_system_and_defaults_max_tokens() -> None:
    body = anthropic.request_body(spec("anthropic"), request(stop=("END",), user="u"), stream=False)
    assert body["system"] == "be brief"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] == 1024
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u"}
    assert body["model"] == "up-model"
    assert anthropic.request_body(spec("anthropic"), request(max_tokens=5), stream=True)["max_tokens"] == 5


def test_anthropic_headers() -> None:
    headers = anthropic.headers(spec("anthropic", api_key="sk-ant"))
    assert headers["x-api-key"] == "sk-ant"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "x-api-key" not in anthropic.headers(spec("anthropic"))


def test_anthropic_tools_and_tool_turns_translated() -> None:
    call = ToolCall("toolu_1", "get_weather", '{"city":"Paris"}')
    req = request(
        messages=(
            Message("user", "weather?"),
            Message("assistant", "checking", tool_calls=(call,)),
            Message("tool", "20C", tool_call_id="toolu_1"),
        ),
        extra={"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    )
    body = anthropic.request_body(spec("anthropic"), req, stream=False)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "description": "Weather in a city",
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "checking"},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "20C"}],
    }
    assert anthropic.request_body(
        spec("anthropic"), request(extra={"tool_choice": "required"}), stream=False
    )["tool_choice"] == {"type": "any"}


def test_anthropic_message_parsed() -> None:
    result = anthropic.parse_message(
        {
            "id": "msg_1",
            "type": "message",
            "model": "claude-x",
            "content": [
                {"type": "text", "text": "Let me check. "},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 9, "output_tokens": 4},
        }
    )
    assert (result.id, result.model, result.content, result.finish_reason) == (
        "msg_1",
        "claude-x",
        "Let me check. ",
        "tool_calls",
    )
    assert result.tool_calls == (ToolCall("toolu_1", "f", '{"a":1}'),)
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (9, 4)
    assert anthropic.parse_message({"content": [], "stop_reason": "max_tokens"}).finish_reason == "length"


def test_anthropic_stream_parsed() -> None:
    parser = anthropic.StreamParser()
    payloads = sse(
        {
            "type": "message_start",
            "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 7, "output_tokens": 1}},
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a":'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "1}"},
        },
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
        {"type": "message_stop"},
    )
    texts = [d.text for p in payloads if (d := parser.feed(p)) is not None]
    assert texts == ["Hi ", "there"]
    last = parser.end()
    assert last.finish_reason == "tool_calls"
    assert last.tool_calls == (ToolCall("toolu_1", "f", '{"a":1}'),)
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (7, 12)
    assert (last.id, last.model) == ("msg_1", "claude-x")


def test_anthropic_stream_errors() -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        anthropic.StreamParser().feed(
            b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'
        )
    assert info.value.kind == "server_error"
    with pytest.raises(ProviderUnavailableError, match="message_stop"):
        anthropic.StreamParser().end()


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "code", "kind", "cls"),
    [
        (429, "slow down", "", "rate_limited", ProviderUnavailableError),
        (500, "oops", "", "server_error", ProviderUnavailableError),
        (503, "outage", "", "server_error", ProviderUnavailableError),
        (529, "overloaded", "", "server_error", ProviderUnavailableError),
        (504, "gateway timeout", "", "timeout", ProviderUnavailableError),
        (401, "bad key", "", "misconfigured", ProviderUnavailableError),
        (404, "no such model", "", "misconfigured", ProviderUnavailableError),
        (
            400,
            "This model's maximum context length is 8192 tokens",
            "",
            "context_window_exceeded",
            ContextWindowError,
        ),
        (400, "too long", "context_length_exceeded", "context_window_exceeded", ContextWindowError),
        (
            400,
            "prompt is too long: 300000 tokens > 200000 maximum",
            "",
            "context_window_exceeded",
            ContextWindowError,
        ),
        (400, "flagged", "content_policy_violation", "content_policy", ProviderRejectedError),
        (400, "messages: field required", "", "client_error", ProviderRejectedError),
        (422, "bad", "", "client_error", ProviderRejectedError),
    ],
)
def test_classification(status: int, message: str, code: str, kind: str, cls: type[ProviderError]) -> None:
    err = classify(status, message, code=code)
    assert err.kind == kind
    assert type(err) is cls
    assert err.status == status


def test_kind_decides_retry_fallback_and_breaker() -> None:
    unavailable = ProviderError("rate_limited", 429, "slow", retry_after=3.0)
    assert isinstance(unavailable, ProviderUnavailableError)
    assert unavailable.retryable and unavailable.fallback and unavailable.retry_after == 3.0
    rejected = ProviderError("client_error", 400, "bad")
    assert isinstance(rejected, ProviderRejectedError)
    assert not rejected.retryable and not rejected.fallback
    assert rejected.grpc_status.name == "INVALID_ARGUMENT"
    window = ProviderError("context_window_exceeded", 400, "long")
    assert window.fallback and not window.retryable
    assert ProviderError("content_policy", 400, "no").fallback is False


async def test_breaker_counts_provider_faults_not_rejections() -> None:
    b = AsyncBreaker("test.providers.classify", fail_max=2)
    for kind in ("client_error", "content_policy", "context_window_exceeded") * 2:
        with pytest.raises(ProviderError):
            async with b.guard():
                raise ProviderError(kind, 400, "caller's fault")
    assert b.state == "closed"
    for _ in range(2):
        with pytest.raises(ProviderError):
            async with b.guard():
                raise ProviderError("server_error", 503, "down")
    assert b.state == "open"


def test_retry_after() -> None:
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({}) is None
    assert parse_retry_after({"Retry-After": "soon"}) is None
    future = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 50 < (parse_retry_after({"Retry-After": future}) or 0) <= 60


def test_error_bodies_of_both_formats() -> None:
    assert error_text({"error": {"message": "m", "code": "c", "type": "t"}}, "-") == ("m", "c")
    assert error_text({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, "-") == (
        "busy",
        "overloaded_error",
    )
    assert error_text("not json", "fallback") == ("fallback", "")
