"""Ollama's native wire format: ``POST /api/chat``, plain or NDJSON-streamed (the default)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from services.simulator._http import (
    MAX_INT32,
    NDJSON_HEADERS,
    ModelRoutes,
    encode,
    json_response,
    number_in,
    read_json,
)
from services.simulator.behaviour import Fault
from services.simulator.reply import (
    arguments_object,
    compose,
    last_user_text,
    prompt_tokens,
    tool_call,
    without_script,
)


def error_response(status: int, message: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """An error in Ollama's shape: ``{"error": "..."}``."""
    return json_response({"error": message}, status=status, headers=headers)


def fault_response(fault: Fault, model: str) -> web.Response:
    """The Ollama answer to an injected fault."""
    if fault.kind == "outage":
        return error_response(503, f"[simulated] server busy, model {model!r} unavailable")
    if fault.kind == "rate_limited":
        return error_response(
            429,
            f"[simulated] too many requests for model {model!r}; retry after {fault.retry_after_s}s",
            headers={"Retry-After": str(fault.retry_after_s)},
        )
    if fault.kind == "context_window":
        return error_response(
            400,
            f"[simulated] the input length ({fault.prompt_tokens} tokens) exceeds the context length "
            f"({fault.context_window})",
        )
    if fault.kind == "content_policy":
        return error_response(400, "[simulated] request refused by the safety system")
    return error_response(fault.status, f"[simulated] injected failure for model {model!r}")


def _check(body: dict[str, Any]) -> str | None:
    """A sentence naming the first problem in a chat request, if any."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: must be a non-empty array"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages[{index}]: must be an object with a 'role'"
        if not isinstance(message.get("content", ""), str):
            return f"messages[{index}].content: must be a string"
        calls = message.get("tool_calls", [])
        if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls
        ):
            return f"messages[{index}].tool_calls: must be an array of {{function: {{name, arguments}}}}"
    if not isinstance(body.get("stream", True), bool):
        return "stream: must be a boolean"
    options = body.get("options", {})
    if not isinstance(options, dict):
        return "options: must be an object"
    predict = options.get("num_predict")
    if predict is not None and not (
        isinstance(predict, int) and not isinstance(predict, bool) and -2 <= predict <= MAX_INT32
    ):
        return "options.num_predict: must be an integer"
    for name, high in (("temperature", 2.0), ("top_p", 1.0)):
        if not number_in(options, name, high):
            return f"options.{name}: must be a number from 0 to {high:g}"
    if not isinstance(body.get("tools", []), list):
        return "tools: must be an array"
    return None


def _called_tool(body: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The tool call to answer with, (name, arguments): the next scripted one, else the first offered tool
    whose name the last user message mentions (outside its script lines), with no arguments."""
    if not body.get("tools"):
        return None
    scripted = tool_call(body["messages"], scripted=True)
    if scripted is not None:
        return scripted[0], arguments_object(scripted[1])
    text = without_script(last_user_text(body["messages"]))
    for tool in body["tools"]:
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name and name in text:
            return name, {}
    return None


class OllamaRoutes(ModelRoutes):
    """Handlers for Ollama's native routes, bound to the behaviour table and the stats."""

    def routes(self) -> list[web.RouteDef]:
        """Chat."""
        return [web.post("/api/chat", self.chat)]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/chat``: a labelled reply, a tool call, or an injected fault."""
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

        predict = (body.get("options") or {}).get("num_predict")
        reply = compose(model, messages, predict if isinstance(predict, int) and predict > 0 else None)
        tool = _called_tool(body)
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        head = {"model": model, "created_at": created}
        final = {
            **head,
            "done": True,
            "done_reason": "length" if reply.truncated and tool is None else "stop",
            "total_duration": 0,
            "load_duration": 0,
            "prompt_eval_count": usage_in,
            "prompt_eval_duration": 0,
            "eval_count": 2 if tool is not None else reply.tokens,
            "eval_duration": 0,
        }
        message: dict[str, Any] = {"role": "assistant", "content": "" if tool is not None else reply.text}
        if tool is not None:
            message["tool_calls"] = [{"function": {"name": tool[0], "arguments": tool[1]}}]
        if body.get("stream", True):
            lines = (
                [_line({**head, "message": message, "done": False})]
                if tool is not None
                else [
                    _line({**head, "message": {"role": "assistant", "content": p}, "done": False})
                    for p in reply.pieces
                ]
            )
            lines.append(_line({**final, "message": {"role": "assistant", "content": ""}}))
            return await self._stream(request, model, lines, behaviour, NDJSON_HEADERS)
        self._stats.record(model, "ok")
        return json_response({**final, "message": message})


def _line(data: dict[str, Any]) -> bytes:
    return encode(data).encode() + b"\n"
