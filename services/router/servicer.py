"""gRPC transport of the router: decode protobuf, call the domain, encode the answer; errors as statuses."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import struct_pb2
from redis.exceptions import RedisError

from openclaw.v1 import router_pb2, router_pb2_grpc
from services.common import rpc
from services.common.errors import (
    InvalidInputError,
    OpenClawError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from services.router.chat import (
    ChatDelta,
    ChatRequest,
    ChatResult,
    EmbedRequest,
    EmbedResult,
    Message,
    Route,
    ToolCall,
)
from services.router.deployments import DEPLOYMENT_FIELDS, Deployment
from services.router.pipeline import Pipeline
from services.router.registry import CONFIG_FIELDS, ModelSpec, Registry, redact_url
from services.router.routing import Router
from services.router.table_sync import TableSync
from services.router.usage_api import UsageCalls, cache_control

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE = "openclaw.v1.RouterService"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_OUTPUT_ONLY = frozenset({"has_api_key"})
PRIORITY_METADATA = "openclaw-priority"
Context = grpc.aio.ServicerContext[Any, Any]
ADMIN_TOKEN_ENV = "OPENCLAW_ROUTER_ADMIN_TOKEN"
MAX_EMBED_INPUTS = 2048
"""Texts in one Embed call (OpenAI's own limit per request)."""
MAX_DIMENSIONS = 65536


# -- admin access ----------------------------------------------------------------------------------


def is_loopback(listen: str) -> bool:
    """Whether a ``host:port`` listener takes only local connections (127.0.0.0/8, ::1, localhost)."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """Who may change the model table: bearers of ``token``; with no token, any caller of a loopback listener.

    Admin calls can point a model at any endpoint with a provider key of the router, so they are never open
    to the network without a token.
    """

    token: bytes | None = field(repr=False)
    loopback: bool

    def check(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Raise UnauthenticatedError or PermissionDeniedError unless the call may change models."""
        if self.token is None:
            if self.loopback:
                return
            raise PermissionDeniedError(
                f"admin calls are disabled: set {ADMIN_TOKEN_ENV} to enable admin calls on a non-loopback listener"
            )
        sent = [value for key, value in metadata if key == "authorization"]
        if not sent:
            raise UnauthenticatedError(
                f"admin call without credentials: send metadata 'authorization: Bearer <token>' "
                f"with the router's {ADMIN_TOKEN_ENV}",
                metadata="authorization",
            )
        value = sent[0] if isinstance(sent[0], str) else sent[0].decode("utf-8", "replace")
        scheme, _, presented = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise UnauthenticatedError(
                f"authorization metadata must have the form 'Bearer <token>' with the router's {ADMIN_TOKEN_ENV}",
                metadata="authorization",
            )
        if not hmac.compare_digest(presented.strip().encode("utf-8"), self.token):
            raise UnauthenticatedError(
                f"authorization: the bearer token does not match the router's {ADMIN_TOKEN_ENV}",
                metadata="authorization",
            )


# -- decoding --------------------------------------------------------------------------------------


def _invalid(field: str, problem: str) -> InvalidInputError:
    return InvalidInputError(f"{field}: {problem}", field=field)


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        # Struct has only doubles; providers reject 100.0 where they expect an integer.
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A protobuf Struct as plain JSON values (integral numbers as ints)."""
    return {key: _value(item) for key, item in struct.fields.items()}


def decode_chat(request: router_pb2.ChatRequest, priority: str = "") -> ChatRequest:
    """The domain request; InvalidInputError names the first bad field."""
    if not request.model:
        raise _invalid("model", "required: the name of a model (see ListModels)")
    if not request.messages:
        raise _invalid("messages", "at least one message is required")
    messages = []
    for index, m in enumerate(request.messages):
        if m.role not in ROLES:
            raise _invalid(
                f"messages[{index}].role", f"must be one of {', '.join(sorted(ROLES))} (got {m.role!r})"
            )
        calls = (
            tuple(ToolCall(c.id, c.name, c.arguments, c.type or "function") for c in m.tool_calls)
            if m.tool_calls
            else ()
        )
        messages.append(Message(m.role, m.content, m.name, m.tool_call_id, calls))
    temperature = request.temperature if request.HasField("temperature") else None
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise _invalid("temperature", f"must be between 0 and 2 (got {temperature:g})")
    max_tokens = request.max_tokens if request.HasField("max_tokens") else None
    if max_tokens is not None and max_tokens < 1:
        raise _invalid("max_tokens", f"must be at least 1 (got {max_tokens})")
    top_p = request.top_p if request.HasField("top_p") else None
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise _invalid("top_p", f"must be in (0, 1] (got {top_p:g})")
    return ChatRequest(
        model=request.model,
        messages=tuple(messages),
        temperature=temperature,
        max_tokens=max_tokens,
        top_p=top_p,
        stop=tuple(request.stop),
        user=request.user,
        tenant=request.tenant,
        request_id=request.request_id,
        extra=struct_to_dict(request.extra) if request.HasField("extra") else {},
        priority=request.priority or priority,
    )


def decode_embed(request: router_pb2.EmbedRequest, priority: str = "") -> EmbedRequest:
    """The domain request; InvalidInputError names the first bad field."""
    if not request.model:
        raise _invalid("model", "required: the name of a model (see ListModels)")
    if not request.input:
        raise _invalid("input", "at least one text is required")
    if len(request.input) > MAX_EMBED_INPUTS:
        raise _invalid("input", f"at most {MAX_EMBED_INPUTS} texts per call (got {len(request.input)})")
    for index, text in enumerate(request.input):
        if not text:
            raise _invalid(f"input[{index}]", "must not be empty")
    dimensions = request.dimensions if request.HasField("dimensions") else None
    if dimensions is not None and not 1 <= dimensions <= MAX_DIMENSIONS:
        raise _invalid("dimensions", f"must be between 1 and {MAX_DIMENSIONS} (got {dimensions})")
    return EmbedRequest(
        model=request.model,
        inputs=tuple(request.input),
        dimensions=dimensions,
        user=request.user,
        tenant=request.tenant,
        request_id=request.request_id,
        priority=request.priority or priority,
    )


def encode_embeddings(result: EmbedResult, route: Route) -> router_pb2.EmbedResponse:
    """An EmbedResponse: the vectors in input order, usage and route."""
    usage = result.usage
    return router_pb2.EmbedResponse(
        model=result.model or route.model,
        data=[router_pb2.Embedding(values=vector) for vector in result.vectors],
        usage=router_pb2.Usage(prompt_tokens=usage.prompt_tokens, total_tokens=usage.total_tokens),
        route=encode_route(route),
    )


def decode_deployment(deployment: router_pb2.Deployment) -> dict[str, Any]:
    """One deployment's definition: the fields that are set (unset ones come from the model)."""
    data: dict[str, Any] = {}
    for name in DEPLOYMENT_FIELDS:
        if name == "weight":
            if deployment.HasField("weight"):
                data["weight"] = deployment.weight
            continue
        value = getattr(deployment, name)
        if value:
            data[name] = value
    return data


def _field_value(model: router_pb2.Model, name: str) -> Any:
    value = getattr(model, name)
    if name == "fallback_models":
        return tuple(value)
    if name == "deployments":
        return tuple(decode_deployment(d) for d in value)
    return value


def decode_model(model: router_pb2.Model) -> dict[str, Any]:
    """An AddModel definition: the fields that are set (zero values mean "the default")."""
    data: dict[str, Any] = {"name": model.name}
    for name in CONFIG_FIELDS:
        if name == "name":
            continue
        value = _field_value(model, name)
        if value:
            data[name] = value
    return data


def decode_update(model: router_pb2.Model, paths: list[str]) -> dict[str, Any]:
    """UpdateModel changes: the fields named by the mask, or every non-zero field when it is empty."""
    if not paths:
        data = decode_model(model)
        data.pop("name", None)
        return data
    changes: dict[str, Any] = {}
    for path in paths:
        if path in _OUTPUT_ONLY:
            raise _invalid(f"update_mask.{path}", "is output only")
        if path not in CONFIG_FIELDS:
            raise _invalid(f"update_mask.{path}", f"not a model field (known: {', '.join(CONFIG_FIELDS)})")
        changes[path] = _field_value(model, path)
    return changes


# -- encoding --------------------------------------------------------------------------------------


def encode_route(route: Route) -> router_pb2.RouteInfo:
    """RouteInfo of a served request."""
    return router_pb2.RouteInfo(
        model=route.model,
        provider=route.provider,
        queue_ms=route.queue_ms,
        simulated=route.simulated,
        deployment=route.deployment,
        reason=route.reason,
        priority=route.priority,
        table_version=route.table_version,
        committed=route.committed,
        cache=route.cache,
        attempts=[
            router_pb2.Attempt(
                model=a.model,
                provider=a.provider,
                outcome=a.outcome,
                error=a.error,
                duration_ms=a.duration_ms,
                deployment=a.deployment,
                reason=a.reason,
                queue_ms=a.queue_ms,
            )
            for a in route.attempts
        ],
    )


def _tool_calls(calls: tuple[ToolCall, ...]) -> list[router_pb2.ToolCall]:
    return [router_pb2.ToolCall(id=c.id, type=c.type, name=c.name, arguments=c.arguments) for c in calls]


def encode_response(result: ChatResult, route: Route) -> router_pb2.ChatResponse:
    """A ChatResponse; ``model`` is the router model that served (see ``route`` for the attempts)."""
    usage = result.usage
    return router_pb2.ChatResponse(
        id=result.id or f"chatcmpl-{uuid.uuid4().hex}",
        model=route.model,
        message=router_pb2.ChatMessage(
            role="assistant", content=result.content, tool_calls=_tool_calls(result.tool_calls)
        ),
        finish_reason=result.finish_reason,
        usage=router_pb2.Usage(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        ),
        route=encode_route(route),
        created=result.created or int(time.time()),
    )


def encode_chunk(delta: ChatDelta, stream_id: str) -> router_pb2.ChatChunk:
    """One ChatChunk; the route rides on the first and the last."""
    chunk = router_pb2.ChatChunk(id=stream_id, delta=delta.text, finish_reason=delta.finish_reason)
    if delta.tool_calls:
        chunk.tool_calls.extend(_tool_calls(delta.tool_calls))
    if delta.usage is not None:
        u = delta.usage
        chunk.usage.CopyFrom(
            router_pb2.Usage(
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                total_tokens=u.total_tokens,
            )
        )
    if delta.route is not None:
        chunk.route.CopyFrom(encode_route(delta.route))
        chunk.model = delta.route.model
    return chunk


def encode_model(spec: ModelSpec) -> router_pb2.Model:
    """A Model as ListModels shows it: never the key itself (only whether there is one), nor credentials
    in the endpoint's userinfo or query string."""
    return router_pb2.Model(
        name=spec.name,
        provider=spec.provider,
        endpoint=spec.shown_endpoint,
        provider_model=spec.provider_model,
        max_concurrency=spec.max_concurrency,
        fallback_models=list(spec.fallback_models),
        api_key_env=spec.api_key_env,
        timeout_seconds=spec.timeout_seconds,
        simulated=spec.simulated,
        has_api_key=spec.has_api_key,
        deployments=[encode_deployment(d) for d in spec.deployments],
        rpm=spec.rpm,
        tpm=spec.tpm,
        input_cost_per_token=spec.input_cost_per_token,
        output_cost_per_token=spec.output_cost_per_token,
        context_window=spec.context_window,
    )


def encode_deployment(deployment: Deployment) -> router_pb2.Deployment:
    """A Deployment as ListModels shows it: no key, no credentials in the endpoint."""
    return router_pb2.Deployment(
        name=deployment.name,
        provider=deployment.provider,
        endpoint=redact_url(deployment.endpoint),
        provider_model=deployment.provider_model,
        weight=deployment.weight,
        max_concurrency=deployment.max_concurrency,
        rpm=deployment.rpm,
        tpm=deployment.tpm,
        input_cost_per_token=deployment.input_cost_per_token,
        output_cost_per_token=deployment.output_cost_per_token,
        context_window=deployment.context_window,
        api_key_env=deployment.api_key_env,
        timeout_seconds=deployment.timeout_seconds,
        simulated=deployment.simulated,
        has_api_key=deployment.has_api_key,
    )


def _priority(context: Context) -> str:
    """The priority class from the call's metadata (the request field wins when both are set)."""
    for key, value in context.invocation_metadata() or ():
        if key == PRIORITY_METADATA:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


def _deadline(context: Context) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


# -- service ---------------------------------------------------------------------------------------


class RouterServicer(UsageCalls, router_pb2_grpc.RouterServiceServicer):  # type: ignore[misc]
    """openclaw.v1.RouterService over the Router and the Registry."""

    def __init__(
        self,
        router: Router,
        registry: Registry,
        *,
        admin: AdminAccess,
        pipeline: Pipeline | None = None,
        table_sync: TableSync | None = None,
    ) -> None:
        self._router = router
        self._pipeline = pipeline or Pipeline(router, coalesce=False, embed_window_s=0)
        self._registry = registry
        self._admin = admin
        self.table_sync = table_sync
        """When set, admin changes go through the table shared by every replica."""

    async def _change(self, mutate: Callable[[Registry], T]) -> T:
        """Apply an admin change to the table: the shared one when replicas share it, else the local one."""
        if self.table_sync is None:
            return mutate(self._registry)
        try:
            return await self.table_sync.change(mutate)
        except RedisError as exc:
            raise UnavailableError(
                f"the shared model table is out of reach, nothing changed: {exc}"
            ) from None

    def _admit(self, context: Context, method: str) -> None:
        """Let an admin call through, or raise the error that says why not (the token is never echoed)."""
        try:
            self._admin.check(context.invocation_metadata() or ())
        except OpenClawError as exc:
            log.warning(
                "admin call refused", extra={"method": method, "peer": context.peer(), "code": exc.code}
            )
            raise

    async def Chat(self, request: router_pb2.ChatRequest, context: Context) -> router_pb2.ChatResponse:
        async with rpc.serving(context, "Chat", SERVICE) as span:
            span.set_attribute("gen_ai.request.model", request.model)
            result, route = await self._pipeline.chat(
                decode_chat(request, _priority(context)),
                deadline=_deadline(context),
                cache=cache_control(request, context),
            )
            return encode_response(result, route)

    async def ChatStream(
        self, request: router_pb2.ChatRequest, context: Context
    ) -> AsyncIterator[router_pb2.ChatChunk]:
        async with rpc.serving(context, "ChatStream", SERVICE) as span:
            span.set_attribute("gen_ai.request.model", request.model)
            stream_id = f"chatcmpl-{uuid.uuid4().hex}"
            deltas = self._pipeline.stream(
                decode_chat(request, _priority(context)),
                deadline=_deadline(context),
                cache=cache_control(request, context),
            )
            model = ""
            async with aclosing(deltas):
                async for delta in deltas:
                    chunk = encode_chunk(delta, stream_id)
                    if delta.route is not None:
                        model = delta.route.model
                    else:
                        chunk.model = model
                    yield chunk

    async def Embed(self, request: router_pb2.EmbedRequest, context: Context) -> router_pb2.EmbedResponse:
        async with rpc.serving(context, "Embed", SERVICE) as span:
            span.set_attribute("gen_ai.request.model", request.model)
            result, route = await self._pipeline.embed(
                decode_embed(request, _priority(context)), deadline=_deadline(context)
            )
            return encode_embeddings(result, route)

    async def ListModels(
        self, request: router_pb2.ListModelsRequest, context: Context
    ) -> router_pb2.ListModelsResponse:
        with rpc.server_span(context, "ListModels", SERVICE):
            table = self._registry.snapshot
            return router_pb2.ListModelsResponse(
                models=[encode_model(spec) for spec in table.models.values()], version=table.version
            )

    async def AddModel(self, request: router_pb2.AddModelRequest, context: Context) -> router_pb2.Model:
        async with rpc.serving(context, "AddModel", SERVICE):
            self._admit(context, "AddModel")
            if not request.HasField("model") or not request.model.name:
                raise _invalid("model.name", "required")
            data = decode_model(request.model)
            spec = await self._change(lambda r: r.add(data))
            _log_change("model added", spec, self._registry)
            return encode_model(spec)

    async def UpdateModel(self, request: router_pb2.UpdateModelRequest, context: Context) -> router_pb2.Model:
        async with rpc.serving(context, "UpdateModel", SERVICE):
            self._admit(context, "UpdateModel")
            if not request.model.name:
                raise _invalid("model.name", "required: the model to update")
            changes = decode_update(request.model, list(request.update_mask.paths))
            name = request.model.name
            spec = await self._change(lambda r: r.update(name, changes))
            _log_change("model updated", spec, self._registry, fields=sorted(changes))
            return encode_model(spec)

    async def RemoveModel(
        self, request: router_pb2.RemoveModelRequest, context: Context
    ) -> router_pb2.RemoveModelResponse:
        async with rpc.serving(context, "RemoveModel", SERVICE):
            self._admit(context, "RemoveModel")
            if not request.name:
                raise _invalid("name", "required: the model to remove")
            table = self._registry.snapshot
            if request.name not in table:
                return router_pb2.RemoveModelResponse(removed=False, version=table.version)
            name = request.name
            await self._change(lambda r: r.remove(name))
            table = self._registry.snapshot
            log.info("model removed", extra={"model": request.name, "version": table.version})
            return router_pb2.RemoveModelResponse(removed=True, version=table.version)


def _log_change(what: str, spec: ModelSpec, registry: Registry, **extra: Any) -> None:
    fields: Mapping[str, Any] = {
        "model": spec.name,
        "provider": spec.provider,
        "endpoint": spec.shown_endpoint,
        "version": registry.snapshot.version,
        **extra,
    }
    log.info(what, extra=dict(fields))


def add_to_server(servicer: RouterServicer, server: grpc.aio.Server) -> None:
    """Register the servicer on a server."""
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
