"""Ollama's native chat API (``POST /api/chat``), plain and NDJSON-streamed; replies mapped to OpenAI terms."""

from __future__ import annotations

import json
from typing import Any

from services.router.chat import ChatDelta, ChatRequest, ChatResult, Message, ToolCall, Usage
from services.router.providers.base import (
    HttpAdapter,
    ProviderError,
    arguments_text,
    as_dict,
    parse_arguments,
    pick,
)
from services.router.registry import ModelSpec

_PASS_THROUGH = frozenset({"format", "keep_alive", "think"})
_FINISH = {"stop": "stop", "length": "length"}


def chat_url(endpoint: str) -> str:
    """``{host}/api/chat``; the endpoint may be the host or already end in ``/api`` or ``/api/chat``."""
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/api/chat"):
        return endpoint
    if endpoint.endswith("/api"):
        return endpoint + "/chat"
    return endpoint + "/api/chat"


def encode_message(message: Message) -> dict[str, Any]:
    """One message in Ollama's shape: tool-call arguments are objects, tool results name their tool."""
    out: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role}
    out["content"] = message.content
    if message.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": c.name, "arguments": parse_arguments(c.arguments)}}
            for c in message.tool_calls
        ]
    if message.role == "tool" and message.name:
        out["tool_name"] = message.name
    return out


def request_body(spec: ModelSpec, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The JSON body of an ``/api/chat`` call; sampling settings go in ``options``."""
    extra = request.extra or {}
    body = pick(extra, _PASS_THROUGH)
    body["model"] = spec.provider_model
    body["messages"] = [encode_message(m) for m in request.messages]
    body["stream"] = stream  # Ollama streams unless told not to
    options: dict[str, Any] = dict(as_dict(extra.get("options")))
    for key, value in (
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("num_predict", request.max_tokens),
    ):
        if value is not None:
            options[key] = value
    if request.stop:
        options["stop"] = list(request.stop)
    if options:
        body["options"] = options
    if isinstance(extra.get("tools"), list) and extra["tools"]:
        body["tools"] = extra["tools"]  # OpenAI's function-tool shape is Ollama's too
    if "format" not in body and as_dict(extra.get("response_format")).get("type") == "json_object":
        body["format"] = "json"
    return body


def headers(spec: ModelSpec) -> dict[str, str]:
    """JSON, and a Bearer key when the model has one (a proxy in front of Ollama may want it)."""
    out = {"Content-Type": "application/json", "Accept": "application/json"}
    if spec.credential:
        out["Authorization"] = f"Bearer {spec.credential}"
    return out


def _tool_calls(data: Any, first: int = 0) -> list[ToolCall]:
    calls = []
    for index, item in enumerate(data if isinstance(data, list) else (), start=first):
        function = as_dict(as_dict(item).get("function"))
        calls.append(
            ToolCall(
                id=str(as_dict(item).get("id") or f"call_{index}"),
                name=str(function.get("name") or ""),
                arguments=arguments_text(function.get("arguments")),
            )
        )
    return calls


def _check(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProviderError("server_error", 200, "answer is not a chat response object")
    if "error" in data:
        raise ProviderError("server_error", 200, f"provider error: {data['error']}")
    return data


def _finish(data: dict[str, Any], calls: list[ToolCall]) -> str:
    if calls:
        return "tool_calls"
    return _FINISH.get(str(data.get("done_reason") or "stop"), str(data.get("done_reason")))


def _usage(data: dict[str, Any]) -> Usage:
    return Usage(int(data.get("prompt_eval_count") or 0), int(data.get("eval_count") or 0))


def parse_response(data: Any) -> ChatResult:
    """A finished (``done``) chat response as a ChatResult."""
    data = _check(data)
    if not data.get("done"):
        raise ProviderError("server_error", 200, "answer is not done")
    message = as_dict(data.get("message"))
    calls = _tool_calls(message.get("tool_calls"))
    content = message.get("content")
    return ChatResult(
        id="",
        model=str(data.get("model") or ""),
        content=content if isinstance(content, str) else "",
        finish_reason=_finish(data, calls),
        usage=_usage(data),
        tool_calls=tuple(calls),
    )


class StreamParser:
    """Turns the lines of an ``/api/chat`` NDJSON stream into ChatDeltas."""

    __slots__ = ("_calls", "_last", "_model", "done")

    def __init__(self) -> None:
        self._calls: list[ToolCall] = []
        self._last: dict[str, Any] = {}
        self._model = ""
        self.done = False

    def feed(self, payload: bytes) -> ChatDelta | None:
        """One line; returns a delta when it carries text."""
        try:
            data = _check(json.loads(payload))
        except ValueError:
            raise ProviderError("server_error", 200, f"bad stream line: {payload[:200]!r}") from None
        self._model = self._model or str(data.get("model") or "")
        message = as_dict(data.get("message"))
        self._calls.extend(_tool_calls(message.get("tool_calls"), len(self._calls)))
        if data.get("done"):
            self.done = True
            self._last = data
        text = message.get("content")
        return ChatDelta(text=text, model=self._model) if isinstance(text, str) and text else None

    def end(self) -> ChatDelta:
        """The last delta; raises if no line said ``done``."""
        if not self.done:
            raise ProviderError("server_error", 200, "stream ended before done")
        return ChatDelta(
            tool_calls=tuple(self._calls),
            finish_reason=_finish(self._last, self._calls),
            usage=_usage(self._last),
            model=self._model,
        )


class OllamaAdapter(HttpAdapter):
    """Speaks ``POST {endpoint}/api/chat``, plain and NDJSON."""

    name = "ollama"
    framing = "ndjson"

    body = staticmethod(request_body)
    headers = staticmethod(headers)
    parse = staticmethod(parse_response)
    parser = StreamParser

    def url(self, spec: ModelSpec, *, stream: bool) -> str:
        """``{endpoint}/api/chat``."""
        return chat_url(spec.endpoint)
