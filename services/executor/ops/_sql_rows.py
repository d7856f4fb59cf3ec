"""What the SQL engines share: a statement to run, its result, and rows turned into JSON objects."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Bound = list[Any] | dict[str, Any] | None


@dataclass(frozen=True)
class Statement:
    """One SQL statement and its bound parameters (positional list or named object)."""

    sql: str
    params: Bound = None
    # Statements returning rows: how many to keep (one more is read to tell whether more were there).
    max_rows: int = 1000
    # executemany: the statement once per parameter set (params is then unused).
    many: list[Bound] | None = None


@dataclass
class Result:
    """Rows as objects keyed by column name, and what a write reports."""

    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    rowcount: int = -1
    lastrowid: int | None = None

    def query_output(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
        }

    def execute_output(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rowcount": self.rowcount}
        if self.lastrowid is not None:
            out["lastrowid"] = self.lastrowid
        if self.columns:  # INSERT ... RETURNING and the like
            out.update(columns=self.columns, rows=self.rows, truncated=self.truncated)
        return out


def column_names(names: Iterable[str]) -> list[str]:
    """Column names made unique ("id", "id_2"), so no value is lost when rows become objects."""
    seen: set[str] = set()
    out = []
    for name in names:
        unique, n = name, 1
        while unique in seen:
            n += 1
            unique = f"{name}_{n}"
        seen.add(unique)
        out.append(unique)
    return out


def json_value(value: Any) -> Any:
    """A database value as JSON: exact decimals as strings, times in ISO 8601, bytes in base64."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)  # network addresses, ranges, enums...


def collect(
    columns: list[str], rows: Iterable[Sequence[Any]], max_rows: int, max_bytes: int, into: Result
) -> None:
    """Fill ``into`` with up to max_rows rows (and about max_bytes of JSON); flag a cut."""
    into.columns = columns
    size = 0
    for row in rows:
        if len(into.rows) >= max_rows:
            into.truncated = True
            return
        obj = {name: json_value(v) for name, v in zip(columns, row, strict=False)}
        size += len(json.dumps(obj, ensure_ascii=False, default=str))
        if size > max_bytes:
            into.truncated = True
            return
        into.rows.append(obj)
