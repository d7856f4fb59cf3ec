"""OpenAI-compatible chat completions (OpenAI, vLLM, Ollama's /v1, DeepSeek, Groq, the simulator...)."""

from __future__ import annotations

import json
from typing import Any

from services.router.chat import (
    ChatDelta,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    Message,
    ToolCall,
    Usage,
)
from services.router.providers.base import HttpAdapter, ProviderError, as_dict, embedding_list, post_json
from services.router.registry import ModelSpec


def completions_url(endpoint: str) -> str:
    """The chat completions URL of an endpoint given as a base URL, a ``/chat`` URL or the full URL."""
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/chat/completions"):
        return endpoint
    if endpoint.endswith("/chat"):
        return endpoint + "/completions"
    return endpoint + "/chat/completions"


def embeddings_url(endpoint: str) -> str:
    """The embeddings URL of an endpoint given as a base URL (``.../v1``) or a chat URL."""
    endpoint = endpoint.rstrip("/")
    for suffix in ("/chat/completions", "/chat", "/embeddings"):
        if endpoint.endswith(suffix):
            endpoint = endpoint[: -len(suffix)]
            break
    return endpoint + "/embeddings"


def encode_message(message: Message) -> dict[str, Any]:
    """One message in OpenAI's shape."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": c.type or "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        if not message.content:
            out["content"] = None
    return out


def request_body(spec: ModelSpec, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The JSON body of a chat completions call; ``extra`` fields (tools, tool_choice...) pass through."""
    body: dict[str, Any] = dict(request.extra) if request.extra else {}
    body["model"] = spec.provider_model
    body["messages"] = [encode_message(m) for m in request.messages]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if request.user:
        body["user"] = request.user
    if stream:
        body["stream"] = True
        options = body.get("stream_options")
        body["stream_options"] = (
            {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
        )
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return body


def headers(spec: ModelSpec) -> dict[str, str]:
    """Request headers: JSON, and a Bearer key when the model has one."""
    out = {"Content-Type": "application/json", "Accept": "application/json"}
    if spec.credential:
        out["Authorization"] = f"Bearer {spec.credential}"
    return out


def _usage(data: Any) -> Usage:
    if not isinstance(data, dict):
        return Usage()
    return Usage(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


def _tool_calls(data: Any) -> tuple[ToolCall, ...]:
    if not isinstance(data, list):
        return ()
    calls = []
    for item in data:
        if not isinstance(item, dict):
            continue
        function = as_dict(item.get("function"))
        arguments = function.get("arguments", "")
        calls.append(
            ToolCall(
                id=str(item.get("id") or ""),
                name=str(function.get("name") or ""),
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
                type=str(item.get("type") or "function"),
            )
        )
    return tuple(calls)


def parse_completion(data: Any) -> ChatResult:
    """A chat.completion object as a ChatResult."""
    if not isinstance(data, dict):
        raise ProviderError("server_error", 200, "answer is not a chat completion object")
    if "error" in data and not data.get("choices"):
        raise ProviderError("server_error", 200, f"provider error: {data['error']}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProviderError("server_error", 200, "answer has no choices")
    choice = choices[0]
    message = as_dict(choice.get("message"))
    content = message.get("content")
    return ChatResult(
        id=str(data.get("id") or ""),
        model=str(data.get("model") or ""),
        content=content if isinstance(content, str) else "",
        finish_reason=str(choice.get("finish_reason") or "stop"),
        usage=_usage(data.get("usage")),
        tool_calls=_tool_calls(message.get("tool_calls")),
        created=int(data.get("created") or 0),
    )


class _ToolCallParts:
    """Streamed tool-call fragments, joined by index into whole calls."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}

    def add(self, fragments: Any) -> None:
        if not isinstance(fragments, list):
            return
        for fragment in fragments:
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index", len(self._calls))
            parts = self._calls.setdefault(int(index), ["", "", "", "function"])
            if fragment.get("id"):
                parts[0] = str(fragment["id"])
            if fragment.get("type"):
                parts[3] = str(fragment["type"])
            function = fragment.get("function")
            if isinstance(function, dict):
                if function.get("name"):
                    parts[1] += str(function["name"])
                if function.get("arguments"):
                    parts[2] += str(function["arguments"])

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(id=p[0], name=p[1], arguments=p[2], type=p[3]) for _, p in sorted(self._calls.items())
        )


class StreamParser:
    """Turns the ``data:`` payloads of a chat completions stream into ChatDeltas."""

    __slots__ = ("_finish", "_id", "_model", "_tools", "_usage", "done")

    def __init__(self) -> None:
        self._tools = _ToolCallParts()
        self._usage: Usage | None = None
        self._finish = ""
        self._id = ""
        self._model = ""
        self.done = False

    def feed(self, payload: bytes) -> ChatDelta | None:
        """One payload; returns a delta when it carries text."""
        if payload == b"[DONE]":
            self.done = True
            return None
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise ProviderError("server_error", 200, f"bad stream chunk: {payload[:200]!r}") from None
        if not isinstance(chunk, dict):
            return None
        if "error" in chunk:
            raise ProviderError("server_error", 200, f"provider error mid-stream: {chunk['error']}")
        if not self._id:
            self._id = str(chunk.get("id") or "")
            self._model = str(chunk.get("model") or "")
        if chunk.get("usage"):
            self._usage = _usage(chunk["usage"])
        text = ""
        for choice in chunk.get("choices") or ():
            delta = as_dict(as_dict(choice).get("delta"))
            content = delta.get("content")
            if content:
                text += content
            if "tool_calls" in delta:
                self._tools.add(delta["tool_calls"])
            if choice.get("finish_reason"):
                self._finish = str(choice["finish_reason"])
        return ChatDelta(text=text, id=self._id, model=self._model) if text else None

    def end(self) -> ChatDelta:
        """The last delta (tool calls, finish reason, usage); raises if the stream stopped short."""
        if not self.done and not self._finish:
            raise ProviderError("server_error", 200, "stream ended before the completion finished")
        return ChatDelta(
            tool_calls=self._tools.calls(),
            finish_reason=self._finish or "stop",
            usage=self._usage or Usage(),
            id=self._id,
            model=self._model,
        )


def embed_body(spec: ModelSpec, request: EmbedRequest) -> dict[str, Any]:
    """The JSON body of an embeddings call."""
    body: dict[str, Any] = {
        "model": spec.provider_model,
        "input": list(request.inputs),
        "encoding_format": "float",
    }
    if request.dimensions:
        body["dimensions"] = request.dimensions
    if request.user:
        body["user"] = request.user
    return body


def parse_embeddings(data: Any, count: int) -> EmbedResult:
    """An embeddings ``list`` object as an EmbedResult, vectors in input order."""
    items = as_dict(data).get("data")
    if not isinstance(items, list) or len(items) != count:
        raise ProviderError("server_error", 200, f"answer does not hold {count} embeddings")
    vectors: list[tuple[float, ...] | None] = [None] * count
    for position, item in enumerate(items):
        entry = as_dict(item)
        index = entry.get("index", position)
        if not isinstance(index, int) or not 0 <= index < count or vectors[index] is not None:
            raise ProviderError("server_error", 200, f"data[{position}].index is not a fresh input index")
        vectors[index] = tuple(embedding_list(entry.get("embedding"), f"data[{position}].embedding"))
    usage = as_dict(as_dict(data).get("usage"))
    return EmbedResult(
        model=str(as_dict(data).get("model") or ""),
        vectors=tuple(v for v in vectors if v is not None),
        usage=Usage(int(usage.get("prompt_tokens") or 0), 0),
    )


class OpenAIAdapter(HttpAdapter):
    """Speaks ``POST {endpoint}/chat/completions`` (plain and SSE) and ``POST {endpoint}/embeddings``."""

    name = "openai"

    body = staticmethod(request_body)
    parse = staticmethod(parse_completion)
    parser = StreamParser

    def url(self, spec: ModelSpec, *, stream: bool) -> str:
        """``{endpoint}/chat/completions``, streamed or not."""
        return completions_url(spec.endpoint)

    def embeddings_url(self, spec: ModelSpec) -> str:
        """``{endpoint}/embeddings``."""
        return embeddings_url(spec.endpoint)

    def headers(self, spec: ModelSpec) -> dict[str, str]:
        """JSON, and a Bearer key when the model has one."""
        return headers(spec)

    async def embed(self, spec: ModelSpec, request: EmbedRequest) -> EmbedResult:
        """One vector per input."""
        data = await post_json(
            self._pool.session,
            self.embeddings_url(spec),
            embed_body(spec, request),
            self.headers(spec),
            spec.timeout_seconds,
        )
        return parse_embeddings(data, len(request.inputs))
