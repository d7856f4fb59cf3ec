"""The executor's composition root: builds every object of the process from settings, with overrides for tests."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import Redis

from services.common import tls
from services.common.audit import AuditLog
from services.common.encryption import Keyring, Sealer
from services.common.hop import Hop
from services.common.ops_server import OpsServer
from services.common.publisher import TaskPublisher
from services.common.redis_client import open_redis
from services.common.router_client import RouterClient
from services.common.taskstore import TaskStore
from services.common.tenants import TenantDirectory, load_file
from services.common.topology import Topology
from services.executor import plugins
from services.executor.context import ChatClient, OpServices
from services.executor.engine import Engine
from services.executor.governance import Governance
from services.executor.ops import Catalogue
from services.executor.ops._postgres import PostgresPools
from services.executor.ops.http import HttpClient
from services.executor.settings import ExecutorSettings
from services.executor.worker import Worker

log = logging.getLogger(__name__)


class ExecutorApp:
    """One executor process: a worker on the task queue, the ops server, and their connections.

    ``await app.start()`` connects and starts consuming; ``await app.stop()`` drains (in-flight tasks get
    ``drain_seconds`` to finish, then are handed back to RabbitMQ) and closes everything it opened.
    """

    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        topology: Topology | None = None,
        catalogue: Catalogue | None = None,
        router: ChatClient | None = None,
        redis: Redis | None = None,
        http: HttpClient | None = None,
    ) -> None:
        self.settings = settings
        self.topology = topology or Topology(settings.namespace, retry_delays_ms=settings.retry_delays_ms)
        self.catalogue = catalogue if catalogue is not None else _default_catalogue(settings)
        self._router_override = router
        self._redis_override = redis
        self._http_override = http
        self._owned: list[Any] = []
        self.redis: Redis | None = None
        self.connection: AbstractRobustConnection | None = None
        self.publisher: TaskPublisher | None = None
        self.router: ChatClient | None = None
        self.http: HttpClient | None = None
        self.worker: Worker | None = None
        self.governance: Governance | None = None
        self.sealer: Sealer | None = None
        # Mutual TLS to the router (None when off); bad files stop start-up here, naming the variable.
        self.tls = tls.load(settings)
        # Probes and scrapers without a client certificate are let in: the ops port serves no tenant's data.
        ops_tls = tls.server_context(self.tls, require_client_cert=False) if self.tls else None
        self.ops = OpsServer(
            settings.metrics_host, settings.metrics_port, self.readiness, ssl_context=ops_tls
        )
        self._started = False

    @property
    def ops_port(self) -> int:
        """The port serving /metrics, /healthz and /readyz (the real one when settings asked for 0)."""
        return self.ops.port

    async def start(self) -> None:
        """Connect to Redis, RabbitMQ and the router, serve the ops port, then start consuming."""
        s = self.settings
        storage_root = s.storage_root.resolve()
        await asyncio.to_thread(storage_root.mkdir, parents=True, exist_ok=True)
        await self.ops.start()
        self.redis = self._redis_override or self._own(open_redis(s.redis_url))
        self.connection = self._own(
            await aio_pika.connect_robust(
                s.amqp_url,
                client_properties={"connection_name": f"{s.service} {socket.gethostname()}:{os.getpid()}"},
            )
        )
        self.publisher = TaskPublisher(self.connection, self.topology)
        self.router = self._router_override or self._own(
            RouterClient(
                s.router_addr, hop_name="executor.router", timeout_s=s.router_timeout_s, tls=self.tls
            )
        )
        self.http = self._http_override or self._own(
            HttpClient(
                allow_private_network=s.allow_private_network,
                max_bytes=s.http_max_bytes,
                timeout_s=s.http_timeout_s,
                s3_max_threads=s.s3_max_threads,
            )
        )
        self.sealer = _sealer(s, self.redis)
        services = OpServices(
            storage_root=storage_root,
            credentials=s.credentials,
            router=self.router,
            http=self.http,
            router_timeout_s=s.router_timeout_s,
            max_output_bytes=s.max_output_bytes,
            redis=self.redis,
            amqp=self.connection,
            namespace=s.namespace,
            sealer=self.sealer,
            postgres=self._own(PostgresPools()),
        )
        self.governance = await self._start_governance(self.redis)
        engine = Engine(
            self.catalogue, services, max_output_bytes=s.max_output_bytes, governance=self.governance
        )
        self.worker = Worker(
            connection=self.connection,
            topology=self.topology,
            store=TaskStore(self.redis, s.namespace, sealer=self.sealer),
            governance=self.governance,
            publisher=self.publisher,
            engine=engine,
            prefetch=s.prefetch,
            max_attempts=s.max_attempts,
            drain_seconds=s.drain_seconds,
            lease_seconds=s.lease_seconds,
            redis_hop=Hop("executor.redis"),
        )
        await self.worker.start()
        self._started = True
        log.info(
            "executor started",
            extra={"namespace": s.namespace, "ops_port": self.ops_port, "router": s.router_addr},
        )

    async def stop(self) -> None:
        """Drain the worker, then close what start() opened (overrides are left to their owner)."""
        if self.worker is not None:
            await self.worker.stop()
        if self.governance is not None:
            await self.governance.stop()  # after the drain: the last operations' audit records are written
        if self.publisher is not None:
            await self.publisher.close()
        for resource in reversed(self._owned):
            try:
                if isinstance(resource, Redis):
                    await resource.aclose()
                else:
                    await resource.close()
            except Exception:
                log.warning("error while closing %s", type(resource).__name__, exc_info=True)
        self._owned.clear()
        await self.ops.stop()
        self._started = False
        log.info("executor stopped")

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready = AMQP connected and consuming, and Redis answering."""
        checks: dict[str, str] = {}
        amqp_ok = self.connection is not None and not self.connection.is_closed
        checks["amqp"] = "ok" if amqp_ok else "down"
        consuming = self.worker is not None and self.worker.consuming
        checks["consumer"] = "consuming" if consuming else "stopped"
        redis_ok = False
        if self.redis is not None:
            try:
                redis_ok = bool(await asyncio.wait_for(self.redis.ping(), timeout=1.0))
            except Exception as exc:
                checks["redis"] = f"down: {type(exc).__name__}"
        if redis_ok:
            checks["redis"] = "ok"
        checks.setdefault("redis", "down")
        return amqp_ok and consuming and redis_ok, checks

    async def _start_governance(self, redis: Redis) -> Governance:
        """The tenants' policies (the gateway's file and admin overrides) and the audit log, started."""
        s = self.settings
        configured, default = load_file(s.tenants_file) if s.tenants_file else ({}, None)
        tenants = TenantDirectory(
            redis, s.namespace, configured=configured, default=default, closed=s.tenants_mode == "closed"
        )
        audit = None
        if s.audit_enabled:
            audit = AuditLog(redis, s.namespace, s.audit_key_bytes(), service="executor")
        governance = Governance(tenants, audit)
        await governance.start()
        return governance

    def _own(self, resource: Any) -> Any:
        self._owned.append(resource)
        return resource


def _sealer(settings: ExecutorSettings, redis: Redis) -> Sealer | None:
    """What encrypts task data at rest: only with master keys configured (never a built-in key)."""
    master = settings.master_key_set()
    if master is None:
        log.warning(
            "encryption at rest is off: task data is stored in plaintext (set OPENCLAW_MASTER_KEYS and "
            "OPENCLAW_MASTER_KEY_ID to encrypt it)"
        )
        return None
    log.info("encryption at rest is on", extra={"master_key_id": master.current})
    return Sealer(Keyring(redis, settings.namespace, master))


def _default_catalogue(settings: ExecutorSettings) -> Catalogue:
    return plugins.catalogue_with(settings.plugins)


def build(settings: ExecutorSettings, **overrides: Any) -> ExecutorApp:
    """The executor app for these settings; overrides: topology, catalogue, router, redis, http."""
    return ExecutorApp(settings, **overrides)
