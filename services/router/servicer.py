"""gRPC transport of the router: decode (``codec.py``), call the domain, encode the answer; errors as statuses."""

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
from redis.exceptions import RedisError

from openclaw.v1 import router_pb2, router_pb2_grpc
from services.common import rpc
from services.common.errors import (
    OpenClawError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from services.router.codec import (
    decode_chat,
    decode_embed,
    decode_model,
    decode_update,
    encode_chunk,
    encode_embeddings,
    encode_model,
    encode_response,
    invalid,
)
from services.router.pipeline import Pipeline
from services.router.registry import ModelSpec, Registry
from services.router.routing import Router
from services.router.table_sync import TableSync
from services.router.usage_api import UsageCalls, cache_control

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE = "openclaw.v1.RouterService"
PRIORITY_METADATA = "openclaw-priority"
Context = grpc.aio.ServicerContext[Any, Any]
ADMIN_TOKEN_ENV = "OPENCLAW_ROUTER_ADMIN_TOKEN"


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


# -- call metadata ---------------------------------------------------------------------------------


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
                raise invalid("model.name", "required")
            data = decode_model(request.model)
            spec = await self._change(lambda r: r.add(data))
            _log_change("model added", spec, self._registry)
            return encode_model(spec)

    async def UpdateModel(self, request: router_pb2.UpdateModelRequest, context: Context) -> router_pb2.Model:
        async with rpc.serving(context, "UpdateModel", SERVICE):
            self._admit(context, "UpdateModel")
            if not request.model.name:
                raise invalid("model.name", "required: the model to update")
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
                raise invalid("name", "required: the model to remove")
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
