"""Archive operations over the tenant's storage: zip, tar and gzip."""

from __future__ import annotations

from typing import Any

from services.executor.ops.base import Operation

OPERATIONS: tuple[Operation[Any], ...] = ()
