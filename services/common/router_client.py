"""The router's gRPC client as the gateway and executor use it: one hop, with breaker, metrics and trace context."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from openclaw.v1 import router_pb2, router_pb2_grpc
from services.common import rpc
from services.common.breaker import AsyncBreaker
from services.common.errors import CallerTimeoutError, OpenClawError, UnavailableError
from services.common.hop import Hop
from services.common.tls import TlsFiles, channel_credentials

# Transparent retries of calls that never reached the router (UNAVAILABLE), per gRPC's retry policy.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "openclaw.v1.RouterService"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "0.5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class RouterClient:
    """Calls the router; errors come back as OpenClawError subclasses rebuilt from the gRPC status."""

    def __init__(
        self, address: str, *, hop_name: str, timeout_s: float = 120.0, tls: TlsFiles | None = None
    ) -> None:
        self._address = address
        self._timeout = timeout_s
        options = [
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30000),
        ]
        # With tls, mutual TLS: the router is verified against our CA and sees our certificate.
        self._channel = (
            grpc.aio.secure_channel(address, channel_credentials(tls), options=options)
            if tls is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)
        # A router that rejects our input must not open the breaker; only unavailability should.
        self.hop = Hop(hop_name, breaker=AsyncBreaker(hop_name, fail_max=10, reset_timeout=5.0))

    async def chat(
        self, request: router_pb2.ChatRequest, *, timeout_s: float | None = None
    ) -> router_pb2.ChatResponse:
        """One chat completion."""
        async with self.hop.guard("RouterService/Chat", **_attrs(request)) as span:
            try:
                response: router_pb2.ChatResponse = await self._stub.Chat(
                    request, timeout=timeout_s or self._timeout, metadata=rpc.outgoing_metadata()
                )
            except grpc.aio.AioRpcError as exc:
                raise self._error(exc, timeout_s) from exc
            span.set_attribute("gen_ai.response.model", response.model)
            span.set_attribute("gen_ai.usage.input_tokens", response.usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", response.usage.completion_tokens)
            return response

    async def chat_stream(
        self, request: router_pb2.ChatRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[router_pb2.ChatChunk]:
        """A streamed chat completion, chunk by chunk."""
        async with self.hop.guard("RouterService/ChatStream", **_attrs(request)):
            call = self._stub.ChatStream(
                request, timeout=timeout_s or self._timeout, metadata=rpc.outgoing_metadata()
            )
            try:
                async for chunk in call:
                    yield chunk
            except grpc.aio.AioRpcError as exc:
                raise self._error(exc, timeout_s) from exc
            finally:
                call.cancel()

    async def embed(
        self, request: router_pb2.EmbedRequest, *, timeout_s: float | None = None
    ) -> router_pb2.EmbedResponse:
        """Vectors for texts."""
        attrs = {**_attrs(request), "gen_ai.operation.name": "embeddings"}
        async with self.hop.guard("RouterService/Embed", **attrs) as span:
            try:
                response: router_pb2.EmbedResponse = await self._stub.Embed(
                    request, timeout=timeout_s or self._timeout, metadata=rpc.outgoing_metadata()
                )
            except grpc.aio.AioRpcError as exc:
                raise self._error(exc, timeout_s) from exc
            span.set_attribute("gen_ai.response.model", response.model)
            span.set_attribute("gen_ai.usage.input_tokens", response.usage.prompt_tokens)
            return response

    def _error(self, exc: grpc.aio.AioRpcError, timeout_s: float | None) -> OpenClawError:
        """The remote error; a deadline the caller chose shorter than ours is not the router's fault."""
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and timeout_s and timeout_s < self._timeout:
            return CallerTimeoutError(f"the router did not answer within the step's {timeout_s}s timeout")
        return rpc.error_from_rpc(exc)

    async def list_models(self) -> router_pb2.ListModelsResponse:
        """The router's model table."""
        async with self.hop.guard("RouterService/ListModels"):
            try:
                response: router_pb2.ListModelsResponse = await self._stub.ListModels(
                    router_pb2.ListModelsRequest(), timeout=10.0, metadata=rpc.outgoing_metadata()
                )
                return response
            except grpc.aio.AioRpcError as exc:
                raise rpc.error_from_rpc(exc) from exc

    async def ready(self) -> bool:
        """Whether the channel can reach the router now."""
        try:
            await self.list_models()
            return True
        except OpenClawError:
            return False

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(grace=None)


def _attrs(request: router_pb2.ChatRequest | router_pb2.EmbedRequest) -> dict[str, Any]:
    return {
        "rpc.system": "grpc",
        "rpc.service": "openclaw.v1.RouterService",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": request.model,
    }


__all__ = ["RouterClient", "UnavailableError"]
