"""Anthropic Messages wire format: ``POST /v1/messages`` (plain and SSE) and token counting."""

from __future__ import annotations

from json.encoder import encode_basestring
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
from services.simulator.reply import Reply, arguments_object, compose, prompt_tokens, text_of, tool_call

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_response(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """An error in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return json_response(body, status=status, headers=headers)


def fault_response(fault: Fault, model: str) -> web.Response:
    """The Anthropic answer to an injected fault."""
    if fault.kind == "outage":
        return error_response(503, f"[simulated] provider outage for model {model!r}")
    if fault.kind == "rate_limited":
        return error_response(
            429,
            f"[simulated] rate limit reached for model {model!r}; retry after {fault.retry_after_s}s",
            headers={"Retry-After": str(fault.retry_after_s)},
        )
    if fault.kind == "context_window":
        return error_response(
            400,
            f"[simulated] prompt is too long: {fault.prompt_tokens} tokens > {fault.context_window} maximum",
        )
    if fault.kind == "content_policy":
        return error_response(400, "[simulated] Output blocked by content filtering policy")
    return error_response(fault.status, f"[simulated] injected failure for model {model!r}")


def _check(body: dict[str, Any]) -> str | None:
    """A sentence naming the first problem in a Messages request, if any."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model: field required (a non-empty string)"
    messages = body.get("messages")
    if messages is None:
        return "messages: field required"
    if not isinstance(messages, list) or not messages:
        return "messages: must be a non-empty array"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages.{index}: must be an object with a 'role'"
        problem = _check_content(message.get("content"), f"messages.{index}.content")
        if problem is not None:
            return problem
    if not int_in(body, "max_tokens", MAX_INT32):
        return f"max_tokens: must be an integer from 1 to {MAX_INT32}"
    for name in ("temperature", "top_p"):
        if not number_in(body, name, 1):
            return f"{name}: must be a number from 0 to 1"
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        return "stop_sequences: must be an array of strings"
    system = body.get("system")
    if not isinstance(system, str | list | None) or (
        isinstance(system, list) and not all(isinstance(block, dict) for block in system)
    ):
        return "system: must be a string or an array of text blocks"
    if not isinstance(body.get("stream", False), bool | None):
        return "stream: must be a boolean"
    if not isinstance(body.get("tools", []), list | None):
        return "tools: must be an array"
    return None


def _check_content(content: Any, where: str) -> str | None:
    """A sentence naming what is wrong with a message's content (a string or an array of blocks), if any."""
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return f"{where}: must be a string or an array of content blocks"
    for index, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return f"{where}.{index}: must be an object with a 'type'"
    return None


def _forced_tool(body: dict[str, Any]) -> str | None:
    """The tool a request forces (``tool_choice`` of type "tool" names it; "any" takes the first)."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not tools or not isinstance(choice, dict):
        return None
    if choice.get("type") == "tool" and isinstance(choice.get("name"), str):
        return str(choice["name"])
    if choice.get("type") == "any" and isinstance(tools[0], dict) and isinstance(tools[0].get("name"), str):
        return str(tools[0]["name"])
    return None


def _tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The tool use to answer with, (name, input): a forced one, else the next scripted one, if any."""
    choice = body.get("tool_choice")
    choose = bool(body.get("tools")) and (
        choice is None or (isinstance(choice, dict) and choice.get("type") == "auto")
    )
    call = tool_call(_conversation(body), forced=_forced_tool(body), scripted=choose)
    return (call[0], arguments_object(call[1])) if call is not None else None


def _conversation(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The system prompt and messages as role/content messages (tool uses marked), for the shared script rules;
    tool results are left out, as in the OpenAI format, where they are ``tool`` messages."""
    system = text_of(body.get("system"))
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in body["messages"]:
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        text = content if isinstance(content, str) else text_of([b for b in blocks if b["type"] == "text"])
        uses = [b for b in blocks if b["type"] == "tool_use"]
        out.append({"role": message["role"], "content": text, "tool_calls": uses})
    return out


class AnthropicRoutes(ModelRoutes):
    """Handlers for the Anthropic-compatible routes, bound to the behaviour table and the stats."""

    def routes(self) -> list[web.RouteDef]:
        """Messages and token counting."""
        return [
            web.post("/v1/messages", self.messages),
            web.post("/v1/messages/count_tokens", self.count_tokens),
        ]

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/messages``: a labelled reply, a forced tool use, or an injected fault."""
        body = await read_json(request)
        if isinstance(body, str):
            self._bad_request(body)
            return error_response(400, body)
        problem = _check(body)
        if problem is not None:
            self._bad_request(body)
            return error_response(400, problem)
        model = body["model"]
        messages: list[Any] = body["messages"]
        behaviour, fault = await self._decide(model, prompt_tokens(messages, body.get("system")))
        if fault is not None:
            return fault_response(fault, model)

        reply = compose(model, messages, body.get("max_tokens"))
        tool = _tool(body)
        message_id = f"msg_sim_{next(self._ids)}"
        usage = {
            "input_tokens": prompt_tokens(messages, body.get("system")),
            "output_tokens": 2 if tool is not None else reply.tokens,
        }
        stop_reason = "tool_use" if tool is not None else "max_tokens" if reply.truncated else "end_turn"
        if body.get("stream"):
            events = _stream_events(message_id, model, reply, tool, usage, stop_reason)
            return await self._stream(request, model, events, behaviour)

        content: dict[str, Any] = (
            {"type": "tool_use", "id": f"toolu_sim_{message_id[8:]}", "name": tool[0], "input": tool[1]}
            if tool is not None
            else {"type": "text", "text": reply.text}
        )
        result = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [content],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        self._stats.record(model, "ok")
        return json_response(result)

    async def count_tokens(self, request: web.Request) -> web.Response:
        """``POST /v1/messages/count_tokens``: the simulated input token count."""
        body = await read_json(request)
        if isinstance(body, str):
            return error_response(400, body)
        problem = _check(body)
        if problem is not None:
            return error_response(400, problem)
        tokens = {"input_tokens": prompt_tokens(body["messages"], body.get("system"))}
        return json_response(tokens)


_TEXT_DELTA_OPENING = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":'
)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + encode(data).encode() + b"\n\n"


def _stream_events(
    message_id: str,
    model: str,
    reply: Reply,
    tool: tuple[str, dict[str, Any]] | None,
    usage: dict[str, int],
    stop_reason: str,
) -> list[bytes]:
    """Every SSE event of a streamed message, in the order the real API sends them."""
    start: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0},
    }
    if tool is not None:
        block: dict[str, Any] = {
            "type": "tool_use",
            "id": f"toolu_sim_{message_id[8:]}",
            "name": tool[0],
            "input": {},
        }
        # The input arrives as JSON text in pieces, as the real API sends it; the client joins them.
        text = encode(tool[1])
        cut = len(text) // 2
        deltas = [
            _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": part},
                },
            )
            for part in (text[:cut], text[cut:])
        ]
    else:
        block = {"type": "text", "text": ""}
        # Only the text is encoded per delta (this is the benchmark path).
        deltas = [_TEXT_DELTA_OPENING + encode_basestring(p).encode() + b"}}\n\n" for p in reply.pieces]
    events = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        _event("ping", {"type": "ping"}),
        *deltas,
    ]
    events += [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        ),
        _event("message_stop", {"type": "message_stop"}),
    ]
    return events
