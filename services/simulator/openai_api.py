"""OpenAI wire format: chat completions (plain and SSE), embeddings and the model list; Azure's paths too."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable
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
from services.simulator.behaviour import Behaviour, BehaviourTable, Fault, Stats
from services.simulator.reply import (
    Reply,
    compose,
    count_tokens,
    embedding,
    last_turn_text,
    prompt_tokens,
    tool_call,
)

SYSTEM_FINGERPRINT = "openclaw-simulator"
OWNER = "openclaw-simulator"
DEFAULT_DIMENSIONS = 16
MAX_DIMENSIONS = 8192

_DONE = b"data: [DONE]\n\n"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in OpenAI's shape: ``{"error": {"message", "type", "code", "param"}}``."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return json_response(body, status=status, headers=headers)


def fault_response(fault: Fault, model: str) -> web.Response:
    """The OpenAI answer to an injected fault."""
    if fault.kind == "outage":
        return error_response(
            503, f"[simulated] provider outage for model {model!r}", code="service_unavailable"
        )
    if fault.kind == "rate_limited":
        return error_response(
            429,
            f"[simulated] rate limit reached for model {model!r}; retry after {fault.retry_after_s}s",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(fault.retry_after_s)},
        )
    if fault.kind == "context_window":
        return error_response(
            400,
            f"[simulated] This model's maximum context length is {fault.context_window} tokens. However, "
            f"your messages resulted in {fault.prompt_tokens} tokens.",
            code="context_length_exceeded",
            param="messages",
        )
    if fault.kind == "content_policy":
        return error_response(
            400,
            "[simulated] The prompt was filtered due to triggering the content management policy.",
            code="content_filter",
            param="prompt",
        )
    return error_response(fault.status, f"[simulated] injected failure for model {model!r}", code="simulated")


def _check_message(message: Any, param: str) -> tuple[str, str] | None:
    """The (param, message) of the first problem in one chat message, if any."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        return param, f"{param} must be an object with a 'role'"
    content = message.get("content")
    if not isinstance(content, str | list | None):
        return f"{param}.content", f"{param}.content must be a string, an array of content parts or null"
    for index, part in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            where = f"{param}.content[{index}]"
            return where, f"{where} must be an object with a 'type'"
    if not isinstance(message.get("tool_calls", []), list | None):
        return f"{param}.tool_calls", f"{param}.tool_calls must be an array"
    return None


def _check_chat(body: dict[str, Any]) -> tuple[str, str] | None:
    """The (param, message) of the first problem in a chat request, if any."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model", "you must provide a model parameter (a non-empty string)"
    messages = body.get("messages")
    if messages is None:
        return "messages", "missing required parameter: 'messages'"
    if not isinstance(messages, list) or not messages:
        return "messages", "'messages' must be a non-empty array"
    for index, message in enumerate(messages):
        problem = _check_message(message, f"messages[{index}]")
        if problem is not None:
            return problem
    if not isinstance(body.get("stream", False), bool | None):
        return "stream", "'stream' must be a boolean"
    if not isinstance(body.get("stream_options", {}), dict | None):
        return "stream_options", "'stream_options' must be an object"
    for name in ("max_tokens", "max_completion_tokens", "n"):
        if not int_in(body, name, MAX_INT32):
            return name, f"'{name}' must be an integer from 1 to {MAX_INT32}"
    for name, high in (("temperature", 2.0), ("top_p", 1.0)):
        if not number_in(body, name, high):
            return name, f"'{name}' must be a number from 0 to {high:g}"
    stop = body.get("stop")
    if not (
        stop is None
        or isinstance(stop, str)
        or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        return "stop", "'stop' must be a string or an array of strings"
    if not isinstance(body.get("tools", []), list | None):
        return "tools", "'tools' must be an array"
    return None


def _tool(body: dict[str, Any]) -> tuple[str, str] | None:
    """The tool call to answer with, (name, arguments): a forced one, else the next scripted one, if any."""
    choose = bool(body.get("tools")) and body.get("tool_choice", "auto") == "auto"
    return tool_call(body["messages"], forced=_forced_tool(body), scripted=choose)


def _forced_tool(body: dict[str, Any]) -> str | None:
    """The function a request forces the model to call (``tool_choice`` naming one, or "required")."""
    tools = body.get("tools")
    if not tools:
        return None
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
        return None
    if choice == "required":
        first = tools[0] if isinstance(tools[0], dict) else {}
        function = first.get("function")
        name = function.get("name") if isinstance(function, dict) else first.get("name")
        return name if isinstance(name, str) else None
    return None


class OpenAIRoutes(ModelRoutes):
    """Handlers for the OpenAI-compatible routes, bound to the behaviour table and the stats."""

    def __init__(self, behaviours: BehaviourTable, stats: Stats, models: Callable[[], list[str]]) -> None:
        super().__init__(behaviours, stats)
        self._models = models

    def routes(self) -> list[web.RouteDef]:
        """Chat (with its aliases), embeddings and models."""
        return [
            web.post("/v1/chat/completions", self.chat_completions),
            web.post("/v1/chat", self.chat_completions),
            web.post("/chat/completions", self.chat_completions),
            web.post("/v1/embeddings", self.embeddings),
            web.post("/openai/deployments/{deployment}/chat/completions", self.chat_completions),
            web.post("/openai/deployments/{deployment}/embeddings", self.embeddings),
            web.get("/v1/models", self.list_models),
            web.get("/v1/models/{model:.+}", self.get_model),
        ]

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``: a labelled reply, a forced tool call, or an injected fault."""
        admitted = await self._admit(request, _check_chat)
        if isinstance(admitted, web.Response):
            return admitted
        body, model, behaviour = admitted

        messages: list[Any] = body["messages"]
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        tool = _tool(body)
        # After tool results the model speaks about them (an echo model repeats the last one).
        text = last_turn_text(messages) if body.get("tools") else None
        reply = compose(model, messages, max_tokens, text_of_turn=text)
        usage_in = prompt_tokens(messages)
        usage_out = 2 if tool is not None else reply.tokens
        usage = {
            "prompt_tokens": usage_in,
            "completion_tokens": usage_out,
            "total_tokens": usage_in + usage_out,
        }
        head: dict[str, Any] = {
            "id": f"chatcmpl-sim-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            chunks = _stream_chunks(head, reply, tool, usage if include_usage else None)
            return await self._stream(request, model, chunks, behaviour)

        finish = "tool_calls" if tool is not None else "length" if reply.truncated else "stop"
        message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
        if tool is not None:
            message["content"] = None
            message["tool_calls"] = [_tool_call(head["id"], *tool)]
        completion = {
            **head,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }
        self._stats.record(model, "ok")
        return json_response(completion)

    async def _admit(
        self, request: web.Request, check: Callable[[dict[str, Any]], tuple[str, str] | None]
    ) -> tuple[dict[str, Any], str, Behaviour] | web.Response:
        """(the valid body, its model, the model's behaviour), or the error answer."""
        body = await read_json(request)
        if isinstance(body, str):
            self._bad_request(body)
            return error_response(400, body, code="invalid_json")
        deployment = request.match_info.get("deployment")
        if deployment is not None:  # Azure: the deployment in the path is the model
            if not request.query.get("api-version"):
                self._bad_request(body)
                return error_response(
                    400,
                    "missing required query parameter 'api-version'",
                    param="api-version",
                    code="invalid_request",
                )
            body["model"] = deployment
        problem = check(body)
        if problem is not None:
            self._bad_request(body)
            return error_response(400, problem[1], param=problem[0], code="invalid_request")
        model = body["model"]
        behaviour, fault = await self._decide(model, _prompt_tokens(body))
        if fault is not None:
            return fault_response(fault, model)
        return body, model, behaviour

    async def embeddings(self, request: web.Request) -> web.Response:
        """``POST /v1/embeddings``: unit vectors derived from a hash of each input."""
        admitted = await self._admit(request, _check_embeddings)
        if isinstance(admitted, web.Response):
            return admitted
        body, model, _ = admitted

        raw_input = body["input"]
        inputs = [raw_input] if isinstance(raw_input, str) else raw_input
        if inputs and isinstance(inputs[0], int):
            inputs = [inputs]
        texts = [item if isinstance(item, str) else " ".join(map(str, item)) for item in inputs]
        dimensions = body.get("dimensions") or DEFAULT_DIMENSIONS
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = embedding(text, dimensions)
            value: list[float] | str = (
                base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": value})
        tokens = sum(count_tokens(text) for text in texts)
        result = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        self._stats.record(model, "ok")
        return json_response(result)

    async def list_models(self, request: web.Request) -> web.Response:
        """``GET /v1/models`` in a shape both the OpenAI and the Anthropic SDKs accept."""
        data = [_model_entry(name) for name in self._models()]
        listing = {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        return json_response(listing)

    async def get_model(self, request: web.Request) -> web.Response:
        """``GET /v1/models/{model}``: every model name is served, so every name exists."""
        entry = _model_entry(request.match_info["model"])
        return json_response(entry)


def _prompt_tokens(body: dict[str, Any]) -> int:
    """Simulated prompt tokens of a valid chat or embeddings request."""
    if "messages" in body:
        return prompt_tokens(body["messages"])
    raw_input = body.get("input")
    texts = [raw_input] if isinstance(raw_input, str) else raw_input or []
    return sum(count_tokens(t) if isinstance(t, str) else 1 for t in texts)


def _check_embeddings(body: dict[str, Any]) -> tuple[str, str] | None:
    """The (param, message) of the first problem in an embeddings request, if any."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model", "you must provide a model parameter (a non-empty string)"
    raw_input = body.get("input")
    if raw_input is None:
        return "input", "missing required parameter: 'input'"
    valid = isinstance(raw_input, str) or (
        isinstance(raw_input, list)
        and raw_input
        and (
            all(isinstance(item, str) for item in raw_input)
            or all(isinstance(item, int) for item in raw_input)
            or all(isinstance(item, list) for item in raw_input)
        )
    )
    if not valid:
        return "input", "'input' must be a string, an array of strings or an array of token arrays"
    if not int_in(body, "dimensions", MAX_DIMENSIONS):
        return "dimensions", f"'dimensions' must be an integer between 1 and {MAX_DIMENSIONS}"
    if body.get("encoding_format", "float") not in ("float", "base64", None):
        return "encoding_format", "'encoding_format' must be 'float' or 'base64'"
    return None


def _tool_call(completion_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    return {
        "id": f"call_{completion_id.rsplit('-', 1)[-1]}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _stream_chunks(
    head: dict[str, Any], reply: Reply, tool: tuple[str, str] | None, usage: dict[str, int] | None
) -> list[bytes]:
    """Every SSE line of a streamed completion, ``data: [DONE]`` included."""
    base = {**head, "object": "chat.completion.chunk"}
    if usage is not None:
        base["usage"] = None

    # Every chunk shares its head; only the delta is encoded per chunk (this is the benchmark path).
    opening = b"data: " + encode(base)[:-1].encode() + b',"choices":[{"index":0,"delta":'
    piece_opening = opening + b'{"content":'
    piece_closing = b'},"logprobs":null,"finish_reason":null}]}\n\n'

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        closing = b',"logprobs":null,"finish_reason":' + encode(finish).encode() + b"}]}\n\n"
        return opening + encode(delta).encode() + closing

    if tool is not None:
        name, arguments = tool
        call = _tool_call(head["id"], name, arguments)
        first = {**call, "index": 0, "function": {"name": name, "arguments": ""}}
        lines = [
            chunk({"role": "assistant", "content": None, "tool_calls": [first]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
            chunk({}, "tool_calls"),
        ]
    else:
        lines = [chunk({"role": "assistant", "content": ""})]
        lines.extend(piece_opening + encode_basestring(p).encode() + piece_closing for p in reply.pieces)
        lines.append(chunk({}, "length" if reply.truncated else "stop"))
    if usage is not None:
        lines.append(b"data: " + encode({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
    lines.append(_DONE)
    return lines


def _model_entry(name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": OWNER,
        "type": "model",
        "display_name": f"{name} (simulated)",
        "created_at": "1970-01-01T00:00:00Z",
    }
