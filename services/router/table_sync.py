"""One model table for every router replica: changes go through Redis and every replica swaps to them.

A change (an admin call on any replica, or a reloaded config file) is applied to the shared table with
compare-and-set on its version, then announced; each replica validates the new table and swaps it in atomically,
so requests in flight finish on the table they started with. A table that does not validate changes nothing
anywhere: the change is refused before it is written, and a replica that cannot load a written one (a newer
format, a missing key variable) keeps serving the old one and says so. Literal API keys are stored sealed
(``services.common.encryption``) or not at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from redis.asyncio import Redis

from services.common.encryption import Sealer
from services.common.errors import InvalidInputError, UnavailableError
from services.common.subscription import Subscription
from services.router.registry import ModelSpec, Registry, build_spec, spec_config, validate_table

log = logging.getLogger(__name__)
T = TypeVar("T")
_SEAL_TENANT = "_router"

# KEYS[1] the table; ARGV[1] the version the change was based on, ARGV[2] the new document, ARGV[3] the channel,
# ARGV[4] the new version. 1 when written, 0 when another replica changed the table first.
_CAS = """
local cur = redis.call('HGET', KEYS[1], 'version')
if (cur or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[4], 'doc', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""


class TableSync:
    """Applies model-table changes through Redis and follows the other replicas' changes."""

    def __init__(
        self, registry: Registry, redis: Redis, namespace: str, *, sealer: Sealer | None = None
    ) -> None:
        self._registry = registry
        self._redis = redis
        self._key = f"{namespace}:models:table"
        self._channel = f"{namespace}:models:changed"
        self._sealer = sealer
        self._cas = redis.register_script(_CAS)
        self.version = 0
        self._subscription = Subscription(
            redis, self._channel, self._on_message, name="model-table-sync", on_resubscribed=self._catch_up
        )
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Adopt the shared table, or share ours if there is none yet; then follow changes."""
        await self._subscription.start()  # subscribed first: no change between the load and now is missed
        if not await self._load():
            doc = await self._document(list(self._registry.snapshot.models.values()))
            if await self._cas(keys=[self._key], args=["0", doc, self._channel, "1"]):
                self.version = 1
            else:
                await self._load()

    async def stop(self) -> None:
        await self._subscription.stop()

    async def change(self, mutate: Callable[[Registry], T]) -> T:
        """Apply ``mutate`` (e.g. ``lambda r: r.add(data)``) to the shared table; its errors change nothing."""
        for _ in range(20):
            version, specs = await self._read()
            scratch = Registry(specs, ctx=self._registry.ctx)
            result = mutate(scratch)
            new_specs = list(scratch.snapshot.models.values())
            doc = await self._document(new_specs)
            if await self._cas(keys=[self._key], args=[str(version), doc, self._channel, str(version + 1)]):
                async with self._lock:
                    self._install(version + 1, new_specs)
                return result
        raise UnavailableError("the model table is changing too fast to apply this change; retry")

    async def replace(self, specs: list[ModelSpec]) -> bool:
        """Share a whole table (a reloaded file); False when the shared one already equals it."""
        validate_table(specs)
        _, current = await self._read()
        if _fingerprint(current) == _fingerprint(specs):
            return False
        await self.change(lambda r: r.replace(specs))
        return True

    async def _read(self) -> tuple[int, list[ModelSpec]]:
        raw: dict[str, str] = await self._redis.hgetall(self._key)  # type: ignore[misc]
        if not raw:
            return 0, list(self._registry.snapshot.models.values())
        return int(raw["version"]), await self._parse(raw["doc"])

    async def _load(self) -> bool:
        """Install the shared table if it is newer than ours; False if there is none."""
        async with self._lock:
            raw: dict[str, str] = await self._redis.hgetall(self._key)  # type: ignore[misc]
            if not raw:
                return False
            version = int(raw["version"])
            if version <= self.version:
                return True
            try:
                specs = await self._parse(raw["doc"])
                validate_table(specs)
            except Exception as exc:
                log.error(
                    "cannot load the shared model table; still serving the previous one",
                    extra={"version": version, "error": str(exc)},
                )
                return True
            self._install(version, specs)
            return True

    def _install(self, version: int, specs: list[ModelSpec]) -> None:
        if version > self.version:
            self._registry.replace(specs)
            self.version = version
            log.info("model table installed", extra={"version": version, "models": len(specs)})

    async def _on_message(self, data: str) -> None:
        await self._load()

    async def _catch_up(self) -> None:
        await self._load()  # after a lost subscription: what was missed

    async def _document(self, specs: list[ModelSpec]) -> str:
        models = []
        for spec in specs:
            config: dict[str, Any] = dict(spec_config(spec))
            config["api_key"] = await self._seal(spec.name, config["api_key"], f"model:{spec.name}")
            deployments = [dict(d) for d in config["deployments"]]
            for index, d in enumerate(deployments):
                if d.get("api_key"):
                    label = f"model:{spec.name}/{d.get('name', index)}"
                    d["api_key"] = await self._seal(spec.name, d["api_key"], label)
            config["deployments"] = deployments
            models.append(config)
        return json.dumps({"models": models}, default=list, sort_keys=True)

    async def _seal(self, model: str, key: str, label: str) -> str:
        if not key:
            return ""
        if self._sealer is None:
            raise InvalidInputError(
                f"model {model!r}: a literal api_key cannot be shared between router replicas without "
                "encryption at rest (configure master keys), use api_key_env instead",
                model=model,
            )
        return await self._sealer.seal_text(_SEAL_TENANT, key, label)

    async def _open(self, sealed: str, label: str) -> str:
        if not sealed:
            return ""
        if self._sealer is None:
            raise InvalidInputError(
                "the shared model table holds sealed keys but no master key is configured"
            )
        return await self._sealer.open_text(_SEAL_TENANT, sealed, label)

    async def _parse(self, doc: str) -> list[ModelSpec]:
        specs = []
        for config in json.loads(doc)["models"]:
            name = config["name"]
            config["api_key"] = await self._open(config.get("api_key", ""), f"model:{name}")
            for index, d in enumerate(config.get("deployments", ())):
                if d.get("api_key"):
                    d["api_key"] = await self._open(d["api_key"], f"model:{name}/{d.get('name', index)}")
            specs.append(build_spec(config, self._registry.ctx))
        return specs


def _fingerprint(specs: list[ModelSpec]) -> str:
    rows = sorted(json.dumps(spec_config(s), default=list, sort_keys=True) for s in specs)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()
