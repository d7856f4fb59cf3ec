"""SQL query operations against SQLite files in the tenant's storage and PostgreSQL."""

from __future__ import annotations

from typing import Any

from services.executor.ops.base import Operation

OPERATIONS: tuple[Operation[Any], ...] = ()
