"""Composition root of the router process: settings in, a started gRPC server (and ops endpoint) out."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import grpc
from grpc_health.v1 import health
from opentelemetry import trace
from redis.asyncio import Redis

from services.common import rpc, tls
from services.common.ops_server import OpsServer
from services.router.pipeline import Pipeline, build_pipeline
from services.router.providers import HttpPool, ProviderAdapter, build_adapters
from services.router.registry import ModelSpec, Registry, SpecContext, load_models
from services.router.replicas import SharedState, build_shared
from services.router.routing import Router, RoutingPolicy
from services.router.servicer import SERVICE, AdminAccess, RouterServicer, add_to_server, is_loopback
from services.router.settings import RouterSettings

log = logging.getLogger(__name__)

_SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),  # a second router on the same port must fail, not share it
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


def spec_context(settings: RouterSettings, env: Mapping[str, str]) -> SpecContext:
    """What model definitions resolve against: the environment, with the settings' keys and simulator."""
    merged = dict(env)
    merged["OPENCLAW_SIMULATOR_URL"] = settings.simulator_url.rstrip("/")
    merged["OPENAI_API_KEY"] = settings.openai_api_key.get_secret_value()
    merged["ANTHROPIC_API_KEY"] = settings.anthropic_api_key.get_secret_value()
    return SpecContext(
        env=merged, simulator_url=settings.simulator_url, api_key_env_pattern=settings.api_key_env_pattern
    )


def admin_access(settings: RouterSettings) -> AdminAccess:
    """Who may call AddModel, UpdateModel and RemoveModel (see docs/router.md, "Admin access")."""
    token = settings.admin_token.get_secret_value().encode() if settings.admin_token is not None else None
    return AdminAccess(token=token, loopback=is_loopback(settings.listen))


class RouterApp:
    """The router process: ``await start()``, serve, ``await stop(grace)``.

    ``port`` (the gRPC port) and ``metrics_port`` are known after start, so tests can listen on port 0.
    """

    def __init__(
        self,
        settings: RouterSettings,
        registry: Registry,
        router: Router,
        pool: HttpPool,
        *,
        ops: bool = True,
        pipeline: Pipeline | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self.settings = settings
        # Mutual TLS (None when off); bad files stop the build with a message naming the variable.
        self.tls = tls.load(settings)
        self.registry = registry
        self.router = router
        self.pool = pool
        self.pipeline = pipeline or build_pipeline(settings, router)
        self.shared = shared or SharedState()
        self.servicer = RouterServicer(
            router,
            registry,
            admin=admin_access(settings),
            pipeline=self.pipeline,
            table_sync=self.shared.table_sync,
        )
        self._ops_enabled = ops
        self.ops: OpsServer | None = None
        self.server: grpc.aio.Server | None = None
        self._health: health.HealthServicer | None = None
        self._port = 0
        self._stopped = False

    @property
    def port(self) -> int:
        """The gRPC port the server listens on (after start)."""
        if not self._port:
            raise RuntimeError("RouterApp.start() has not completed")
        return self._port

    @property
    def address(self) -> str:
        """host:port clients dial (after start)."""
        host = self.settings.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    @property
    def metrics_port(self) -> int:
        """The port of /metrics, /healthz and /readyz (after start; 0 when disabled)."""
        return self.ops.port if self.ops is not None else 0

    async def start(self) -> None:
        """Open the HTTP pool, bind and start the gRPC server and the ops endpoint."""
        tls_files = self.tls
        await self.pool.start()
        await self.shared.start()  # the shared table and breakers are in force before the first call
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        add_to_server(self.servicer, server)
        self._health = rpc.add_health_and_reflection(server, [SERVICE])
        try:
            port = (
                server.add_secure_port(self.settings.listen, tls.server_credentials(tls_files))
                if tls_files is not None
                else server.add_insecure_port(self.settings.listen)
            )
        except RuntimeError as exc:
            await self.pool.close()
            raise RuntimeError(f"cannot listen on {self.settings.listen}: {exc}") from exc
        await server.start()
        self.server, self._port = server, port
        if self._ops_enabled:
            # Probes and scrapers without a client certificate are let in: the ops port serves no tenant's data.
            context = tls.server_context(tls_files, require_client_cert=False) if tls_files else None
            ops = OpsServer(
                self.settings.metrics_host, self.settings.metrics_port, self._readiness, ssl_context=context
            )
            try:
                await ops.start()
            except OSError as exc:
                await server.stop(None)
                await self.pool.close()
                where = f"{self.settings.metrics_host}:{self.settings.metrics_port}"
                raise RuntimeError(f"cannot serve metrics on {where}: {exc}") from exc
            self.ops = ops
        self.pipeline.start()
        table = self.registry.snapshot
        log.info(
            "router listening",
            extra={
                "address": self.address,
                "metrics_port": self.metrics_port,
                "models": sorted(table.models),
                "simulated": sorted(n for n, s in table.models.items() if s.simulated),
                "version": table.version,
                "admin": self._admin_mode(),
                "mtls": tls_files is not None,
            },
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING, let in-flight calls finish within ``grace``, close connections."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.settings.drain_seconds if grace is None else grace
        if self._health is not None:
            rpc.set_not_serving(self._health, [SERVICE])
        if self.server is not None:
            await self.server.stop(grace)
        await self.pipeline.close()
        await self.shared.stop()
        await self.pool.close()
        if self.ops is not None:
            await self.ops.stop()
        provider = trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            flush(5000)
        log.info("router stopped")

    async def wait(self) -> None:
        """Until the server terminates."""
        if self.server is not None:
            await self.server.wait_for_termination()

    def _admin_mode(self) -> str:
        if self.settings.admin_token is not None:
            return "bearer token"
        if is_loopback(self.settings.listen):
            return "open on loopback"
        return "disabled (set OPENCLAW_ROUTER_ADMIN_TOKEN)"

    async def _readiness(self) -> tuple[bool, dict[str, str]]:
        serving = self.server is not None and not self._stopped
        models = len(self.registry.snapshot)
        return serving and models > 0, {"grpc": "serving" if serving else "stopped", "models": str(models)}


def build(
    settings: RouterSettings | None = None,
    *,
    specs: list[ModelSpec] | None = None,
    registry: Registry | None = None,
    adapters: Mapping[str, ProviderAdapter] | None = None,
    pool: HttpPool | None = None,
    env: Mapping[str, str] | None = None,
    ops: bool = True,
    redis: Redis | None = None,
) -> RouterApp:
    """Wire the router; every part can be overridden by tests. Raises ModelConfigError on a bad table."""
    settings = settings or RouterSettings()  # type: ignore[call-arg]
    ctx = spec_context(settings, os.environ if env is None else env)
    if registry is None:
        registry = Registry(specs if specs is not None else load_models(settings.models, ctx), ctx=ctx)
    pool = pool or HttpPool()
    policy = RoutingPolicy(
        queue_timeout_s=settings.queue_timeout_seconds,
        max_queue=settings.max_queue,
        breaker_fail_max=settings.breaker_fail_max,
        breaker_reset_s=settings.breaker_reset_seconds,
        retry_ratio=settings.retry_budget_ratio,
        default_priority=settings.default_priority,
    )
    shared = build_shared(settings, registry, ctx, redis=redis)
    router = Router(
        registry,
        adapters if adapters is not None else build_adapters(pool),
        policy,
        tenants=shared.tenants,
        quotas=shared.quotas,
        breaker_sync=shared.breaker_sync,
    )
    return RouterApp(
        settings,
        registry,
        router,
        pool,
        ops=ops,
        pipeline=build_pipeline(settings, router, redis=redis),
        shared=shared,
    )
