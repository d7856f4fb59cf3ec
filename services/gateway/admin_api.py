"""Administration over HTTP: tenants (platform admin), API keys and audit records (each tenant's admins).

``/v1/admin/tenants[/{id}]`` answers only the platform admin token (OPENCLAW_GATEWAY_ADMIN_TOKEN), which no
tenant holds; ``/v1/apikeys`` and ``/v1/audit`` answer a tenant's admins (role ``admin``), for their own tenant
only: another tenant's key id is not found, exactly as a missing one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
from typing import Any

from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from services.common.audit import AuditEvent
from services.common.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from services.common.taskstore import check_tenant
from services.gateway.access import Gate
from services.gateway.apikeys import ApiKeyStore
from services.gateway.auth import AuthError, bearer_token
from services.gateway.http_api import admit, read_json
from services.gateway.metrics import AUTH_FAILURES

PLATFORM_ADMIN = "platform-admin"
MAX_AUDIT_PAGE = 1000
_FLUSH_WAIT_S = 2.0
_CURSOR = re.compile(r"^\d{1,20}-\d{1,20}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


class AdminRoutes:
    """Tenant management for the platform; API keys and audit for each tenant's admins."""

    def __init__(
        self, gate: Gate, api_keys: ApiKeyStore | None, *, admin_token: SecretStr | None, max_body_bytes: int
    ) -> None:
        self._gate = gate
        self._keys = api_keys
        self._token = admin_token.get_secret_value().encode() if admin_token is not None else None
        self._limit = max_body_bytes

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/admin/tenants", self.list_tenants, methods=["GET"]),
            Route("/v1/admin/tenants/{tenant}", self.get_tenant, methods=["GET"]),
            Route("/v1/admin/tenants/{tenant}", self.put_tenant, methods=["PUT"]),
            Route("/v1/admin/tenants/{tenant}", self.delete_tenant, methods=["DELETE"]),
            Route("/v1/apikeys", self.create_key, methods=["POST"]),
            Route("/v1/apikeys", self.list_keys, methods=["GET"]),
            Route("/v1/apikeys/{key_id}", self.revoke_key, methods=["DELETE"]),
            Route("/v1/audit", self.audit, methods=["GET"]),
        ]

    # --- the platform admin: tenants ------------------------------------------------------------------

    def _platform_admin(self, request: Request) -> None:
        if self._token is None:
            raise PermissionDeniedError(
                "the tenant admin API is off: OPENCLAW_GATEWAY_ADMIN_TOKEN is not set"
            )
        token = bearer_token(request.headers.get("authorization"))
        if not hmac.compare_digest(token.encode(), self._token):
            AUTH_FAILURES.labels("invalid_admin_token").inc()
            raise AuthError("invalid_admin_token", "the platform admin token is not valid")

    async def list_tenants(self, request: Request) -> Response:
        self._platform_admin(request)
        tenants = self._gate.tenants
        return JSONResponse(
            {"tenants": [_tenant_body(t, *tenants.defined(t) or ("", None)) for t in tenants.known()]}
        )

    async def get_tenant(self, request: Request) -> Response:
        self._platform_admin(request)
        tenant = request.path_params["tenant"]
        found = self._gate.tenants.defined(tenant)
        if found is None:
            raise NotFoundError(f"no tenant {tenant!r} is defined", tenant=tenant)
        return JSONResponse(_tenant_body(tenant, *found))

    async def put_tenant(self, request: Request) -> Response:
        self._platform_admin(request)
        tenant = request.path_params["tenant"]
        check_tenant(tenant)
        policy = await self._gate.tenants.put(tenant, await read_json(request, self._limit))
        await self._record(tenant, "tenants.put")
        return JSONResponse(_tenant_body(tenant, "admin", policy))

    async def delete_tenant(self, request: Request) -> Response:
        self._platform_admin(request)
        tenant = request.path_params["tenant"]
        check_tenant(tenant)
        await self._gate.tenants.delete(tenant)
        await self._record(tenant, "tenants.delete")
        return Response(status_code=204)

    async def _record(self, tenant: str, action: str) -> None:
        if self._gate.audit_log is not None:
            event = AuditEvent(tenant, PLATFORM_ADMIN, action, f"tenant:{tenant}", service="gateway")
            await self._gate.audit_log.record(event)

    # --- a tenant's admins: API keys and audit ----------------------------------------------------------

    def _store(self) -> ApiKeyStore:
        if self._keys is None:
            raise NotFoundError("API keys are turned off on this gateway (OPENCLAW_API_KEYS_ENABLED)")
        return self._keys

    async def create_key(self, request: Request) -> Response:
        async with await admit(self._gate, request, "apikeys.create") as call:
            body = await read_json(request, self._limit)
            if not isinstance(body, dict) or set(body) - {"name", "roles"}:
                raise InvalidInputError("the body must be an object with 'name' and optionally 'roles'")
            name, roles = body.get("name"), body.get("roles", ["operator"])
            if not isinstance(name, str):
                raise InvalidInputError("name: required, a string of 1-100 characters", field="name")
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise InvalidInputError("roles: a list of role names", field="roles")
            info, plaintext = await self._store().create(call.principal.tenant, name, roles)
            call.resource = f"apikey:{info.key_id}"
            call.details["roles"] = list(info.roles)
            # The only time the key is shown: it is stored as a hash.
            return JSONResponse({**info.to_dict(), "key": plaintext}, status_code=201, headers=call.headers())

    async def list_keys(self, request: Request) -> Response:
        async with await admit(self._gate, request, "apikeys.list") as call:
            keys = await self._store().list_keys(call.principal.tenant)
            return JSONResponse({"keys": [k.to_dict() for k in keys]}, headers=call.headers())

    async def revoke_key(self, request: Request) -> Response:
        key_id = request.path_params["key_id"]
        async with await admit(self._gate, request, "apikeys.revoke", f"apikey:{key_id}") as call:
            if not _KEY_ID.match(key_id):
                raise NotFoundError(f"no API key {key_id!r}")
            await self._store().revoke(call.principal.tenant, key_id)
            return Response(status_code=204, headers=call.headers())

    async def audit(self, request: Request) -> Response:
        """The caller's tenant's audit records as JSON lines, oldest first, from ``after`` (a cursor)."""
        async with await admit(self._gate, request, "audit.read") as call:
            log = self._gate.audit_log
            if log is None:
                raise NotFoundError("audit is turned off on this gateway (OPENCLAW_AUDIT_ENABLED)")
            after = request.query_params.get("after", "")
            if after and not _CURSOR.match(after):
                raise InvalidInputError(f"after: not a cursor from an earlier page: {after!r}", field="after")
            limit = _int_param(request.query_params.get("limit"), "limit", 100, 1, MAX_AUDIT_PAGE)
            # This replica's queued records first, so a reader sees its own requests (bounded: Redis may lag).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(log.flush(), _FLUSH_WAIT_S)
            records, cursor = await log.page(call.principal.tenant, after=after, limit=limit)
            body = "".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in records)
            headers = dict(call.headers())
            if cursor:
                headers["OpenClaw-Next-After"] = cursor
            return Response(body, media_type="application/x-ndjson", headers=headers)


def _tenant_body(tenant: str, source: str, policy: Any) -> dict[str, Any]:
    return {"id": tenant, "source": source, "policy": policy.model_dump(mode="json") if policy else None}


def _int_param(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidInputError(f"{name}: an integer from {low} to {high}, got {raw!r}", field=name)
    return int(raw)
