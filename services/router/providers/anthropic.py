"""Anthropic Messages API (``POST /v1/messages``), plain and SSE; replies are mapped to OpenAI terms."""

from __future__ import annotations

import json
from typing import Any

from services.router.chat import ChatDelta, ChatRequest, ChatResult, Message, ToolCall, Usage
from services.router.providers.base import ErrorKind, HttpAdapter, ProviderError, as_dict, parse_arguments
from services.router.registry import ModelSpec

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
_SYSTEM_ROLES = frozenset({"system", "developer"})
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
_TOOL_CHOICE = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}


def messages_url(endpoint: str) -> str:
    """The Messages URL of an endpoint given as the host, the ``/v1`` base or the full URL."""
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/messages"):
        return endpoint
    if endpoint.endswith("/v1"):
        return endpoint + "/messages"
    return endpoint + "/v1/messages"


def encode_messages(messages: tuple[Message, ...]) -> tuple[str, list[dict[str, Any]]]:
    """(system prompt, messages): system messages move to the top-level ``system``; tool turns become blocks."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role in _SYSTEM_ROLES:
            if m.content:
                system.append(m.content)
        elif m.role == "tool":
            out.append(
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}],
                }
            )
        elif m.tool_calls:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
            blocks.extend(
                {"type": "tool_use", "id": c.id, "name": c.name, "input": parse_arguments(c.arguments)}
                for c in m.tool_calls
            )
            out.append({"role": "assistant", "content": blocks})
        else:
            out.append({"role": m.role, "content": m.content})
    return "\n\n".join(system), out


def _tools(tools: Any) -> Any:
    """OpenAI-shaped tool definitions become Anthropic ones; Anthropic-shaped ones pass unchanged."""
    if not isinstance(tools, list):
        return tools
    out = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            converted = {
                "name": function.get("name", ""),
                "input_schema": function.get("parameters") or {"type": "object"},
            }
            if function.get("description"):
                converted["description"] = function["description"]
            out.append(converted)
        else:
            out.append(tool)
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return _TOOL_CHOICE.get(choice, {"type": choice})
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name", "")}
    return choice


def request_body(spec: ModelSpec, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The JSON body of a Messages call; ``extra`` passes through (OpenAI-style tools are converted)."""
    body: dict[str, Any] = dict(request.extra) if request.extra else {}
    system, messages = encode_messages(request.messages)
    body["model"] = spec.provider_model
    body["messages"] = messages
    if system:
        body["system"] = system
    body["max_tokens"] = request.max_tokens or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.user:
        body["metadata"] = {**(body.get("metadata") or {}), "user_id": request.user}
    if "tools" in body:
        body["tools"] = _tools(body["tools"])
    if "tool_choice" in body:
        body["tool_choice"] = _tool_choice(body["tool_choice"])
    body.pop("stream_options", None)
    if stream:
        body["stream"] = True
    else:
        body.pop("stream", None)
    return body


def headers(spec: ModelSpec) -> dict[str, str]:
    """Request headers: JSON, the API version, and ``x-api-key`` when the model has a key."""
    out = {"Content-Type": "application/json", "Accept": "application/json", "anthropic-version": API_VERSION}
    if spec.credential:
        out["x-api-key"] = spec.credential
    return out


def parse_message(data: Any) -> ChatResult:
    """A Messages API ``message`` object as a ChatResult."""
    if not isinstance(data, dict) or data.get("type") == "error":
        raise ProviderError("server_error", 200, f"answer is not a message: {str(data)[:200]}")
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in data.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            text.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            calls.append(
                ToolCall(
                    id=str(block.get("id") or ""),
                    name=str(block.get("name") or ""),
                    arguments=json.dumps(block.get("input") or {}, separators=(",", ":")),
                )
            )
    usage = as_dict(data.get("usage"))
    return ChatResult(
        id=str(data.get("id") or ""),
        model=str(data.get("model") or ""),
        content="".join(text),
        finish_reason=_FINISH.get(str(data.get("stop_reason")), str(data.get("stop_reason") or "stop")),
        usage=Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)),
        tool_calls=tuple(calls),
    )


class StreamParser:
    """Turns the ``data:`` payloads of a Messages stream into ChatDeltas."""

    __slots__ = ("_blocks", "_finish", "_id", "_model", "_usage", "done")

    def __init__(self) -> None:
        self._usage = Usage()
        self._finish = ""
        self._id = ""
        self._model = ""
        self._blocks: dict[int, list[str]] = {}  # index -> [id, name, partial json] of tool_use blocks
        self.done = False

    def feed(self, payload: bytes) -> ChatDelta | None:
        """One event; returns a delta when it carries text."""
        try:
            event = json.loads(payload)
        except ValueError:
            raise ProviderError("server_error", 200, f"bad stream event: {payload[:200]!r}") from None
        event = as_dict(event)
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = as_dict(event.get("delta"))
            if delta.get("type") == "text_delta":
                text = delta.get("text")
                return ChatDelta(text=text, id=self._id, model=self._model) if text else None
            block = self._blocks.get(int(event.get("index", 0)))
            if delta.get("type") == "input_json_delta" and block is not None:
                block[2] += str(delta.get("partial_json") or "")
        elif kind == "message_start":
            message = as_dict(event.get("message"))
            self._id = str(message.get("id") or "")
            self._model = str(message.get("model") or "")
            usage = as_dict(message.get("usage"))
            self._usage.prompt_tokens = int(usage.get("input_tokens") or 0)
            self._usage.completion_tokens = int(usage.get("output_tokens") or 0)
        elif kind == "content_block_start":
            start = as_dict(event.get("content_block"))
            if start.get("type") == "tool_use":
                self._blocks[int(event.get("index", 0))] = [
                    str(start.get("id") or ""),
                    str(start.get("name") or ""),
                    "",
                ]
        elif kind == "message_delta":
            stop = as_dict(event.get("delta")).get("stop_reason")
            if stop:
                self._finish = _FINISH.get(str(stop), str(stop))
            usage = as_dict(event.get("usage"))
            if usage.get("output_tokens") is not None:
                self._usage.completion_tokens = int(usage["output_tokens"])
            if usage.get("input_tokens"):
                self._usage.prompt_tokens = int(usage["input_tokens"])
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            error = as_dict(event.get("error"))
            error_kind: ErrorKind = (
                "rate_limited" if error.get("type") == "rate_limit_error" else "server_error"
            )
            raise ProviderError(
                error_kind, 200, f"provider error mid-stream: {error.get('message') or error}"
            )
        return None

    def end(self) -> ChatDelta:
        """The last delta (tool calls, finish reason, usage); raises if the stream stopped short."""
        if not self.done:
            raise ProviderError("server_error", 200, "stream ended before message_stop")
        calls = tuple(
            ToolCall(id=b[0], name=b[1], arguments=b[2] or "{}") for _, b in sorted(self._blocks.items())
        )
        return ChatDelta(
            tool_calls=calls,
            finish_reason=self._finish or "stop",
            usage=self._usage,
            id=self._id,
            model=self._model,
        )


class AnthropicAdapter(HttpAdapter):
    """Speaks ``POST {endpoint}/v1/messages``, plain and SSE."""

    name = "anthropic"

    def url(self, spec: ModelSpec, *, stream: bool) -> str:
        """``{endpoint}/v1/messages``, streamed or not."""
        return messages_url(spec.endpoint)

    body = staticmethod(request_body)
    headers = staticmethod(headers)
    parse = staticmethod(parse_message)
    parser = StreamParser
