"""OpenAI-compatible routes: /v1/chat/completions (plain and SSE), /v1/embeddings and /v1/models, over the router.

Chat is interactive, so it goes straight to the router (tasks go through RabbitMQ). Requests and answers are
translated to and from ``openclaw.v1`` protobuf; errors use OpenAI's shape so the official client raises
the matching exception. The router's RouteInfo rides along as ``"openclaw": {"route": ...}``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from openclaw.v1 import router_pb2
from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    OpenClawError,
    ResourceExhaustedError,
    UnavailableError,
)
from services.gateway.auth import AuthError, TokenVerifier
from services.gateway.http_api import SSE_HEADERS, authenticate, read_json
from services.gateway.openai_embeddings import embeddings_body, to_embed_request
from services.gateway.openai_wire import OpenAIError, route_info

SERVED_BY_HEADER = "x-openclaw-served-by"
_DONE = b"data: [DONE]\n\n"
# Fields this module maps itself; everything else is passed to the provider through ChatRequest.extra.
_MAPPED = frozenset(
    {"model", "messages", "temperature", "max_tokens", "max_completion_tokens", "top_p", "stop", "user", "n"}
    | {"stream", "stream_options"}
)
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_INT32 = 2**31 - 1
# A protobuf decoder stops at 100 levels of message nesting and a Struct spends up to three per JSON object
# level, so pass-through values are held to fewer levels than the body as a whole (jsonbody.MAX_DEPTH).
_EXTRA_MAX_DEPTH = 32


class ChatBackend(Protocol):
    """The router as the gateway uses it (services.common.router_client.RouterClient)."""

    async def chat(self, request: router_pb2.ChatRequest) -> router_pb2.ChatResponse: ...

    def chat_stream(self, request: router_pb2.ChatRequest) -> AsyncIterator[router_pb2.ChatChunk]: ...

    async def list_models(self) -> router_pb2.ListModelsResponse: ...

    async def embed(self, request: router_pb2.EmbedRequest) -> router_pb2.EmbedResponse: ...


def openai_error(
    status: int,
    message: str,
    *,
    kind: str | None = None,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """``{"error": {"message", "type", "code", "param"}}`` with the status."""
    if kind is None:
        kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def translate_error(err: Exception, model: str = "") -> JSONResponse:
    """An OpenClaw (or request) error as the OpenAI client expects to see it."""
    if isinstance(err, OpenAIError):
        return openai_error(err.status, err.message, param=err.param, code=err.code)
    if isinstance(err, AuthError):
        return openai_error(
            401, err.message, code="invalid_api_key", headers={"WWW-Authenticate": err.www_authenticate()}
        )
    if isinstance(err, NotFoundError):
        message = f"The model {model!r} does not exist or is not available" if model else err.message
        return openai_error(404, message, code="model_not_found", param="model" if model else None)
    if isinstance(err, InvalidInputError):
        return openai_error(400, err.message)
    if isinstance(err, ResourceExhaustedError | UnavailableError):
        retry_after = str(max(1, math.ceil(float(err.details.get("retry_after", 1)))))
        if isinstance(err, ResourceExhaustedError):
            return openai_error(
                429,
                err.message,
                kind="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": retry_after},
            )
        return openai_error(
            503, err.message, code="service_unavailable", headers={"Retry-After": retry_after}
        )
    if isinstance(err, OpenClawError):
        return openai_error(err.http_status, err.message, code=err.code)
    raise err


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


def _usage(usage: router_pb2.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
    }


def _tool_calls(calls: Any, *, streaming: bool) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(calls):
        item: dict[str, Any] = {
            "id": call.id,
            "type": call.type or "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        if streaming:
            item["index"] = i
        out.append(item)
    return out


def completion_body(response: router_pb2.ChatResponse, request_id: str) -> dict[str, Any]:
    """A router ChatResponse as an OpenAI ``chat.completion``."""
    message: dict[str, Any] = {
        "role": response.message.role or "assistant",
        "content": response.message.content,
    }
    if response.message.tool_calls:
        message["tool_calls"] = _tool_calls(response.message.tool_calls, streaming=False)
        message["content"] = response.message.content or None
    body: dict[str, Any] = {
        "id": response.id or request_id,
        "object": "chat.completion",
        "created": response.created or int(time.time()),
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": response.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": _usage(response.usage),
    }
    if response.HasField("route"):
        body["openclaw"] = {"route": route_info(response.route)}
    return body


class OpenAIRoutes:
    """The OpenAI-compatible surface, authenticated with the same bearer JWT as the task API."""

    def __init__(self, backend: ChatBackend, verifier: TokenVerifier, *, max_body_bytes: int) -> None:
        self._backend = backend
        self._verifier = verifier
        self._limit = max_body_bytes

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.get_model, methods=["GET"]),
        ]

    async def chat_completions(self, request: Request) -> Response:
        model = ""
        try:
            principal = authenticate(self._verifier, request)
            body = await read_json(request, self._limit)
            request_id = f"chatcmpl-{uuid.uuid4().hex}"
            chat = to_chat_request(body, tenant=principal.tenant, request_id=request_id)
            model = chat.model
            if body.get("stream") is True:
                options = body.get("stream_options") or {}
                include_usage = isinstance(options, dict) and options.get("include_usage") is True
                return _ChatStream(self._backend, chat, request_id, include_usage)
            response = await self._backend.chat(chat)
        except (OpenClawError, OpenAIError) as exc:
            return translate_error(exc, model)
        headers = {SERVED_BY_HEADER: response.route.model or response.model}
        return JSONResponse(completion_body(response, request_id), headers=headers)

    async def embeddings(self, request: Request) -> Response:
        model = ""
        try:
            principal = authenticate(self._verifier, request)
            body = await read_json(request, self._limit)
            embed = to_embed_request(body, tenant=principal.tenant, request_id=f"emb-{uuid.uuid4().hex}")
            model = embed.model
            response = await self._backend.embed(embed)
        except (OpenClawError, OpenAIError) as exc:
            return translate_error(exc, model)
        headers = {SERVED_BY_HEADER: response.route.model or response.model}
        as_base64 = body.get("encoding_format") == "base64"
        return JSONResponse(embeddings_body(response, as_base64=as_base64), headers=headers)

    async def list_models(self, request: Request) -> Response:
        try:
            authenticate(self._verifier, request)
            table = await self._backend.list_models()
        except OpenClawError as exc:
            return translate_error(exc)
        return JSONResponse({"object": "list", "data": [_model(m) for m in table.models]})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        try:
            authenticate(self._verifier, request)
            table = await self._backend.list_models()
        except OpenClawError as exc:
            return translate_error(exc)
        for model in table.models:
            if model.name == name:
                return JSONResponse(_model(model))
        return translate_error(NotFoundError(f"model {name!r} not found"), name)


def _model(model: router_pb2.Model) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": model.provider or "openclaw",
        "openclaw": {
            "provider": model.provider,
            "simulated": model.simulated,
            "max_concurrency": model.max_concurrency,
            "fallback_models": list(model.fallback_models),
        },
    }


class _ChatStream(Response):
    """An ASGI response streaming ``chat.completion.chunk`` events, ending with ``data: [DONE]``.

    The router stream is opened, read and closed in the one task that serves the request (its span
    context must be detached where it was attached); the first chunk is read before the status line so a
    refusal (unknown model, router down) still gets a proper status code.
    """

    def __init__(
        self, backend: ChatBackend, request: router_pb2.ChatRequest, request_id: str, include_usage: bool
    ) -> None:
        # Response's constructor is not called: this class writes its own status line and headers.
        self.status_code = 200
        self.background = None
        self._backend = backend
        self._request = request
        self._id = request_id
        self._include_usage = include_usage
        self._created = int(time.time())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = aiter(self._backend.chat_stream(self._request))
        try:
            try:
                first: router_pb2.ChatChunk | None = await anext(stream)
            except StopAsyncIteration:
                first = None
            except OpenClawError as exc:
                await translate_error(exc, self._request.model)(scope, receive, send)
                return
            served_by = first.route.model if first is not None and first.route.model else self._request.model
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        *((k.lower().encode(), v.encode()) for k, v in SSE_HEADERS.items()),
                        (SERVED_BY_HEADER.encode(), served_by.encode()),
                    ],
                }
            )
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch_disconnect)
                await self._pump(stream, first, send)
                group.cancel_scope.cancel()
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    async def _pump(
        self, stream: AsyncIterator[router_pb2.ChatChunk], chunk: router_pb2.ChatChunk | None, send: Send
    ) -> None:
        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        first = True
        usage: dict[str, int] | None = None
        route: dict[str, Any] | None = None
        model = self._request.model
        try:
            while chunk is not None:
                model = chunk.model or model
                if chunk.HasField("usage"):
                    usage = _usage(chunk.usage)
                if chunk.HasField("route"):
                    route = route_info(chunk.route)
                if first or chunk.delta or chunk.tool_calls or chunk.finish_reason:
                    delta: dict[str, Any] = {"role": "assistant"} if first else {}
                    if chunk.delta or first:
                        delta["content"] = chunk.delta
                    if chunk.tool_calls:
                        delta["tool_calls"] = _tool_calls(chunk.tool_calls, streaming=True)
                    out = self._chunk(
                        model,
                        [
                            {
                                "index": 0,
                                "delta": delta,
                                "logprobs": None,
                                "finish_reason": chunk.finish_reason or None,
                            }
                        ],
                    )
                    if chunk.HasField("route"):
                        out["openclaw"] = {"route": route}
                    await emit(b"data: " + _encode(out).encode() + b"\n\n")
                    first = False
                chunk = await anext(stream, None)
        except OpenClawError as exc:
            error = json.loads(bytes(translate_error(exc, self._request.model).body))
            await emit(b"data: " + _encode(error).encode() + b"\n\n")
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if self._include_usage:
            out = self._chunk(model, [])
            out["usage"] = usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            if route is not None:
                out["openclaw"] = {"route": route}
            await emit(b"data: " + _encode(out).encode() + b"\n\n")
        await send({"type": "http.response.body", "body": _DONE, "more_body": False})

    def _chunk(self, model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": model,
            "choices": choices,
        }
        if self._include_usage:
            out["usage"] = None
        return out
