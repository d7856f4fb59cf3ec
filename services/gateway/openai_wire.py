"""What the OpenAI-compatible routes and the WebSocket chat share: the request error, the translation of a chat
completion body into the router's ChatRequest (refusing, by parameter, what cannot be passed on) and route info."""

from __future__ import annotations

import json
import math
from typing import Any

from openclaw.v1 import router_pb2

# Fields this module maps itself; everything else is passed to the provider through ChatRequest.extra.
_MAPPED = frozenset(
    {"model", "messages", "temperature", "max_tokens", "max_completion_tokens", "top_p", "stop", "user", "n"}
    | {"stream", "stream_options"}
)
_INT32 = 2**31 - 1
# A protobuf decoder stops at 100 levels of message nesting and a Struct spends up to three per JSON object
# level, so pass-through values are held to fewer levels than the body as a whole (jsonbody.MAX_DEPTH).
_EXTRA_MAX_DEPTH = 32


class OpenAIError(Exception):
    """An error to answer in OpenAI's shape (for request problems this module finds itself)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def route_info(route: router_pb2.RouteInfo) -> dict[str, Any]:
    """RouteInfo as JSON: which model and provider served, queueing time, every attempt."""
    return {
        "model": route.model,
        "provider": route.provider,
        "queue_ms": route.queue_ms,
        "simulated": route.simulated,
        "attempts": [
            {
                "model": a.model,
                "provider": a.provider,
                "outcome": a.outcome,
                "error": a.error,
                "duration_ms": a.duration_ms,
            }
            for a in route.attempts
        ],
    }


def to_chat_request(body: Any, *, tenant: str, request_id: str) -> router_pb2.ChatRequest:
    """Translate an OpenAI chat completion body; OpenAIError naming the parameter if it is malformed."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "'model' is required and must be a string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "'messages' must be a non-empty array", param="messages")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise OpenAIError(400, "'n' must be 1: one choice per request is supported", param="n")
    request = router_pb2.ChatRequest(
        model=model,
        messages=[_message(m, i) for i, m in enumerate(messages)],
        tenant=tenant,
        request_id=request_id,
    )
    for name, high in (("temperature", 2.0), ("top_p", 1.0)):
        value = _number(body, name, high)
        if value is not None:
            setattr(request, name, value)
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins when both are given
        max_tokens = body.get(name)
        if max_tokens is not None:
            if (
                isinstance(max_tokens, bool)
                or not isinstance(max_tokens, int)
                or not 0 < max_tokens <= _INT32
            ):
                raise OpenAIError(400, f"'{name}' must be an integer from 1 to {_INT32}", param=name)
            request.max_tokens = max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        request.stop.append(stop)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        request.stop.extend(stop)
    elif stop is not None:
        raise OpenAIError(400, "'stop' must be a string or an array of strings", param="stop")
    request.user = _optional_str(body, "user", "user")
    if not isinstance(body.get("stream", False), bool | None):
        raise OpenAIError(400, "'stream' must be a boolean", param="stream")
    if not isinstance(body.get("stream_options", {}), dict | None):
        raise OpenAIError(400, "'stream_options' must be an object", param="stream_options")
    extra = {k: v for k, v in body.items() if k not in _MAPPED}
    if extra:
        for key, value in extra.items():
            problem = _struct_problem(value)
            if problem is not None:
                raise OpenAIError(400, f"'{key}' {problem}", param=key)
        request.extra.update(extra)
    return request


def _number(body: dict[str, Any], name: str, high: float) -> float | None:
    """A number in [0, high] (compared before float(), which a huge integer would overflow)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise OpenAIError(400, f"'{name}' must be a number from 0 to {high:g}", param=name)
    return float(value)


def _optional_str(raw: dict[str, Any], key: str, param: str) -> str:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise OpenAIError(400, f"'{param}' must be a string", param=param)
    return value or ""


def _struct_problem(value: Any) -> str | None:
    """Why a protobuf Struct cannot carry value to the router, if it cannot (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= _EXTRA_MAX_DEPTH:
                return f"is nested too deeply (more than {_EXTRA_MAX_DEPTH} levels)"
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(node, float) and not math.isfinite(node):
            return "holds a number that is not finite"
        elif isinstance(node, int) and not isinstance(node, bool):
            try:
                float(node)
            except OverflowError:
                return "holds an integer too large to pass on (beyond the range of a double)"
    return None


def _message(raw: Any, index: int) -> router_pb2.ChatMessage:
    param = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise OpenAIError(400, f"{param} must be an object", param=param)
    role = raw.get("role")
    if not isinstance(role, str) or not role:
        raise OpenAIError(400, f"{param}.role is required and must be a string", param=f"{param}.role")
    message = router_pb2.ChatMessage(
        role=role,
        content=_content(raw.get("content"), f"{param}.content"),
        name=_optional_str(raw, "name", f"{param}.name"),
        tool_call_id=_optional_str(raw, "tool_call_id", f"{param}.tool_call_id"),
    )
    calls = raw.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise OpenAIError(400, f"{param}.tool_calls must be an array", param=f"{param}.tool_calls")
    for j, call in enumerate(calls or ()):
        where = f"{param}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise OpenAIError(400, f"{where} needs a function name", param=f"{param}.tool_calls")
        arguments = function.get("arguments", "")
        message.tool_calls.append(
            router_pb2.ToolCall(
                id=_optional_str(call, "id", f"{where}.id"),
                type=_optional_str(call, "type", f"{where}.type") or "function",
                name=function["name"],
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
            )
        )
    return message


def _content(content: Any, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise OpenAIError(400, f"{param}: only text content parts are supported", param=param)
            texts.append(part["text"])
        return "\n".join(texts)
    raise OpenAIError(400, f"{param} must be a string or an array of content parts", param=param)
