"""Chat platform webhooks over HTTP: ``POST /v1/channels/{name}/events``, verified, then handed to conversations.

A request whose signature does not verify is answered 401, counted and logged, and never parsed further. The
platform gets its answer at once (a challenge, an acknowledgement); turns run in the background, because Slack
retries a webhook not answered within 3 seconds (and dedupe makes those retries harmless anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.common.errors import OpenClawError
from services.common.hop import Hop
from services.gateway.channels import KINDS, Channel, ChannelConfig, SignatureError
from services.gateway.conversations import ConversationService

log = logging.getLogger(__name__)
MAX_WEBHOOK_BYTES = 1 << 20

CHANNEL_EVENTS = Counter(
    "openclaw_gateway_channel_events_total",
    "Chat platform webhook messages by channel kind and outcome.",
    ["kind", "outcome"],
)


class ChannelRoutes:
    """The webhook endpoint of every configured channel, and the outbound API calls of their replies."""

    def __init__(
        self,
        configs: Mapping[str, ChannelConfig],
        conversations: ConversationService,
        *,
        allowed: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._conversations = conversations
        self._allowed = allowed  # (tenant, channel name) -> whether the tenant's policy allows the channel
        self._session: aiohttp.ClientSession | None = None
        self._hops = {kind: Hop(f"gateway.channel.{kind}") for kind in KINDS}
        self.channels: dict[str, Channel] = {
            name: KINDS[cfg.kind](cfg, self._poster(cfg.kind)) for name, cfg in configs.items()
        }

    def routes(self) -> list[Route]:
        return [Route("/v1/channels/{name}/events", self.events, methods=["POST"])]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _poster(self, kind: str) -> Any:
        async def post(url: str, headers: Mapping[str, str], body: Mapping[str, Any]) -> Any:
            if self._session is None:
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
            session = self._session

            async def call() -> Any:
                async with session.post(url, json=dict(body), headers=dict(headers)) as response:
                    if response.status >= 400:
                        raise RuntimeError(f"{kind}: the platform answered HTTP {response.status}")
                    return await response.json(content_type=None)

            return await self._hops[kind].call(call)

        return post

    async def events(self, request: Request) -> Response:
        channel = self.channels.get(request.path_params["name"])
        if channel is None:
            return JSONResponse(
                {"error": {"code": "not_found", "message": "no such channel"}}, status_code=404
            )
        body = await request.body()
        if len(body) > MAX_WEBHOOK_BYTES:
            return JSONResponse(
                {"error": {"code": "payload_too_large", "message": "webhook body too large"}}, 413
            )
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            channel.verify(headers, body)
        except SignatureError as exc:
            CHANNEL_EVENTS.labels(channel.kind, "bad_signature").inc()
            log.warning("chat webhook refused", extra={"channel": channel.config.name, "reason": exc.message})
            return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status_code=401)
        if self._allowed is not None and not self._allowed(channel.config.tenant, channel.config.name):
            CHANNEL_EVENTS.labels(channel.kind, "refused").inc()
            return JSONResponse(
                {"error": {"code": "permission_denied", "message": "channel not allowed"}}, 403
            )
        try:
            inbound = channel.parse(body)
        except OpenClawError as exc:
            CHANNEL_EVENTS.labels(channel.kind, "invalid").inc()
            return JSONResponse({"error": exc.to_dict()}, status_code=exc.http_status)
        for message in inbound.messages:
            outcome = await self._conversations.receive(channel, message)
            CHANNEL_EVENTS.labels(channel.kind, outcome.status).inc()
        if inbound.body is None:
            return Response(status_code=inbound.status)
        return JSONResponse(inbound.body, status_code=inbound.status)
