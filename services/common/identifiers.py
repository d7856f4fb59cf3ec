"""Tenant and task ids: both become Redis key segments, so only a safe alphabet and no reserved word."""

from __future__ import annotations

import re

from services.common.errors import InvalidInputError

_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Words used as the first segment of deployment-wide keys (``{ns}:audit:...``, ``{ns}:quota:...``): a tenant with
# one of these ids would share that first segment with them (tenant keys are ``{ns}:{tenant}:...``), so they are
# refused as tenant ids. tests/unit/test_tenant_ids.py keeps this list in step with the code.
RESERVED_TENANTS = frozenset(
    {
        "apikey", "apikeys", "audit", "breaker", "breakers", "chatseen", "conv", "dek", "deks", "dlq", "kv",
        "models", "paired", "pairing", "quota", "ratelimit", "router", "schedule", "slots", "tenants", "waiting",
        "task", "idem", "ops", "system", "admin",
    }
)  # fmt: skip


def check_tenant(tenant: str) -> str:
    """Tenant ids become key segments: only a safe alphabet, and never a word deployment-wide keys start with."""
    if not _TENANT.match(tenant):
        raise InvalidInputError(f"invalid tenant id {tenant!r}")
    if tenant.lower() in RESERVED_TENANTS:
        raise InvalidInputError(f"tenant id {tenant!r} is reserved")
    return tenant


def check_task_id(task_id: str) -> str:
    """Reject ids that could address other keys."""
    if not _TASK_ID.match(task_id):
        raise InvalidInputError(f"invalid task id {task_id!r}")
    return task_id
