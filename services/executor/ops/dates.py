"""Date and time operations: parse, format, add, diff and time zones."""

from __future__ import annotations

from typing import Any

from services.executor.ops.base import Operation

OPERATIONS: tuple[Operation[Any], ...] = ()
