"""Cohere Chat v2 (``POST /v2/chat``), plain and SSE; replies mapped to OpenAI terms."""

from __future__ import annotations

import json
from typing import Any

from services.router.chat import ChatDelta, ChatRequest, ChatResult, Message, ToolCall, Usage
from services.router.providers.base import HttpAdapter, ProviderError, arguments_text, as_dict, pick
from services.router.registry import ModelSpec

_FINISH = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR": "error",
}
_PASS_THROUGH = frozenset(
    {
        "response_format",
        "safety_mode",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "k",
        "documents",
        "citation_options",
        "strict_tools",
        "logprobs",
    }
)
_TOOL_CHOICE = {"required": "REQUIRED", "none": "NONE"}


def chat_url(endpoint: str) -> str:
    """``{host}/v2/chat``; the endpoint may be the host or already end in ``/v2`` or ``/v2/chat``."""
    endpoint = endpoint.rstrip("/")
    if endpoint.endswith("/v2/chat"):
        return endpoint
    if endpoint.endswith("/v2"):
        return endpoint + "/chat"
    return endpoint + "/v2/chat"


def encode_message(message: Message) -> dict[str, Any]:
    """One message in Cohere v2's shape (close to OpenAI's; ``developer`` becomes ``system``)."""
    role = "system" if message.role == "developer" else message.role
    out: dict[str, Any] = {"role": role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        if not message.content:
            del out["content"]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    return out


def request_body(spec: ModelSpec, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The JSON body of a ``/v2/chat`` call; OpenAI-shaped tools are Cohere's shape already."""
    extra = request.extra or {}
    body = pick(extra, _PASS_THROUGH)
    body["model"] = spec.provider_model
    body["messages"] = [encode_message(m) for m in request.messages]
    body["stream"] = stream
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.top_p is not None:
        body["p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    tools = extra.get("tools")
    choice = extra.get("tool_choice")
    forced = as_dict(as_dict(choice).get("function")).get("name")
    if isinstance(tools, list) and tools:
        if forced:  # Cohere cannot name the tool to call: offer only that one, and require a call
            tools = [t for t in tools if as_dict(as_dict(t).get("function")).get("name") == forced] or tools
        body["tools"] = tools
        if forced:
            body["tool_choice"] = "REQUIRED"
        elif isinstance(choice, str) and choice in _TOOL_CHOICE:
            body["tool_choice"] = _TOOL_CHOICE[choice]
    return body


def headers(spec: ModelSpec) -> dict[str, str]:
    """JSON, and a Bearer key when the model has one."""
    out = {"Content-Type": "application/json", "Accept": "application/json"}
    if spec.credential:
        out["Authorization"] = f"Bearer {spec.credential}"
    return out


def _usage(data: Any) -> Usage:
    """Tokens the model saw and produced; ``billed_units`` when ``tokens`` is missing."""
    usage = as_dict(data)
    counts = as_dict(usage.get("tokens")) or as_dict(usage.get("billed_units"))
    return Usage(int(counts.get("input_tokens") or 0), int(counts.get("output_tokens") or 0))


def _tool_call(item: Any) -> ToolCall:
    item = as_dict(item)
    function = as_dict(item.get("function"))
    return ToolCall(
        id=str(item.get("id") or ""),
        name=str(function.get("name") or ""),
        arguments=arguments_text(function.get("arguments")),
    )


def _finish(reason: Any) -> str:
    return _FINISH.get(str(reason), str(reason or "stop").lower())


def parse_response(data: Any) -> ChatResult:
    """A v2 chat response as a ChatResult."""
    if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
        raise ProviderError("server_error", 200, f"answer is not a chat response: {str(data)[:200]}")
    message = data["message"]
    text = "".join(
        str(block.get("text") or "")
        for block in message.get("content") or ()
        if isinstance(block, dict) and block.get("type") == "text"
    )
    calls = message.get("tool_calls")
    return ChatResult(
        id=str(data.get("id") or ""),
        model="",
        content=text,
        finish_reason=_finish(data.get("finish_reason")),
        usage=_usage(data.get("usage")),
        tool_calls=tuple(_tool_call(c) for c in calls) if isinstance(calls, list) else (),
    )


class StreamParser:
    """Turns the events of a v2 chat stream (message-start ... message-end) into ChatDeltas."""

    __slots__ = ("_calls", "_finish", "_id", "_usage", "done")

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        self._finish = ""
        self._id = ""
        self._usage = Usage()
        self.done = False

    def feed(self, payload: bytes) -> ChatDelta | None:
        """One event; returns a delta when it carries text."""
        try:
            event = as_dict(json.loads(payload))
        except ValueError:
            raise ProviderError("server_error", 200, f"bad stream event: {payload[:200]!r}") from None
        kind = event.get("type")
        message = as_dict(as_dict(event.get("delta")).get("message"))
        if kind == "content-delta":
            text = as_dict(message.get("content")).get("text")
            return ChatDelta(text=text, id=self._id) if isinstance(text, str) and text else None
        if kind == "message-start":
            self._id = str(event.get("id") or "")
        elif kind in ("tool-call-start", "tool-call-delta"):
            call = as_dict(message.get("tool_calls"))
            parts = self._calls.setdefault(int(event.get("index") or 0), ["", "", ""])
            function = as_dict(call.get("function"))
            if call.get("id"):
                parts[0] = str(call["id"])
            if function.get("name"):
                parts[1] = str(function["name"])
            parts[2] += str(function.get("arguments") or "")
        elif kind == "message-end":
            delta = as_dict(event.get("delta"))
            self._finish = _finish(delta.get("finish_reason"))
            self._usage = _usage(delta.get("usage"))
            self.done = True
            if self._finish == "error":
                raise ProviderError("server_error", 200, "provider ended the stream with an error")
        return None

    def end(self) -> ChatDelta:
        """The last delta; raises if the stream stopped before message-end."""
        if not self.done:
            raise ProviderError("server_error", 200, "stream ended before message-end")
        calls = tuple(
            ToolCall(id=p[0], name=p[1], arguments=p[2] or "{}") for _, p in sorted(self._calls.items())
        )
        return ChatDelta(tool_calls=calls, finish_reason=self._finish, usage=self._usage, id=self._id)


class CohereAdapter(HttpAdapter):
    """Speaks ``POST {endpoint}/v2/chat``, plain and SSE."""

    name = "cohere"

    body = staticmethod(request_body)
    headers = staticmethod(headers)
    parse = staticmethod(parse_response)
    parser = StreamParser

    def url(self, spec: ModelSpec, *, stream: bool) -> str:
        """``{endpoint}/v2/chat``."""
        return chat_url(spec.endpoint)
