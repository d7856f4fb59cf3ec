"""Governance inside the executor: each tenant's policy checked again at run time, and an audit record of every
operation run and agent tool call.

The gateway checks a workflow against the tenant's policy when it is submitted; the executor checks again (the
policy may have changed since, a called template may name other operations, a message may not come from the
gateway), and runs every operation inside the tenant's network policy. Audit records say who (the task's
submitter, else the task), what (``op.<name>``), where (``task:<id>/step:<key>``), how it went and how long it
took; never parameters (they may hold secrets), and prompts only if the tenant's policy says so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from services.common.audit import AuditEvent, AuditLog
from services.common.errors import OpenClawError, PermissionDeniedError
from services.common.tenants import TenantDirectory, TenantPolicy
from services.executor.model import Workflow, walk_steps
from services.executor.ops.http import tenant_network

T = TypeVar("T")
log = logging.getLogger(__name__)
_OPEN = TenantPolicy()
# Parameters that carry a prompt: recorded only for tenants whose policy sets log_prompts.
_PROMPT_PARAMS = ("prompt", "messages", "instructions", "system")
PROMPT_CHARS = 4000
"""A prompt longer than this is cut in its audit record."""


def operations_of(workflow: Workflow) -> set[str]:
    """Every operation a workflow may run: its operation steps at any depth, inline called workflows' and the
    tools its agent steps offer (templates called by name are checked when their steps run)."""
    out: set[str] = set()
    for step in walk_steps(workflow.steps):
        if not step.is_control:
            out.add(step.type)
        if step.workflow is not None:
            out |= operations_of(step.workflow)
        tools = (step.agent or {}).get("tools")
        if isinstance(tools, list):
            out.update(t for t in tools if isinstance(t, str))
    return out


class Governance:
    """The tenants' policies (as the gateway reads them) and the audit log, for the engine and the worker."""

    def __init__(self, tenants: TenantDirectory | None = None, audit: AuditLog | None = None) -> None:
        self.tenants = tenants
        self.audit = audit

    async def start(self) -> None:
        if self.tenants is not None:
            await self.tenants.start()
        if self.audit is not None:
            await self.audit.start()

    async def stop(self) -> None:
        """Stop refreshing policies; write every audit record still queued."""
        if self.tenants is not None:
            await self.tenants.stop()
        if self.audit is not None:
            await self.audit.stop()

    def policy(self, tenant: str) -> TenantPolicy:
        """The tenant's policy; PermissionDeniedError if it is not registered (closed mode) or disabled."""
        return self.tenants.policy(tenant) if self.tenants is not None else _OPEN

    def check_workflow(self, tenant: str, workflow: Workflow) -> None:
        """PermissionDeniedError naming every operation of the workflow the tenant may not use."""
        self.policy(tenant).check_operations(operations_of(workflow))

    async def refused(self, tenant: str, task_id: str, actor: str, error: OpenClawError) -> None:
        """Audit a task refused before it ran (its tenant's policy forbids it)."""
        await self._record(
            AuditEvent(
                tenant=tenant,
                actor=actor or f"task:{task_id}",
                action="task.run",
                resource=f"task:{task_id}",
                outcome="denied",
                service="executor",
                details={"error_code": error.code, "message": error.message[:500]},
            )
        )

    async def run_op(
        self,
        name: str,
        call: Callable[[], Awaitable[T]],
        *,
        tenant: str,
        task_id: str,
        step_id: str,
        attempt: int,
        actor: str = "",
        via: str = "step",
        params: Mapping[str, Any] | None = None,
    ) -> T:
        """Run one operation for ``tenant``: refused (permission_denied, naming it) unless the policy allows it,
        inside the tenant's network policy, and audited however it ends. ``params`` (read after the call, so
        the caller may fill it in as it resolves them) is consulted only for prompts, if the policy allows."""
        start = time.perf_counter()
        outcome, error_code = "ok", ""
        policy: TenantPolicy | None = None
        try:
            policy = self.policy(tenant)
            if not policy.allows_operation(name):
                raise PermissionDeniedError(
                    f"operation {name!r} is not allowed for tenant {tenant!r}", operation=name
                )
            with tenant_network(policy.network):
                return await call()
        except OpenClawError as exc:
            outcome = "denied" if isinstance(exc, PermissionDeniedError) else "error"
            error_code = exc.code
            raise
        except BaseException as exc:
            outcome, error_code = (
                "error",
                "cancelled" if type(exc).__name__ == "CancelledError" else "internal",
            )
            raise
        finally:
            if self.audit is not None:
                details: dict[str, Any] = {
                    "operation": name,
                    "via": via,
                    "attempt": attempt,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                }
                if error_code:
                    details["error_code"] = error_code
                if policy is not None and policy.log_prompts and params:
                    details.update(_prompts(params))
                await self._record(
                    AuditEvent(
                        tenant=tenant,
                        actor=actor or f"task:{task_id}",
                        action=f"op.{name}",
                        resource=f"task:{task_id}/step:{step_id}",
                        outcome=outcome,
                        service="executor",
                        details=details,
                    )
                )

    async def _record(self, event: AuditEvent) -> None:
        if self.audit is None:
            return
        try:
            await self.audit.record(event)
        except Exception:  # an operation's outcome must not depend on whether its record could be queued
            log.exception("could not queue an audit record", extra={"action": event.action})


def _prompts(params: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt-like parameters of an operation (for tenants that allow prompts in their audit records)."""
    out: dict[str, Any] = {}
    for name in _PROMPT_PARAMS:
        value = params.get(name)
        if value is None or value == "" or value == []:
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        out[name] = text if len(text) <= PROMPT_CHARS else text[:PROMPT_CHARS] + "[... cut]"
    return out
