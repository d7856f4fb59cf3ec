"""Protobuf and the router's domain: decode RouterService requests (naming the first bad field), encode answers."""

from __future__ import annotations

import time
import uuid
from typing import Any

from google.protobuf import struct_pb2

from openclaw.v1 import router_pb2
from services.common.errors import InvalidInputError
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
from services.router.registry import CONFIG_FIELDS, ModelSpec, redact_url

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_OUTPUT_ONLY = frozenset({"has_api_key"})
MAX_EMBED_INPUTS = 2048
"""Texts in one Embed call (OpenAI's own limit per request)."""
MAX_DIMENSIONS = 65536


# -- decoding --------------------------------------------------------------------------------------


def invalid(field: str, problem: str) -> InvalidInputError:
    """The InvalidInputError for one bad field, named in the message and the details."""
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
        raise invalid("model", "required: the name of a model (see ListModels)")
    if not request.messages:
        raise invalid("messages", "at least one message is required")
    messages = []
    for index, m in enumerate(request.messages):
        if m.role not in ROLES:
            raise invalid(
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
        raise invalid("temperature", f"must be between 0 and 2 (got {temperature:g})")
    max_tokens = request.max_tokens if request.HasField("max_tokens") else None
    if max_tokens is not None and max_tokens < 1:
        raise invalid("max_tokens", f"must be at least 1 (got {max_tokens})")
    top_p = request.top_p if request.HasField("top_p") else None
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise invalid("top_p", f"must be in (0, 1] (got {top_p:g})")
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
        raise invalid("model", "required: the name of a model (see ListModels)")
    if not request.input:
        raise invalid("input", "at least one text is required")
    if len(request.input) > MAX_EMBED_INPUTS:
        raise invalid("input", f"at most {MAX_EMBED_INPUTS} texts per call (got {len(request.input)})")
    for index, text in enumerate(request.input):
        if not text:
            raise invalid(f"input[{index}]", "must not be empty")
    dimensions = request.dimensions if request.HasField("dimensions") else None
    if dimensions is not None and not 1 <= dimensions <= MAX_DIMENSIONS:
        raise invalid("dimensions", f"must be between 1 and {MAX_DIMENSIONS} (got {dimensions})")
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
            raise invalid(f"update_mask.{path}", "is output only")
        if path not in CONFIG_FIELDS:
            raise invalid(f"update_mask.{path}", f"not a model field (known: {', '.join(CONFIG_FIELDS)})")
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
