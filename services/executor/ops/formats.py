"""Structured-data formats: JSON, YAML, TOML, XML and CSV (parse, dump, query, merge, patch, validate, convert)."""

from __future__ import annotations

from typing import Any

from services.executor.ops.base import Operation

OPERATIONS: tuple[Operation[Any], ...] = ()
