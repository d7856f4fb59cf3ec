"""Tenants: who may use what. Defined in a config file, changed at run time through the admin API (kept in Redis).

A tenant's policy says which models, operations and chat channels it may use, which network targets its HTTP
operations may reach, its quotas, and whether prompts may appear in its audit records. Every service reads the
same directory; a tenant id always comes from a verified credential, never from a request body.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import ipaddress
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.asyncio import Redis

from services.common.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from services.common.taskstore import check_tenant

log = logging.getLogger(__name__)

# What each role may do; a token's roles claim names roles, the tenant comes from its tenant claim.
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"tasks.read", "models.read"}),
    "operator": frozenset({"tasks.read", "models.read", "tasks.write", "chat", "signals.write"}),
    "admin": frozenset(
        {"tasks.read", "models.read", "tasks.write", "chat", "signals.write", "apikeys.manage", "audit.read"}
    ),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkPolicy(_Strict):
    """Where HTTP operations may connect: public hosts always (unless restricted), private ranges only if listed."""

    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="Host patterns ('*.example.com') or CIDRs; empty: any public host."
    )
    allow_private: tuple[str, ...] = Field(
        default=(), description="Private/loopback CIDRs this tenant may reach (e.g. an internal API)."
    )

    @field_validator("allow_private")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a CIDR (e.g. 10.1.0.0/16)") from None
        return value

    def allows(self, host: str, address: str, *, public: bool) -> bool:
        """Whether an HTTP operation may connect to ``host`` resolved to ``address`` (public per the SSRF guard)."""
        ip = ipaddress.ip_address(address)
        if not public and not any(ip in ipaddress.ip_network(c, strict=False) for c in self.allow_private):
            return False
        if not self.allowed_hosts:
            return True
        host = host.lower().rstrip(".")
        for pattern in self.allowed_hosts:
            if "/" in pattern:
                if ip in ipaddress.ip_network(pattern, strict=False):
                    return True
            elif fnmatch.fnmatchcase(host, pattern.lower()):
                return True
        return False


class Quotas(_Strict):
    """Budgets enforced by the gateway (requests) and the router's admission stage (tokens, spend)."""

    requests_per_minute: int = Field(default=600, ge=1, le=10_000_000)
    burst: int = Field(
        default=0, ge=0, le=10_000_000, description="Requests allowed at once; 0: the per-minute rate."
    )
    tokens_per_minute: int = Field(default=0, ge=0, le=10**12, description="0: unlimited.")
    spend_usd_per_day: float = Field(default=0.0, ge=0, le=10**9, description="0: unlimited.")
    max_concurrent_streams: int = Field(default=64, ge=1, le=100_000)
    max_websocket_connections: int = Field(default=100, ge=1, le=1_000_000)


class TenantPolicy(_Strict):
    """One tenant's access policy and quotas; lists are fnmatch patterns, '*' allows everything."""

    name: str = Field(default="", max_length=200)
    models: tuple[str, ...] = ("*",)
    operations: tuple[str, ...] = ("*",)
    denied_operations: tuple[str, ...] = ()
    channels: tuple[str, ...] = ("*",)
    network: NetworkPolicy = NetworkPolicy()
    quotas: Quotas = Quotas()
    log_prompts: bool = Field(
        default=False, description="Whether prompts may appear in this tenant's audit records."
    )
    disabled: bool = False

    def allows_model(self, model: str) -> bool:
        return _matches(model, self.models)

    def allows_operation(self, op: str) -> bool:
        return _matches(op, self.operations) and not _matches(op, self.denied_operations)

    def allows_channel(self, channel: str) -> bool:
        return _matches(channel, self.channels)

    def check_operations(self, ops: set[str]) -> None:
        """PermissionDeniedError naming every operation of a workflow the policy refuses."""
        refused = sorted(op for op in ops if not self.allows_operation(op))
        if refused:
            raise PermissionDeniedError(
                f"operations not allowed for this tenant: {', '.join(refused)}", operations=refused
            )

    def check_model(self, model: str) -> None:
        if not self.allows_model(model):
            raise PermissionDeniedError(f"model {model!r} is not allowed for this tenant", model=model)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def permitted(roles: tuple[str, ...], permission: str) -> bool:
    """Whether any of the roles grants the permission (unknown roles grant nothing)."""
    return any(permission in PERMISSIONS.get(role, ()) for role in roles)


def parse_policy(tenant: str, raw: Any) -> TenantPolicy:
    """A validated policy; InvalidInputError naming every bad field by its path."""
    try:
        return TenantPolicy.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(policy)'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidInputError(f"tenant {tenant!r}: {problems}", tenant=tenant) from None


def load_file(path: Path) -> tuple[dict[str, TenantPolicy], TenantPolicy | None]:
    """Tenants and the default policy from YAML (``tenants: {id: policy}``, ``default: policy`` or absent)."""
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict) or set(doc) - {"tenants", "default"}:
        raise InvalidInputError(f"{path}: expected a mapping with 'tenants' and optionally 'default'")
    tenants: dict[str, TenantPolicy] = {}
    for tenant, raw in (doc.get("tenants") or {}).items():
        check_tenant(str(tenant))
        tenants[str(tenant)] = parse_policy(str(tenant), raw)
    default = parse_policy("default", doc["default"]) if doc.get("default") is not None else None
    return tenants, default


class TenantDirectory:
    """The policy of every tenant: the config file's, overridden by the admin API's, refreshed in the background.

    In a closed deployment, tenants that are not defined are refused; in an open one (the development default)
    they get the default policy.
    """

    def __init__(
        self,
        redis: Redis | None,
        namespace: str,
        *,
        configured: Mapping[str, TenantPolicy] | None = None,
        default: TenantPolicy | None = None,
        closed: bool = False,
        refresh_s: float = 5.0,
    ) -> None:
        self._redis = redis
        self._key = f"{namespace}:tenants"
        self._configured = dict(configured or {})
        self._default = None if closed else (default or TenantPolicy())
        self._overrides: dict[str, TenantPolicy] = {}
        self._refresh_s = refresh_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the admin API's policies and keep them fresh; a Redis outage now only delays them."""
        try:
            await self.refresh()
        except Exception as exc:  # the config file's policies apply until the background refresh succeeds
            log.warning(
                "tenant policies not read at start; retrying in the background", extra={"error": str(exc)}
            )
        self._task = asyncio.create_task(self._refresher(), name="tenants-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def policy(self, tenant: str) -> TenantPolicy:
        """The tenant's policy; PermissionDeniedError if it is unknown in a closed deployment, or disabled."""
        policy = self._overrides.get(tenant) or self._configured.get(tenant) or self._default
        if policy is None:
            raise PermissionDeniedError(f"tenant {tenant!r} is not registered", tenant=tenant)
        if policy.disabled:
            raise PermissionDeniedError(f"tenant {tenant!r} is disabled", tenant=tenant)
        return policy

    def metric_label(self, tenant: str) -> str:
        """The tenant as a metric label: defined tenants by name, every other one as "other" (labels stay bounded)."""
        return tenant if tenant in self._overrides or tenant in self._configured else "other"

    def known(self) -> list[str]:
        return sorted(set(self._configured) | set(self._overrides))

    def defined(self, tenant: str) -> tuple[str, TenantPolicy] | None:
        """Where a tenant's policy comes from ('admin' API or 'config' file) and the policy, disabled or not."""
        if tenant in self._overrides:
            return "admin", self._overrides[tenant]
        if tenant in self._configured:
            return "config", self._configured[tenant]
        return None

    async def put(self, tenant: str, raw: Any) -> TenantPolicy:
        """Create or replace a tenant's policy (admin API); a bad policy changes nothing."""
        check_tenant(tenant)
        policy = parse_policy(tenant, raw)
        await self._require_redis().hset(self._key, tenant, policy.model_dump_json())  # type: ignore[misc]
        self._overrides[tenant] = policy
        return policy

    async def delete(self, tenant: str) -> None:
        """Remove the admin API's policy for a tenant (the config file's, if any, applies again)."""
        removed = await self._require_redis().hdel(self._key, tenant)  # type: ignore[misc]
        if not removed:
            raise NotFoundError(f"no tenant {tenant!r} defined through the admin API")
        self._overrides.pop(tenant, None)

    async def refresh(self) -> None:
        if self._redis is None:
            return
        raw: dict[str, str] = await self._redis.hgetall(self._key)  # type: ignore[misc]
        overrides = {}
        for tenant, doc in raw.items():
            try:
                overrides[tenant] = TenantPolicy.model_validate(json.loads(doc))
            except (ValueError, ValidationError) as exc:  # written by a newer version? keep serving the rest
                log.error("ignoring an unreadable tenant policy", extra={"tenant": tenant, "error": str(exc)})
        self._overrides = overrides

    async def _refresher(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("tenant refresh failed; keeping the current policies", extra={"error": str(exc)})

    def _require_redis(self) -> Redis:
        if self._redis is None:
            raise InvalidInputError("tenants cannot be changed at run time without Redis")
        return self._redis
