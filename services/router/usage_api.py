"""gRPC transport of metering and the catalogue (GetUsage, ListCatalogue) and of the per-request cache control."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import grpc

from openclaw.v1 import router_pb2
from services.common import rpc
from services.common.errors import UnavailableError
from services.router.metering import day_range
from services.router.pipeline import Pipeline

log = logging.getLogger(__name__)

SERVICE = "openclaw.v1.RouterService"
CACHE_METADATA = "openclaw-cache"
Context = grpc.aio.ServicerContext[Any, Any]


def cache_control(request: router_pb2.ChatRequest, context: Context) -> str:
    """The request's cache mode: its ``cache`` field, else the ``openclaw-cache`` call metadata."""
    if request.cache:
        return str(request.cache)
    for key, value in context.invocation_metadata() or ():
        if key == CACHE_METADATA:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""


class UsageCalls:
    """GetUsage and ListCatalogue; mixed into the RouterServicer, which sets ``_pipeline``."""

    _pipeline: Pipeline

    async def GetUsage(
        self, request: router_pb2.GetUsageRequest, context: Context
    ) -> router_pb2.GetUsageResponse:
        async with rpc.serving(context, "GetUsage", SERVICE):
            meter = self._pipeline.meter
            if meter is None:
                raise UnavailableError("usage metering is off on this router")
            rows = await meter.usage(request.tenant, request.from_day, request.to_day)
            days = day_range(request.from_day, request.to_day, dt.datetime.now(dt.UTC).date())
            response = router_pb2.GetUsageResponse(
                tenant=request.tenant, from_day=days[0].isoformat(), to_day=days[-1].isoformat()
            )
            for row in rows:
                response.records.add(
                    day=row.day,
                    model=row.model,
                    deployment=row.deployment,
                    requests=row.requests,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    cost_usd=row.cost_usd,
                )
                response.requests += row.requests
                response.prompt_tokens += row.prompt_tokens
                response.completion_tokens += row.completion_tokens
                response.cost_usd += row.cost_usd
            return response

    async def ListCatalogue(
        self, request: router_pb2.ListCatalogueRequest, context: Context
    ) -> router_pb2.ListCatalogueResponse:
        with rpc.server_span(context, "ListCatalogue", SERVICE):
            response = router_pb2.ListCatalogueResponse()
            for entry in self._pipeline.catalogue.entries:
                if request.provider and entry.provider != request.provider:
                    continue
                response.models.add(
                    name=entry.name,
                    provider=entry.provider,
                    aliases=list(entry.aliases),
                    input_per_mtok=entry.input_per_mtok,
                    output_per_mtok=entry.output_per_mtok,
                    context_window=entry.context_window or 0,
                    max_output_tokens=entry.max_output_tokens or 0,
                    capabilities=sorted(entry.capabilities),
                )
            return response
