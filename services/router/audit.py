"""An audit record for every model call the router serves or refuses: who, tenant, model, outcome, tokens, cost.

Written to the same per-tenant hash chains as the gateway's and the executor's records (services/common/audit.py),
so `openclaw audit verify` covers them. Prompts are recorded only when the tenant's policy says so (log_prompts),
and then only the last user message, cut short; nothing else of the request or the answer is kept.
"""

from __future__ import annotations

from typing import Any

from services.common.audit import AuditEvent, AuditLog
from services.common.errors import OpenClawError
from services.common.tenants import TenantDirectory
from services.router.chat import ChatRequest, Route, Usage

PROMPT_CHARS = 500


class ModelCallAudit:
    """Turns one finished (or refused) model call into one audit record."""

    def __init__(self, log: AuditLog, tenants: TenantDirectory | None) -> None:
        self.log = log
        self._tenants = tenants

    def event(
        self,
        *,
        tenant: str,
        action: str,
        model: str,
        user: str = "",
        outcome: str = "ok",
        route: Route | None = None,
        usage: Usage | None = None,
        cost_usd: float | None = None,
        request: ChatRequest | None = None,
    ) -> AuditEvent | None:
        """The record of one call (None for internal calls without a tenant: they belong to no chain)."""
        if not tenant:
            return None
        details: dict[str, Any] = {"priority": getattr(request, "priority", "") or "interactive"}
        if route is not None:
            details.update(deployment=route.deployment, served_by=route.model, cache=route.cache or "")
        if usage is not None:
            details.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)
        if request is not None and self._log_prompts(tenant):
            last = next((m for m in reversed(request.messages) if m.role == "user"), None)
            if last is not None:
                details["prompt"] = str(last.content)[:PROMPT_CHARS]
        return AuditEvent(
            tenant=tenant,
            actor=user or "service",
            action=action,
            resource=f"model:{model}",
            outcome=outcome,
            cost_usd=cost_usd,
            details=details,
        )

    def _log_prompts(self, tenant: str) -> bool:
        if self._tenants is None:
            return False
        try:
            return self._tenants.policy(tenant).log_prompts
        except OpenClawError:
            return False
