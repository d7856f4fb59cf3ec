"""Cohere Chat v2 wire format: ``POST /v2/chat``, plain or SSE (message-start ... message-end)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.simulator._http import (
    MAX_INT32,
    ModelRoutes,
    encode,
    int_in,
    json_response,
    number_in,
    read_json,
)
from services.simulator.behaviour import Fault
from services.simulator.reply import Reply, compose, prompt_tokens, tool_call

_ROLES = frozenset({"system", "user", "assistant", "tool"})


def error_response(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """An error in Cohere's shape: ``{"id", "message"}``."""
    return json_response({"id": "sim-error", "message": message}, status=status, headers=headers)


def fault_response(fault: Fault, model: str) -> web.Response:
    """The Cohere answer to an injected fault."""
    if fault.kind == "outage":
        return error_response(503, f"[simulated] service unavailable for model {model!r}")
    if fault.kind == "rate_limited":
        return error_response(
            429,
            f"[simulated] too many requests for model {model!r}; retry after {fault.retry_after_s}s",
            headers={"Retry-After": str(fault.retry_after_s)},
        )
    if fault.kind == "context_window":
        return error_response(
            400,
            f"[simulated] too many tokens: total number of tokens in the prompt cannot exceed "
            f"{fault.context_window} - received {fault.prompt_tokens}",
        )
    if fault.kind == "content_policy":
        return error_response(400, "[simulated] the request was blocked by safety filters")
    return error_response(fault.status, f"[simulated] injected failure for model {model!r}")


def _check(body: dict[str, Any]) -> str | None:
    """A sentence naming the first problem in a v2 chat request, if any."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "invalid request: model must be a non-empty string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "invalid request: messages must be a non-empty array"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            return f"invalid request: messages[{index}].role must be one of {', '.join(sorted(_ROLES))}"
        content = message.get("content", "")
        if not (
            isinstance(content, str)
            or (isinstance(content, list) and all(isinstance(b, dict) for b in content))
        ):
            return (
                f"invalid request: messages[{index}].content must be a string or an array of content blocks"
            )
    if not isinstance(body.get("stream", False), bool):
        return "invalid request: stream must be a boolean"
    if not int_in(body, "max_tokens", MAX_INT32):
        return f"invalid request: max_tokens must be an integer from 1 to {MAX_INT32}"
    for name, high in (("temperature", 2.0), ("p", 1.0)):
        if not number_in(body, name, high):
            return f"invalid request: {name} must be a number from 0 to {high:g}"
    if not isinstance(body.get("tools", []), list):
        return "invalid request: tools must be an array"
    if body.get("tool_choice", "REQUIRED") not in ("REQUIRED", "NONE"):
        return "invalid request: tool_choice must be REQUIRED or NONE"
    return None


def _forced_tool(body: dict[str, Any]) -> str | None:
    """With ``tool_choice: REQUIRED`` the simulated model calls the first tool."""
    tools = body.get("tools")
    if body.get("tool_choice") != "REQUIRED" or not tools or not isinstance(tools[0], dict):
        return None
    function = tools[0].get("function")
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def _tool(body: dict[str, Any]) -> tuple[str, str] | None:
    """The tool call to answer with, (name, arguments): a required one, else the next scripted one, if any."""
    choose = bool(body.get("tools")) and "tool_choice" not in body
    return tool_call(body["messages"], forced=_forced_tool(body), scripted=choose)


class CohereRoutes(ModelRoutes):
    """Handlers for the Cohere v2 routes, bound to the behaviour table and the stats."""

    def routes(self) -> list[web.RouteDef]:
        """Chat."""
        return [web.post("/v2/chat", self.chat)]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/chat``: a labelled reply, a required tool call, or an injected fault."""
        body = await read_json(request)
        problem = body if isinstance(body, str) else _check(body)
        if problem is not None or isinstance(body, str):
            self._bad_request(body)
            return error_response(400, str(problem))
        model = body["model"]
        messages: list[Any] = body["messages"]
        usage_in = prompt_tokens(messages)
        behaviour, fault = await self._decide(model, usage_in)
        if fault is not None:
            return fault_response(fault, model)

        reply = compose(model, messages, body.get("max_tokens"))
        tool = _tool(body)
        message_id = f"sim-{next(self._ids)}"
        usage_out = 2 if tool is not None else reply.tokens
        counts = {"input_tokens": usage_in, "output_tokens": usage_out}
        usage = {"billed_units": counts, "tokens": counts}
        finish = "TOOL_CALL" if tool is not None else "MAX_TOKENS" if reply.truncated else "COMPLETE"
        call: dict[str, Any] | None = None
        if tool is not None:
            function = {"name": tool[0], "arguments": tool[1]}
            call = {"id": f"call_{message_id}", "type": "function", "function": function}
        if body.get("stream"):
            events = _stream_events(message_id, reply, call, usage, finish)
            return await self._stream(request, model, events, behaviour)
        message: dict[str, Any] = {"role": "assistant"}
        if call is not None:
            message["tool_plan"] = f"I will call {call['function']['name']}."
            message["tool_calls"] = [call]
        else:
            message["content"] = [{"type": "text", "text": reply.text}]
        self._stats.record(model, "ok")
        return json_response({"id": message_id, "finish_reason": finish, "message": message, "usage": usage})


def _event(data: dict[str, Any]) -> bytes:
    return b"event: " + str(data["type"]).encode() + b"\ndata: " + encode(data).encode() + b"\n\n"


def _stream_events(
    message_id: str, reply: Reply, call: dict[str, Any] | None, usage: dict[str, Any], finish: str
) -> list[bytes]:
    """Every SSE event of a streamed answer, in the order the real API sends them."""
    events = [
        _event(
            {
                "id": message_id,
                "type": "message-start",
                "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": []}},
            }
        )
    ]
    if call is not None:
        name = call["function"]["name"]
        start = {**call, "function": {"name": name, "arguments": ""}}
        events += [
            _event({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": f"I will call {name}."}}}),
            _event({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": start}}}),
            _event(
                {
                    "type": "tool-call-delta",
                    "index": 0,
                    "delta": {
                        "message": {"tool_calls": {"function": {"arguments": call["function"]["arguments"]}}}
                    },
                }
            ),
            _event({"type": "tool-call-end", "index": 0}),
        ]
    else:
        events.append(
            _event(
                {
                    "type": "content-start",
                    "index": 0,
                    "delta": {"message": {"content": {"type": "text", "text": ""}}},
                }
            )
        )
        events += [
            _event({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": p}}}})
            for p in reply.pieces
        ]
        events.append(_event({"type": "content-end", "index": 0}))
    events.append(_event({"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}}))
    return events
