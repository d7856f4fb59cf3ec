"""Who may do what at the gateway, the same on every protocol: authenticate, authorize, rate-limit, audit.

Every transport turns its credentials into ``Credentials`` and calls ``Gate.authenticate`` (a JWT, or an API
key as a Bearer token or ``X-API-Key``), then ``Gate.admit`` once per request with the action it is about to
run. Admission checks the tenant is known and enabled, that the caller's roles grant the action's permission
(services/common/tenants.py PERMISSIONS), the tenant's and the API key's rate limits, and the route class's
concurrency; the ``Call`` it returns writes the request's audit record when it finishes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from redis.exceptions import RedisError

from services.common.audit import AuditEvent, AuditLog
from services.common.errors import OpenClawError, PermissionDeniedError, UnavailableError
from services.common.tenants import TenantDirectory, TenantPolicy, permitted
from services.gateway.apikeys import ApiKeyStore, looks_like_api_key
from services.gateway.auth import AuthError, Principal, TokenVerifier, bearer_token
from services.gateway.limits import QueueShedder, RouteClass, RouteLimits, Slot, SlotKind, SlotPool
from services.gateway.metrics import AUDIT_DROPPED, AUTH_FAILURES, FORBIDDEN, RATE_LIMITED, TENANT_REQUESTS
from services.gateway.openai_wire import OpenAIError
from services.gateway.ratelimit import Decision, Quota, RateLimitedError, RateLimiter

_log = logging.getLogger(__name__)

# Every action the gateway serves: the permission it needs and the route class whose concurrency it uses.
ACTIONS: dict[str, tuple[str, RouteClass]] = {
    "tasks.submit": ("tasks.write", "submit"),
    "tasks.get": ("tasks.read", "read"),
    "tasks.watch": ("tasks.read", "read"),
    "tasks.cancel": ("tasks.write", "submit"),
    "tasks.signal": ("signals.write", "submit"),
    "chat.completions": ("chat", "chat"),
    "embeddings": ("chat", "chat"),
    "models.read": ("models.read", "read"),
    "apikeys.create": ("apikeys.manage", "admin"),
    "apikeys.list": ("apikeys.manage", "admin"),
    "apikeys.revoke": ("apikeys.manage", "admin"),
    "audit.read": ("audit.read", "admin"),
}
API_KEY_SUBJECT = "apikey:"
_AUDIT_QUEUE_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presented: an ``Authorization`` value and/or an API key header."""

    authorization: str | None = None
    api_key: str | None = None


class Authenticator:
    """One way in for every protocol: Bearer JWT, or an ``ock_`` API key as Bearer token or X-API-Key."""

    def __init__(
        self,
        verifier: TokenVerifier,
        api_keys: ApiKeyStore | None = None,
        *,
        default_roles: tuple[str, ...] = ("operator",),
    ) -> None:
        self._verifier = verifier
        self._api_keys = api_keys
        self._default_roles = default_roles

    async def authenticate(self, creds: Credentials) -> Principal:
        """The caller; AuthError (401) naming the problem, counted by reason."""
        try:
            return await self._authenticate(creds)
        except AuthError as exc:
            AUTH_FAILURES.labels(exc.reason).inc()
            raise

    async def _authenticate(self, creds: Credentials) -> Principal:
        api_key = (creds.api_key or "").strip()
        if api_key:
            return await self._api_key(api_key)
        token = bearer_token(creds.authorization)
        if looks_like_api_key(token):
            return await self._api_key(token)
        principal = self._verifier.verify(token)
        if not principal.roles:
            return Principal(principal.tenant, principal.subject, self._default_roles)
        return principal

    async def _api_key(self, key: str) -> Principal:
        if self._api_keys is None:
            raise AuthError("api_keys_disabled", "API keys are not accepted by this gateway; use a JWT")
        try:
            return await self._api_keys.verify(key)
        except RedisError as exc:
            raise UnavailableError("API keys cannot be checked right now; retry", retry_after=1) from exc


@dataclass
class Call:
    """One admitted request: its caller, tenant policy and rate decision; audited once when it finishes."""

    gate: Gate
    principal: Principal
    action: str
    protocol: str
    resource: str = ""
    policy: TenantPolicy | None = None
    decision: Decision | None = None
    details: dict[str, Any] = field(default_factory=dict)
    route: RouteClass | None = None
    _finished: bool = False

    def headers(self) -> dict[str, str]:
        """The RateLimit-* headers for an HTTP response."""
        return self.decision.headers() if self.decision is not None else {}

    async def stream_slot(self) -> Slot:
        """A concurrent-stream lease for this tenant (quotas.max_concurrent_streams)."""
        assert self.policy is not None
        return await self.gate.slot(
            "streams", self.principal.tenant, self.policy.quotas.max_concurrent_streams
        )

    async def finish(self, error: BaseException | None = None) -> None:
        """Release the route slot and write the audit record (once): outcome ok, or the error's code."""
        if self._finished:
            return
        self._finished = True
        if self.route is not None:
            self.gate.routes.leave(self.route)
        if isinstance(error, OpenClawError):
            outcome = error.code
        elif isinstance(error, OpenAIError):
            outcome = "invalid_input" if error.status < 500 else "internal"
        elif error is None or isinstance(error, GeneratorExit):
            outcome = "ok"
        else:
            outcome = "cancelled" if type(error).__name__ == "CancelledError" else "internal"
        TENANT_REQUESTS.labels(self.gate.tenants.metric_label(self.principal.tenant), outcome).inc()
        await self.gate.audit(self, outcome)

    async def __aenter__(self) -> Call:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.finish(error)


class Gate:
    """Authorization, rate limits, concurrency and audit for every request, whatever the protocol."""

    def __init__(
        self,
        authenticator: Authenticator,
        tenants: TenantDirectory,
        *,
        limiter: RateLimiter | None,
        audit_log: AuditLog | None,
        slots: SlotPool,
        routes: RouteLimits,
        shedder: QueueShedder | None = None,
        api_key_quota: Quota | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.tenants = tenants
        self.limiter = limiter
        self.audit_log = audit_log
        self.slots = slots
        self.routes = routes
        self.shedder = shedder
        self._api_key_quota = api_key_quota

    async def authenticate(self, creds: Credentials) -> Principal:
        return await self.authenticator.authenticate(creds)

    def policy(self, tenant: str) -> TenantPolicy:
        """The tenant's policy; PermissionDeniedError if it is not registered (closed mode) or disabled."""
        try:
            return self.tenants.policy(tenant)
        except PermissionDeniedError:
            FORBIDDEN.labels("tenant").inc()
            raise

    async def admit(self, principal: Principal, action: str, *, protocol: str, resource: str = "") -> Call:
        """A Call for the action, or the error that refuses it (refusals after authentication are audited)."""
        permission, route = ACTIONS[action]
        call = Call(self, principal, action, protocol, resource)
        try:
            call.policy = self.policy(principal.tenant)
            if not permitted(principal.roles, permission):
                FORBIDDEN.labels("role").inc()
                roles = ", ".join(principal.roles) or "none"
                raise PermissionDeniedError(
                    f"the caller's roles ({roles}) do not grant {permission!r}", permission=permission
                )
        except OpenClawError as exc:
            await call.finish(exc)
            raise
        # Refused floods are counted, not audited: one record per refused request would amplify the flood.
        call.decision = await self._rate(principal, call.policy)
        if action == "tasks.submit" and self.shedder is not None:
            await self.shedder.check()
        self.routes.enter(route)
        call.route = route
        return call

    async def slot(self, kind: SlotKind, tenant: str, limit: int) -> Slot:
        return await self.slots.acquire(kind, tenant, limit)

    async def _rate(self, principal: Principal, policy: TenantPolicy) -> Decision | None:
        if self.limiter is None:
            return None
        quotas = policy.quotas
        tenant_quota = Quota(rate=quotas.requests_per_minute, period_s=60.0, burst=quotas.burst)
        decision = await self._enforce(f"tenant:{principal.tenant}", tenant_quota, "tenant")
        if self._api_key_quota is not None and principal.subject.startswith(API_KEY_SUBJECT):
            key_id = principal.subject.removeprefix(API_KEY_SUBJECT)
            key_decision = await self._enforce(f"key:{key_id}", self._api_key_quota, "api_key")
            if key_decision.remaining < decision.remaining:
                decision = key_decision  # the headers show the tighter of the two budgets
        return decision

    async def _enforce(self, subject: str, quota: Quota, kind: str) -> Decision:
        assert self.limiter is not None
        try:
            return await self.limiter.enforce(subject, quota)
        except RateLimitedError:
            RATE_LIMITED.labels(kind).inc()
            raise

    async def audit(self, call: Call, outcome: str) -> None:
        if self.audit_log is None:
            return
        details = {"protocol": call.protocol, **call.details}
        event = AuditEvent(
            tenant=call.principal.tenant,
            actor=call.principal.subject or "unnamed-subject",
            action=call.action,
            resource=call.resource,
            outcome=outcome,
            service="gateway",
            details=details,
        )
        try:
            # The log waits rather than drops when its writer is far behind (Redis down): bounded here so
            # an outage of the audit store cannot hang every request.
            await asyncio.wait_for(self.audit_log.record(event), _AUDIT_QUEUE_WAIT_S)
        except Exception:  # never fail the request because its record could not be queued
            AUDIT_DROPPED.inc()
            _log.exception("could not queue an audit record", extra={"action": call.action})
