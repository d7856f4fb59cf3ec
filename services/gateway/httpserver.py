"""The gateway's HTTP listeners: uvicorn for HTTP/1.1 and WebSocket, granian for HTTP/2 (h2c and TLS 1.3).

Both serve the same ASGI app on the gateway's event loop, so every protocol reaches the same task service.
Why (measured, see docs/gateway.md "Choosing the HTTP server"): uvicorn has no HTTP/2; granian is the fastest
at HTTP/2 by far, and shares the gateway's loop through its embedded mode, which granian calls experimental;
HTTP/1.1 and WebSocket stay on uvicorn, whose behaviour every HTTP test already pins and whose WebSocket
limits (message size, ping timeout) granian does not offer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from granian._granian import SocketHolder
from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.log import LogLevels
from granian.server.embed import Server as GranianServer
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.metrics import REQUESTS

_BACKLOG = 2048
_PROTOCOL_LABELS = {"1.0": "http/1.1", "1.1": "http/1.1", "2": "http/2", "2.0": "http/2"}


def tls13_context(cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """A server context that refuses anything below TLS 1.3 and offers h2 then http/1.1 by ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION  # RFC 9113 §9.2.1
    context.set_alpn_protocols(["h2", "http/1.1"])
    context.load_cert_chain(str(cert), str(key))
    return context


def listen(host: str, port: int, what: str) -> socket.socket:
    """A listening socket without SO_REUSEPORT (a second gateway on the port must fail, not share it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=_BACKLOG)
    except OSError as exc:
        raise OSError(f"cannot listen for {what} on {host}:{port}: {exc}") from exc


class CountProtocols:
    """Pure ASGI middleware counting HTTP requests by protocol version (WebSocket counts its own)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._counters = {label: REQUESTS.labels(label) for label in ("http/1.1", "http/2", "other")}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self._counters[_PROTOCOL_LABELS.get(scope.get("http_version", "1.1"), "other")].inc()
        await self._app(scope, receive, send)


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    """What the HTTP servers enforce on WebSocket connections at the protocol level."""

    max_message_bytes: int
    ping_interval_s: float
    ping_timeout_s: float


class Http1Server:
    """uvicorn on one socket, driven by hand so the process keeps its own signal handling."""

    def __init__(self, app: ASGIApp, host: str, port: int, *, drain_s: float, ws: WebSocketLimits) -> None:
        self._socket = listen(host, port, "HTTP")
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            loop="none",
            http="httptools",
            ws="websockets-sansio",
            ws_max_size=ws.max_message_bytes,
            ws_ping_interval=ws.ping_interval_s,
            ws_ping_timeout=ws.ping_timeout_s,
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=int(drain_s) or None,
            backlog=_BACKLOG,
        )
        config.load()
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        self._tick: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._server.startup(sockets=[self._socket])
        self._tick = asyncio.create_task(self._server.main_loop(), name="uvicorn-tick")

    async def stop(self) -> None:
        """Stop accepting, then wait (up to the drain period) for in-flight requests."""
        self._server.should_exit = True
        if self._tick is not None:
            await self._tick
            await self._server.shutdown(sockets=[self._socket])
            self._tick = None
        self._socket.close()


class Http2Server:
    """granian, embedded in the gateway's loop: an h2c listener (prior knowledge, or HTTP/1.1) and/or a TLS 1.3
    listener (ALPN h2, then http/1.1). WebSocket stays on the HTTP/1.1 port, where its limits are enforced."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int | None,
        *,
        tls_port: int | None,
        tls_files: tuple[Path, Path] | None,
        drain_s: float,
    ) -> None:
        self._drain_s = drain_s
        self._servers: list[_EmbeddedGranian] = []
        self.port: int | None = None
        self.tls_port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        try:
            if port is not None:
                server = _EmbeddedGranian(app, listen(host, port, "HTTP/2 (h2c)"), None)
                self.port = server.port
                self._servers.append(server)
            if tls_port is not None and tls_files is not None:
                tls13_context(*tls_files)  # fail at start-up, naming the file, on a bad certificate or key
                server = _EmbeddedGranian(app, listen(host, tls_port, "HTTP/2 (TLS)"), tls_files)
                self.tls_port = server.port
                self._servers.append(server)
        except BaseException:
            for bound in self._servers:
                bound.socket.close()
            raise

    async def start(self) -> None:
        for server in self._servers:
            self._tasks.append(asyncio.create_task(server.serve(), name=f"granian:{server.port}"))
        await asyncio.sleep(0)

    async def stop(self) -> None:
        """Stop accepting; in-flight requests finish (HTTP/2: GOAWAY), bounded by the drain period."""
        for server in self._servers:
            server.stop()  # type: ignore[no-untyped-call]
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self._drain_s or None)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
        for server in self._servers:
            server.socket.close()


class _EmbeddedGranian(GranianServer):
    """granian's embedded server on a socket bound here: port 0 works and no SO_REUSEPORT (granian's own
    bind sets it, which would let a second gateway share the port silently)."""

    def __init__(self, app: ASGIApp, sock: socket.socket, tls_files: tuple[Path, Path] | None) -> None:
        self.socket = sock
        self.port: int = sock.getsockname()[1]
        cert, key = tls_files if tls_files is not None else (None, None)
        super().__init__(
            app,
            interface=Interfaces.ASGINL,  # the gateway's start-up and shutdown are its own, not ASGI lifespan
            http=HTTPModes.auto,
            websockets=False,
            backlog=_BACKLOG,
            ssl_cert=cert,
            ssl_key=key,
            ssl_protocol_min=SSLProtocols.tls13,
            # Incremental: only set granian's logger level (it propagates to ours), leave the process's
            # logging configuration alone; its "embedded server is experimental" warning is known.
            log_dictconfig={"incremental": True, "handlers": {}, "loggers": {"_granian": {"level": "ERROR"}}},
            log_level=LogLevels.error,
        )

    def _init_shared_socket(self) -> None:
        # granian closes the descriptor it is given when it stops, so it gets a duplicate of ours.
        self._ssp = None
        # The type stub lacks the constructor granian's own multi-process server uses: (fd, is_uds, backlog).
        self._shd = SocketHolder(os.dup(self.socket.fileno()), False, _BACKLOG)  # type: ignore[call-arg,assignment]
