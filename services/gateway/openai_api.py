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
from services.gateway.access import Call, Gate
from services.gateway.auth import AuthError
from services.gateway.http_api import SSE_HEADERS, admit, finish_quietly, read_json
from services.gateway.jsonbody import MAX_DEPTH
from services.gateway.limits import Slot
from services.gateway.openai_embeddings import embeddings_body, to_embed_request
from services.gateway.openai_wire import OpenAIError, route_info, to_chat_request
from services.gateway.ratelimit import RateLimitedError

SERVED_BY_HEADER = "x-openclaw-served-by"
_DONE = b"data: [DONE]\n\n"
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


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
            headers = err.decision.headers() if isinstance(err, RateLimitedError) else {}
            return openai_error(
                429,
                err.message,
                kind="rate_limit_error",
                code="rate_limit_exceeded",
                headers={**headers, "Retry-After": retry_after},
            )
        return openai_error(
            503, err.message, code="service_unavailable", headers={"Retry-After": retry_after}
        )
    if isinstance(err, OpenClawError):
        return openai_error(err.http_status, err.message, code=err.code)
    raise err


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
    """The OpenAI-compatible surface, authenticated and governed like the task API."""

    def __init__(
        self, backend: ChatBackend, gate: Gate, *, max_body_bytes: int, max_json_depth: int = MAX_DEPTH
    ) -> None:
        self._backend = backend
        self._gate = gate
        self._limit = max_body_bytes
        self._depth = max_json_depth

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
            call = await admit(self._gate, request, "chat.completions")
        except OpenClawError as exc:
            return translate_error(exc)
        try:
            body = await read_json(request, self._limit, self._depth)
            request_id = f"chatcmpl-{uuid.uuid4().hex}"
            chat = to_chat_request(body, tenant=call.principal.tenant, request_id=request_id)
            model = chat.model
            call.resource = f"model:{model}"
            describe_chat(call, chat, stream=body.get("stream") is True)
            assert call.policy is not None
            call.policy.check_model(model)
            if body.get("stream") is True:
                options = body.get("stream_options") or {}
                include_usage = isinstance(options, dict) and options.get("include_usage") is True
                slot = await call.stream_slot()
                return _ChatStream(self._backend, chat, request_id, include_usage, call, slot)
            response = await self._backend.chat(chat)
        except (OpenClawError, OpenAIError) as exc:
            await call.finish(exc)
            return translate_error(exc, model)
        except BaseException as exc:
            await call.finish(exc)
            raise
        await call.finish()
        headers = {SERVED_BY_HEADER: response.route.model or response.model, **call.headers()}
        return JSONResponse(completion_body(response, request_id), headers=headers)

    async def embeddings(self, request: Request) -> Response:
        model = ""
        try:
            call = await admit(self._gate, request, "embeddings")
        except OpenClawError as exc:
            return translate_error(exc)
        try:
            body = await read_json(request, self._limit, self._depth)
            embed = to_embed_request(body, tenant=call.principal.tenant, request_id=f"emb-{uuid.uuid4().hex}")
            model = embed.model
            call.resource = f"model:{model}"
            call.details["inputs"] = len(embed.input)
            assert call.policy is not None
            call.policy.check_model(model)
            response = await self._backend.embed(embed)
        except (OpenClawError, OpenAIError) as exc:
            await call.finish(exc)
            return translate_error(exc, model)
        except BaseException as exc:
            await call.finish(exc)
            raise
        await call.finish()
        headers = {SERVED_BY_HEADER: response.route.model or response.model, **call.headers()}
        as_base64 = body.get("encoding_format") == "base64"
        return JSONResponse(embeddings_body(response, as_base64=as_base64), headers=headers)

    async def list_models(self, request: Request) -> Response:
        try:
            async with await admit(self._gate, request, "models.read") as call:
                table = await self._backend.list_models()
        except OpenClawError as exc:
            return translate_error(exc)
        assert call.policy is not None
        models = [_model(m) for m in table.models if call.policy.allows_model(m.name)]
        return JSONResponse({"object": "list", "data": models}, headers=call.headers())

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        try:
            async with await admit(self._gate, request, "models.read", f"model:{name}") as call:
                table = await self._backend.list_models()
        except OpenClawError as exc:
            return translate_error(exc)
        assert call.policy is not None
        for model in table.models:
            if model.name == name and call.policy.allows_model(name):
                return JSONResponse(_model(model), headers=call.headers())
        return translate_error(NotFoundError(f"model {name!r} not found"), name)


def describe_chat(call: Call, chat: router_pb2.ChatRequest, *, stream: bool) -> None:
    """What a chat call's audit record says: the model, and the messages only if the tenant's policy allows."""
    call.details["model"] = chat.model
    call.details["stream"] = stream
    if call.policy is not None and call.policy.log_prompts:
        call.details["messages"] = [{"role": m.role, "content": m.content} for m in chat.messages]


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
        self,
        backend: ChatBackend,
        request: router_pb2.ChatRequest,
        request_id: str,
        include_usage: bool,
        call: Call,
        slot: Slot,
    ) -> None:
        # Response's constructor is not called: this class writes its own status line and headers.
        self.status_code = 200
        self.background = None
        self._backend = backend
        self._request = request
        self._id = request_id
        self._include_usage = include_usage
        self._created = int(time.time())
        self._call = call
        self._slot = slot
        self._failure: OpenClawError | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error: BaseException | None = None
        try:
            await self._serve(scope, receive, send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await finish_quietly(self._call, self._slot, error=error or self._failure)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = aiter(self._backend.chat_stream(self._request))
        try:
            try:
                first: router_pb2.ChatChunk | None = await anext(stream)
            except StopAsyncIteration:
                first = None
            except OpenClawError as exc:
                self._failure = exc
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
                        *((k.lower().encode(), v.encode()) for k, v in self._call.headers().items()),
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
