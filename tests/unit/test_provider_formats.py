"""Wire translation of the Gemini, Ollama, Azure OpenAI and Cohere adapters (no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.router.chat import ChatRequest, Message, ToolCall
from services.router.providers import azure, cohere, gemini, ollama
from services.router.providers.base import (
    ContextWindowError,
    ProviderError,
    classify,
    error_text,
    retry_info,
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
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
CALL = ToolCall("call_1", "get_weather", '{"city":"Paris"}')
TOOL_TURNS = (
    Message("system", "be brief"),
    Message("user", "weather?"),
    Message("assistant", "", tool_calls=(CALL,)),
    Message("tool", '{"temp": 20}', name="get_weather", tool_call_id="call_1"),
)


def spec(provider: str, **fields: object) -> ModelSpec:
    fields.setdefault("endpoint", "https://example.test")
    return build_spec(
        {"name": "m", "provider": provider, "provider_model": "up-model", **fields}, SpecContext()
    )


def request(**fields: Any) -> ChatRequest:
    fields.setdefault("messages", (Message("system", "be brief"), Message("user", "hi")))
    return ChatRequest(model="m", **fields)


def lines(*payloads: object) -> list[bytes]:
    return [json.dumps(p).encode() for p in payloads]


# -- Gemini ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "stream", "url"),
    [
        (
            "https://generativelanguage.googleapis.com",
            False,
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
        ),
        (
            "http://sim:8090/v1beta/",
            True,
            "http://sim:8090/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
        ),
        ("http://sim:8090/v1", False, "http://sim:8090/v1/models/gemini-2.0-flash:generateContent"),
    ],
)
def test_gemini_urls(endpoint: str, stream: bool, url: str) -> None:
    assert gemini.model_url(endpoint, "models/gemini-2.0-flash", stream=stream) == url


def test_gemini_body_translates_system_options_and_tools() -> None:
    extra = {
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "response_format": {"type": "json_object"},
        "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
        "stream_options": {"include_usage": True},  # OpenAI-only: must not reach Gemini
    }
    req = request(temperature=0.3, top_p=0.5, max_tokens=40, stop=("END",), extra=extra)
    body = gemini.request_body(spec("gemini"), req, stream=True)
    assert body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]
    assert body["generationConfig"] == {
        "temperature": 0.3,
        "topP": 0.5,
        "maxOutputTokens": 40,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
    }
    declarations = body["tools"][0]["functionDeclarations"]
    assert [d["name"] for d in declarations] == ["get_weather", "get_time"]
    assert declarations[0]["parameters"] == TOOLS[0]["function"]["parameters"]  # type: ignore[index]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}
    }
    assert body["safetySettings"] == extra["safetySettings"]
    assert "stream_options" not in body and "model" not in body


def test_gemini_tool_turns_become_function_parts() -> None:
    body = gemini.request_body(spec("gemini"), request(messages=TOOL_TURNS), stream=False)
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}}],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 20}, "id": "call_1"}}
            ],
        },
    ]


def test_gemini_key_goes_in_a_header_never_the_url() -> None:
    keyed = spec("gemini", api_key="AIza-secret")
    assert gemini.headers(keyed)["x-goog-api-key"] == "AIza-secret"
    assert "x-goog-api-key" not in gemini.headers(spec("gemini"))
    assert "secret" not in gemini.GeminiAdapter.url(None, keyed, stream=True)  # type: ignore[arg-type]


def test_gemini_answer_parsed_with_function_call_and_usage() -> None:
    result = gemini.parse_response(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "Let me check. "},
                            {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 5, "totalTokenCount": 16},
            "modelVersion": "gemini-2.0-flash-001",
            "responseId": "r1",
        }
    )
    assert (result.content, result.finish_reason, result.model, result.id) == (
        "Let me check. ",
        "tool_calls",
        "gemini-2.0-flash-001",
        "r1",
    )
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("get_weather", {"city": "Oslo"})
    ]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (11, 5)


def test_gemini_blocked_prompt_is_a_content_policy_rejection() -> None:
    with pytest.raises(ProviderError) as caught:
        gemini.parse_response({"promptFeedback": {"blockReason": "SAFETY"}})
    assert caught.value.kind == "content_policy" and not caught.value.fallback
    with pytest.raises(ProviderError) as reply:
        gemini.parse_response({"candidates": [{"finishReason": "SAFETY"}]})
    assert reply.value.kind == "content_policy"


def test_gemini_stream_parsed_and_a_cut_stream_refused() -> None:
    parser = gemini.StreamParser()
    chunks = lines(
        {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}], "responseId": "r"},
        {
            "candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": "MAX_TOKENS"}],
            "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2},
        },
    )
    assert [d.text for c in chunks if (d := parser.feed(c))] == ["Hel", "lo"]
    last = parser.end()
    assert (last.finish_reason, last.usage and last.usage.completion_tokens, last.id) == ("length", 2, "r")
    short = gemini.StreamParser()
    short.feed(chunks[0])
    with pytest.raises(ProviderError, match="finishReason"):
        short.end()


# -- Ollama ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint", ["http://localhost:11434", "http://localhost:11434/api", "http://localhost:11434/api/chat/"]
)
def test_ollama_url(endpoint: str) -> None:
    assert ollama.chat_url(endpoint) == "http://localhost:11434/api/chat"


def test_ollama_body_options_tools_and_explicit_stream_flag() -> None:
    req = request(
        temperature=0.1,
        max_tokens=9,
        stop=("x",),
        extra={"tools": TOOLS, "tool_choice": "auto", "response_format": {"type": "json_object"}},
    )
    body = ollama.request_body(spec("ollama"), req, stream=False)
    assert body["stream"] is False  # Ollama streams by default
    assert body["options"] == {"temperature": 0.1, "num_predict": 9, "stop": ["x"]}
    assert body["tools"] == TOOLS and body["format"] == "json"
    assert "tool_choice" not in body
    turns = ollama.request_body(spec("ollama"), request(messages=TOOL_TURNS), stream=True)["messages"]
    assert turns[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    }
    assert turns[3] == {"role": "tool", "content": '{"temp": 20}', "tool_name": "get_weather"}


def test_ollama_answer_and_stream_parsed() -> None:
    done = {"model": "llama3", "done": True, "done_reason": "stop", "prompt_eval_count": 26, "eval_count": 3}
    result = ollama.parse_response(
        {
            **done,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
            },
        }
    )
    assert (result.finish_reason, result.usage.prompt_tokens, result.usage.completion_tokens) == (
        "tool_calls",
        26,
        3,
    )
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == [("call_0", "f", '{"a":1}')]

    parser = ollama.StreamParser()
    stream = lines(
        {"model": "llama3", "message": {"role": "assistant", "content": "Hi"}, "done": False},
        {**done, "message": {"role": "assistant", "content": ""}},
    )
    assert [d.text for line in stream if (d := parser.feed(line))] == ["Hi"]
    assert parser.done
    last = parser.end()
    assert (last.finish_reason, last.model, last.usage and last.usage.total_tokens) == ("stop", "llama3", 29)
    with pytest.raises(ProviderError, match="model crashed"):
        ollama.StreamParser().feed(b'{"error": "model crashed"}')


# -- Azure OpenAI ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (
            "https://res.openai.azure.com",
            "https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21",
        ),
        (
            "https://res.openai.azure.com/openai?api-version=2025-01-01-preview",
            "https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2025-01-01-preview",
        ),
    ],
)
def test_azure_deployment_urls(endpoint: str, url: str) -> None:
    assert azure.deployment_url(endpoint, "gpt4o-prod", "chat/completions") == url


def test_azure_key_in_api_key_header_and_openai_body() -> None:
    adapter = azure.AzureOpenAIAdapter(None)  # type: ignore[arg-type]
    keyed = spec("azure", api_key="azkey", provider_model="dep")
    assert adapter.headers(keyed)["api-key"] == "azkey" and "Authorization" not in adapter.headers(keyed)
    assert adapter.embeddings_url(keyed).endswith("/openai/deployments/dep/embeddings?api-version=2024-10-21")
    assert adapter.body(keyed, request(), stream=True)["stream_options"] == {"include_usage": True}


# -- Cohere ----------------------------------------------------------------------------------------


def test_cohere_body_maps_options_and_forces_a_named_tool() -> None:
    extra = {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}, "seed": 7}
    req = request(top_p=0.5, stop=("END",), max_tokens=10, extra=extra)
    body = cohere.request_body(spec("cohere"), req, stream=True)
    assert (body["p"], body["stop_sequences"], body["max_tokens"], body["stream"], body["seed"]) == (
        0.5,
        ["END"],
        10,
        True,
        7,
    )
    assert [t["function"]["name"] for t in body["tools"]] == ["get_time"] and body[
        "tool_choice"
    ] == "REQUIRED"
    turns = cohere.request_body(spec("cohere"), request(messages=TOOL_TURNS), stream=False)["messages"]
    assert turns[2] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    assert turns[3] == {"role": "tool", "content": '{"temp": 20}', "tool_call_id": "call_1"}


def test_cohere_answer_parsed_preferring_real_token_counts() -> None:
    result = cohere.parse_response(
        {
            "id": "c1",
            "finish_reason": "TOOL_CALL",
            "message": {
                "role": "assistant",
                "tool_plan": "I will call it.",
                "tool_calls": [
                    {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
                ],
            },
            "usage": {
                "billed_units": {"input_tokens": 5, "output_tokens": 2},
                "tokens": {"input_tokens": 70, "output_tokens": 9},
            },
        }
    )
    assert (result.finish_reason, result.content) == ("tool_calls", "")
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == [("t1", "f", '{"x":1}')]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (70, 9)


def test_cohere_stream_with_tool_call_fragments() -> None:
    parser = cohere.StreamParser()
    events = lines(
        {"id": "c2", "type": "message-start", "delta": {"message": {"role": "assistant"}}},
        {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hi"}}}},
        {
            "type": "tool-call-start",
            "index": 0,
            "delta": {
                "message": {
                    "tool_calls": {"id": "t1", "type": "function", "function": {"name": "f", "arguments": ""}}
                }
            },
        },
        {
            "type": "tool-call-delta",
            "index": 0,
            "delta": {"message": {"tool_calls": {"function": {"arguments": '{"x"'}}}},
        },
        {
            "type": "tool-call-delta",
            "index": 0,
            "delta": {"message": {"tool_calls": {"function": {"arguments": ":1}"}}}},
        },
        {
            "type": "message-end",
            "delta": {
                "finish_reason": "TOOL_CALL",
                "usage": {"billed_units": {"input_tokens": 4, "output_tokens": 6}},
            },
        },
    )
    assert [d.text for e in events if (d := parser.feed(e))] == ["Hi"]
    last = parser.end()
    assert [(c.id, c.name, c.arguments) for c in last.tool_calls] == [("t1", "f", '{"x":1}')]
    assert (last.finish_reason, last.id, last.usage and last.usage.prompt_tokens) == ("tool_calls", "c2", 4)
    cut = cohere.StreamParser()
    cut.feed(events[0])
    with pytest.raises(ProviderError, match="message-end"):
        cut.end()


# -- errors of the new formats ----------------------------------------------------------------------


def test_gemini_error_bodies_and_retry_info() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
        }
    }
    assert error_text(body, "-") == ("Resource has been exhausted", "RESOURCE_EXHAUSTED")
    assert retry_info(body) == 37.0
    assert retry_info({"error": {"details": [{"retryDelay": "soon"}]}}) is None
    assert error_text({"error": "model 'x' not found"}, "-") == ("model 'x' not found", "")  # Ollama
    assert error_text({"id": "e", "message": "too many tokens"}, "-") == ("too many tokens", "")  # Cohere


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            "The input token count (40000) exceeds the maximum number of tokens allowed (32768).",
            "context_window_exceeded",
        ),
        (
            "too many tokens: total number of tokens in the prompt cannot exceed 4081 - received 5000",
            "context_window_exceeded",
        ),
        ("the input length exceeds the context length", "context_window_exceeded"),
        ("Output blocked by content filtering policy", "content_policy"),
        ("the request was blocked by safety filters", "content_policy"),
    ],
)
def test_new_formats_wording_is_classified(message: str, kind: str) -> None:
    err = classify(400, message)
    assert err.kind == kind
    assert isinstance(err, ContextWindowError) is (kind == "context_window_exceeded")
