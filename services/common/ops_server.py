"""A small HTTP server for /metrics, /healthz and /readyz, for processes whose main port is not HTTP."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]


class OpsServer:
    """Serves liveness, readiness and Prometheus metrics on its own port."""

    def __init__(
        self, host: str, port: int, readiness: Readiness, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._host, self._port, self._readiness = host, port, readiness
        self._ssl = ssl_context  # with it, HTTPS only (services.common.tls.server_context: TLS 1.3 minimum)
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        """Bind and serve; with port 0 the chosen port is in self.port."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, checks = await self._readiness()
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
