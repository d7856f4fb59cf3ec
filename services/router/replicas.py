"""What router replicas share through Redis, and the watched model file: built from the settings, started before
the server takes calls (so a new replica serves the shared table from its first request) and stopped after it.

- the model table (``TableSync``): admin calls and file reloads on any replica apply to every replica;
- circuit breakers (``BreakerSync``): a deployment found down by one replica is skipped by all of them;
- tenant quotas (``QuotaLeases``) and policies (``TenantDirectory``): budgets hold across replicas.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from redis.asyncio import Redis

from services.common.breaker_sync import BreakerSync
from services.common.redis_client import open_redis
from services.common.tenants import TenantDirectory, TenantPolicy, load_file
from services.router.qos import QuotaLeases
from services.router.registry import ModelSpec, Registry, SpecContext
from services.router.settings import RouterSettings
from services.router.table_sync import TableSync
from services.router.watch import ModelFileWatcher

log = logging.getLogger(__name__)


class SharedState:
    """The router's links to the other replicas and to its model file; each part is optional."""

    def __init__(
        self,
        *,
        table_sync: TableSync | None = None,
        breaker_sync: BreakerSync | None = None,
        tenants: TenantDirectory | None = None,
        quotas: QuotaLeases | None = None,
        watcher: ModelFileWatcher | None = None,
        closers: list[Callable[[], Awaitable[None]]] | None = None,
    ) -> None:
        self.table_sync = table_sync
        self.breaker_sync = breaker_sync
        self.tenants = tenants
        self.quotas = quotas
        self.watcher = watcher
        self._closers = closers or []

    async def start(self) -> None:
        """Adopt the shared table and breakers, load tenants, start watching the file."""
        if self.tenants is not None:
            await self.tenants.start()
        if self.table_sync is not None:
            await self.table_sync.start()
        if self.breaker_sync is not None:
            await self.breaker_sync.start()
        if self.watcher is not None:
            await self.watcher.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
        if self.breaker_sync is not None:
            await self.breaker_sync.stop()
        if self.table_sync is not None:
            await self.table_sync.stop()
        if self.tenants is not None:
            await self.tenants.stop()
        for close in self._closers:
            await close()


def build_shared(
    settings: RouterSettings, registry: Registry, ctx: SpecContext, *, redis: Redis | None = None
) -> SharedState:
    """The shared state the settings ask for (``shared_state``, ``tenants_file``, a watched ``models`` file)."""
    closers: list[Callable[[], Awaitable[None]]] = []
    shared_redis: Redis | None = None
    if settings.shared_state:
        shared_redis = redis
        if shared_redis is None:
            shared_redis = open_redis(settings.redis_url)
            closers.append(shared_redis.aclose)
    tenants: TenantDirectory | None = None
    if settings.tenants_file is not None or shared_redis is not None:
        configured: dict[str, TenantPolicy] = {}
        default: TenantPolicy | None = None
        if settings.tenants_file is not None:
            configured, default = load_file(settings.tenants_file)
        tenants = TenantDirectory(
            shared_redis,
            settings.namespace,
            configured=configured,
            default=default,
            closed=settings.tenants_mode == "closed",
        )
    state = SharedState(tenants=tenants, closers=closers)
    if shared_redis is not None:
        state.table_sync = TableSync(registry, shared_redis, settings.namespace)
        state.breaker_sync = BreakerSync(shared_redis, settings.namespace)
        state.quotas = QuotaLeases(shared_redis, settings.namespace)
    if settings.models and settings.models_watch_seconds > 0:
        state.watcher = ModelFileWatcher(
            Path(settings.models), ctx, _applier(registry, state), interval_s=settings.models_watch_seconds
        )
    return state


def _applier(registry: Registry, state: SharedState) -> Callable[[list[ModelSpec]], Awaitable[object]]:
    async def apply(specs: list[ModelSpec]) -> object:
        if state.table_sync is not None:
            return await state.table_sync.replace(specs)
        return registry.replace(specs)

    return apply
