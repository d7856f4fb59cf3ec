"""Redis key-value operations for workflow state, confined to the tenant's key space."""

from __future__ import annotations

from typing import Any

from services.executor.ops.base import Operation

OPERATIONS: tuple[Operation[Any], ...] = ()
