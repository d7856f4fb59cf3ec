"""Text operations: split, join, replace, regex, templates, case, slugs, counts and diffs."""

from __future__ import annotations

from typing import Any

from services.executor.ops.base import Operation

OPERATIONS: tuple[Operation[Any], ...] = ()
