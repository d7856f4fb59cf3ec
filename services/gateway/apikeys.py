"""Per-tenant API keys, the alternative to JWTs for programs: shown once, stored only as a hash, revocable.

A key is ``ock_<id>_<secret>``: the id is public (it names the key in lists and logs), the secret is 256 random
bits. Redis keeps SHA-256 of the whole key, not the key: with 256 bits of entropy a fast hash is as safe as a slow
one (GitHub and Stripe do the same) and keeps verification off the CPU budget of a request. Verified keys are
cached for ``cache_s`` seconds, which bounds how long a revoked key keeps working on a replica.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from services.common.envelope import now_ms
from services.common.errors import InvalidInputError, NotFoundError
from services.common.taskstore import check_tenant
from services.gateway.auth import AuthError, Principal

PREFIX = "ock_"
_KEY = re.compile(r"^ock_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
ROLES = frozenset({"admin", "operator", "viewer"})


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What a tenant's admins see of a key: never the secret or its hash."""

    key_id: str
    tenant: str
    name: str
    roles: tuple[str, ...]
    created_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.key_id,
            "name": self.name,
            "roles": list(self.roles),
            "created_ms": self.created_ms,
            "prefix": f"{PREFIX}{self.key_id}_",
        }


def looks_like_api_key(token: str) -> bool:
    """Whether a bearer credential is one of our API keys rather than a JWT."""
    return token.startswith(PREFIX)


class ApiKeyStore:
    """Creates, verifies, lists and revokes API keys; every call is scoped to one tenant."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        *,
        cache_s: float = 30.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._cache_s = cache_s
        self._cache_size = cache_size
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._clock = clock

    def _key(self, key_id: str) -> str:
        return f"{self._ns}:apikey:{key_id}"

    def _index(self, tenant: str) -> str:
        return f"{self._ns}:apikeys:{tenant}"

    async def create(
        self, tenant: str, name: str, roles: Sequence[str] = ("operator",)
    ) -> tuple[ApiKeyInfo, str]:
        """A new key for the tenant; the plaintext is returned once and never stored."""
        check_tenant(tenant)
        if not name or len(name) > 100:
            raise InvalidInputError("name: 1-100 characters", field="name")
        unknown = sorted(set(roles) - ROLES)
        if not roles or unknown:
            raise InvalidInputError(f"roles: choose from {', '.join(sorted(ROLES))}", field="roles")
        key_id = secrets.token_hex(8)
        plaintext = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        info = ApiKeyInfo(key_id, tenant, name, tuple(roles), now_ms())
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._key(key_id),
                mapping={
                    "tenant": tenant,
                    "name": name,
                    "roles": json.dumps(list(roles)),
                    "hash": _digest(plaintext),
                    "created_ms": info.created_ms,
                },
            )
            pipe.sadd(self._index(tenant), key_id)
            await pipe.execute()
        return info, plaintext

    async def verify(self, plaintext: str) -> Principal:
        """The principal an API key stands for; AuthError if it is malformed, unknown or revoked."""
        cached = self._cache.get(plaintext)
        if cached is not None and self._clock() < cached[1]:
            return cached[0]
        match = _KEY.match(plaintext)
        if match is None:
            raise AuthError("malformed", "the API key is not well-formed")
        fields = await self._redis.hmget(self._key(match.group(1)), ["tenant", "roles", "hash"])  # type: ignore[misc]
        tenant, roles, stored = fields  # the gateway's client decodes responses
        if stored is None or not hmac.compare_digest(stored, _digest(plaintext)):
            raise AuthError("invalid_api_key", "the API key is not valid (unknown or revoked)")
        principal = Principal(
            tenant=str(tenant), subject=f"apikey:{match.group(1)}", roles=tuple(json.loads(roles))
        )
        if self._cache_s > 0:
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[plaintext] = (principal, self._clock() + self._cache_s)
        return principal

    async def list_keys(self, tenant: str) -> list[ApiKeyInfo]:
        """The tenant's keys, newest first."""
        ids = sorted(await self._redis.smembers(self._index(tenant)))  # type: ignore[misc]
        out: list[ApiKeyInfo] = []
        for key_id in ids:
            raw = await self._redis.hgetall(self._key(key_id))  # type: ignore[misc]
            if raw:
                data: dict[str, str] = raw
                roles = tuple(json.loads(data["roles"]))
                out.append(ApiKeyInfo(key_id, data["tenant"], data["name"], roles, int(data["created_ms"])))
        return sorted(out, key=lambda info: info.created_ms, reverse=True)

    async def revoke(self, tenant: str, key_id: str) -> None:
        """Delete the key; another tenant's key id is not found, as a missing one is."""
        owner = await self._redis.hget(self._key(key_id), "tenant")  # type: ignore[misc]
        if owner != tenant:
            raise NotFoundError(f"no API key {key_id!r}")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(key_id))
            pipe.srem(self._index(tenant), key_id)
            await pipe.execute()
        self._cache = {k: v for k, v in self._cache.items() if not k.startswith(f"{PREFIX}{key_id}_")}


def _digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()
