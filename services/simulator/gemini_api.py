"""Google Gemini wire format: ``generateContent`` and ``streamGenerateContent?alt=sse``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.simulator._http import MAX_INT32, ModelRoutes, encode, json_response, read_json
from services.simulator.behaviour import Fault
from services.simulator.reply import Reply, arguments_object, compose, prompt_tokens, tool_call

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None, details: list[Any] | None = None
) -> web.Response:
    """An error in Google's shape: ``{"error": {"code", "message", "status", "details"?}}``."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"),
    }
    if details:
        error["details"] = details
    return json_response({"error": error}, status=status, headers=headers)


def fault_response(fault: Fault, model: str) -> web.Response:
    """The Gemini answer to an injected fault (content policy is answered by the caller: it is a 200)."""
    if fault.kind == "outage":
        return error_response(503, f"[simulated] The model {model} is overloaded. Please try again later.")
    if fault.kind == "rate_limited":
        delay = f"{fault.retry_after_s}s"
        return error_response(
            429,
            f"[simulated] Resource has been exhausted (e.g. check quota) for model {model!r}.",
            headers={"Retry-After": str(fault.retry_after_s)},
            details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}],
        )
    if fault.kind == "context_window":
        return error_response(
            400,
            f"[simulated] The input token count ({fault.prompt_tokens}) exceeds the maximum number of tokens "
            f"allowed ({fault.context_window}).",
        )
    return error_response(fault.status, f"[simulated] injected failure for model {model!r}")


def _check_parts(parts: Any, where: str) -> str | None:
    if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
        return f"{where}: must be an array of Part objects"
    return None


def _check(body: dict[str, Any]) -> str | None:
    """A sentence naming the first problem in a generateContent request, if any."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "contents: must be a non-empty array of Content objects"
    for index, content in enumerate(contents):
        if not isinstance(content, dict):
            return f"contents[{index}]: must be a Content object"
        if content.get("role", "user") not in ("user", "model"):
            return f"contents[{index}].role: must be 'user' or 'model'"
        problem = _check_parts(content.get("parts"), f"contents[{index}].parts")
        if problem is not None:
            return problem
    system = body.get("systemInstruction")
    if system is not None:
        if not isinstance(system, dict):
            return "systemInstruction: must be a Content object"
        problem = _check_parts(system.get("parts"), "systemInstruction.parts")
        if problem is not None:
            return problem
    config = body.get("generationConfig", {})
    if not isinstance(config, dict):
        return "generationConfig: must be an object"
    tokens = config.get("maxOutputTokens")
    if tokens is not None and not (
        isinstance(tokens, int) and not isinstance(tokens, bool) and 0 < tokens <= MAX_INT32
    ):
        return f"generationConfig.maxOutputTokens: must be an integer from 1 to {MAX_INT32}"
    for name, high in (("temperature", 2.0), ("topP", 1.0)):
        value = config.get(name)
        if value is not None and not (
            isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= high
        ):
            return f"generationConfig.{name}: must be a number from 0 to {high:g}"
    if not isinstance(body.get("tools", []), list):
        return "tools: must be an array of Tool objects"
    return None


def _text(parts: Any) -> str:
    return "\n".join(
        str(part["text"])
        for part in parts or ()
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def _as_messages(contents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Contents as role/content messages (model turns with function calls marked), so the shared rules apply."""
    return [
        {
            "role": "assistant" if c.get("role") == "model" else "user",
            "content": _text(c.get("parts")),
            "tool_calls": [p for p in c.get("parts") or () if "functionCall" in p],
        }
        for c in contents
    ]


def _forced_tool(body: dict[str, Any]) -> str | None:
    """The function a request forces (mode ANY: the first allowed name, else the first declaration)."""
    config = body.get("toolConfig")
    calling = config.get("functionCallingConfig") if isinstance(config, dict) else None
    if not isinstance(calling, dict) or calling.get("mode") != "ANY":
        return None
    allowed = calling.get("allowedFunctionNames")
    if isinstance(allowed, list) and allowed and isinstance(allowed[0], str):
        return allowed[0]
    for tool in body.get("tools") or ():
        declarations = tool.get("functionDeclarations") if isinstance(tool, dict) else None
        if isinstance(declarations, list) and declarations and isinstance(declarations[0], dict):
            name = declarations[0].get("name")
            return name if isinstance(name, str) else None
    return None


def _tool(
    body: dict[str, Any], messages: list[dict[str, Any]], system: str
) -> tuple[str, dict[str, Any]] | None:
    """The function call to answer with, (name, args): a forced one, else the next scripted one, if any."""
    config = body.get("toolConfig")
    calling = config.get("functionCallingConfig") if isinstance(config, dict) else None
    mode = calling.get("mode", "AUTO") if isinstance(calling, dict) else "AUTO"
    conversation = ([{"role": "system", "content": system}] if system else []) + messages
    call = tool_call(
        conversation, forced=_forced_tool(body), scripted=bool(body.get("tools")) and mode == "AUTO"
    )
    return (call[0], arguments_object(call[1])) if call is not None else None


class GeminiRoutes(ModelRoutes):
    """Handlers for the Gemini routes, bound to the behaviour table and the stats."""

    def routes(self) -> list[web.RouteDef]:
        """generateContent and streamGenerateContent under ``/v1beta`` and ``/v1``."""
        return [
            web.post("/v1beta/models/{target}", self.generate),
            web.post("/v1/models/{target}", self.generate),
        ]

    async def generate(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1beta/models/{model}:generateContent`` (or ``:streamGenerateContent?alt=sse``)."""
        model, _, method = request.match_info["target"].rpartition(":")
        if method not in ("generateContent", "streamGenerateContent") or not model:
            return error_response(404, f"[simulated] unknown method {request.match_info['target']!r}")
        stream = method == "streamGenerateContent"
        if stream and request.query.get("alt") != "sse":
            return error_response(400, "alt: the simulator streams only Server-Sent Events (alt=sse)")
        body = await read_json(request)
        problem = body if isinstance(body, str) else _check(body)
        if problem is not None or isinstance(body, str):
            self._stats.record(model, "bad_request")
            return error_response(400, str(problem))
        system = body.get("systemInstruction")
        messages = _as_messages(body["contents"])
        system_text = _text(system.get("parts")) if isinstance(system, dict) else ""
        usage_in = prompt_tokens(messages, system_text)
        behaviour, fault = await self._decide(model, usage_in)
        head = {"modelVersion": model, "responseId": f"sim-{next(self._ids)}"}
        if fault is not None and fault.kind == "content_policy":
            blocked = {"promptFeedback": {"blockReason": "SAFETY"}, **head}
            if stream:
                return await self._stream(request, model, [_event(blocked)], behaviour)
            return json_response(blocked)
        if fault is not None:
            return fault_response(fault, model)

        config = body.get("generationConfig") or {}
        reply = compose(model, messages, config.get("maxOutputTokens"))
        tool = _tool(body, messages, system_text)
        usage_out = 2 if tool is not None else reply.tokens
        usage = {
            "promptTokenCount": usage_in,
            "candidatesTokenCount": usage_out,
            "totalTokenCount": usage_in + usage_out,
        }
        finish = "MAX_TOKENS" if reply.truncated and tool is None else "STOP"
        if stream:
            return await self._stream(
                request, model, _stream_events(head, reply, tool, usage, finish), behaviour
            )
        parts = [_function_call(tool)] if tool is not None else [{"text": reply.text}]
        self._stats.record(model, "ok")
        return json_response({**_candidate(parts, finish), "usageMetadata": usage, **head})


def _candidate(parts: list[dict[str, Any]], finish: str | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate]}


def _function_call(tool: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {"functionCall": {"name": tool[0], "args": tool[1]}}


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + encode(data).encode() + b"\r\n\r\n"


def _stream_events(
    head: dict[str, Any],
    reply: Reply,
    tool: tuple[str, dict[str, Any]] | None,
    usage: dict[str, int],
    finish: str,
) -> list[bytes]:
    """Every SSE event of a streamed answer; the last carries finishReason and usageMetadata."""
    if tool is not None:
        return [
            _event(
                {
                    **_candidate([_function_call(tool)], finish),
                    "usageMetadata": usage,
                    **head,
                }
            )
        ]
    pieces = list(reply.pieces) or [""]
    events = [_event({**_candidate([{"text": p}], None), **head}) for p in pieces[:-1]]
    events.append(_event({**_candidate([{"text": pieces[-1]}], finish), "usageMetadata": usage, **head}))
    return events
