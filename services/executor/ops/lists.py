"""List and map operations: filter, map, sort, group, dedupe, chunk, zip, flatten and friends."""

from __future__ import annotations

from typing import Any

from services.executor.ops.base import Operation

OPERATIONS: tuple[Operation[Any], ...] = ()
