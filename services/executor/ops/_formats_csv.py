"""CSV: parse (a header row makes each row an object; types inferred on request) and write (formula-safe on request).

Part of the formats category: ``formats.OPERATIONS`` gathers these operations.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from typing import Any, Literal

from pydantic import Field

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops._values import MAX_ITEMS, check_value, kind, list_input, text_input
from services.executor.ops.base import Params, operation

# Spreadsheets run a field starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_TEXT = Field(None, description="The text to parse; the previous step's output when omitted.")


_INT = re.compile(r"[-+]?(0|[1-9][0-9]{0,17})")
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?")


def _infer(cell: str) -> Any:
    if cell == "":
        return None
    if _INT.fullmatch(cell):
        return int(cell)
    if _FLOAT.fullmatch(cell):
        return float(cell)
    low = cell.lower()
    if low in ("true", "false"):
        return low == "true"
    return cell


def parse_csv(
    text: str,
    *,
    delimiter: str = ",",
    quotechar: str = '"',
    header: bool = True,
    infer_types: bool = False,
    ragged: Literal["error", "fill"] = "error",
    param: str = "text",
) -> list[Any]:
    """CSV as a list of objects keyed by the header row (or a list of lists without one)."""
    # Spreadsheets often start their CSV with a byte order mark; it is not part of the first column name.
    reader = csv.reader(
        io.StringIO(text.removeprefix("\ufeff"), newline=""),
        delimiter=delimiter,
        quotechar=quotechar,
        strict=True,
    )
    rows: list[Any] = []
    columns: list[str] | None = None
    try:
        for row in reader:
            if not row:
                continue
            if len(rows) >= MAX_ITEMS:
                raise InvalidInputError(f"{param}: more than {MAX_ITEMS} rows", param=param)
            cells: list[Any] = [_infer(c) for c in row] if infer_types else list(row)
            if not header:
                rows.append(cells)
                continue
            if columns is None:
                columns = _header(row, reader.line_num, param)
                continue
            if len(row) != len(columns):
                if ragged == "error" or len(row) > len(columns):
                    raise InvalidInputError(
                        f"{param}: line {reader.line_num} has {len(row)} fields, the header has {len(columns)}",
                        param=param,
                    )
                cells += [None] * (len(columns) - len(row))
            rows.append(dict(zip(columns, cells, strict=True)))
    except csv.Error as exc:
        raise InvalidInputError(
            f"{param}: invalid CSV at line {reader.line_num}: {exc}", param=param
        ) from None
    return rows


def _header(row: list[str], line: int, param: str) -> list[str]:
    seen: set[str] = set()
    for name in row:
        if name in seen:
            raise InvalidInputError(f"{param}: header (line {line}) names column {name!r} twice", param=param)
        seen.add(name)
    return row


def _cell(value: Any, escape_formulas: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, allow_nan=False)
    if escape_formulas and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def dump_csv(
    rows: list[Any],
    *,
    columns: list[str] | None = None,
    delimiter: str = ",",
    header: bool = True,
    line_ending: str = "\n",
    escape_formulas: bool = False,
) -> str:
    """Rows (objects or lists) as CSV; nested values are written as JSON, null as an empty field."""
    check_value(rows, "items")
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=line_ending)
    objects = [isinstance(row, dict) for row in rows]
    if rows and all(objects):
        if columns is None:
            columns = list(dict.fromkeys(key for row in rows for key in row))
        if header:
            writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(col), escape_formulas) for col in columns])
    elif all(isinstance(row, list) for row in rows):
        if header and columns:
            writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(cell, escape_formulas) for cell in row])
    else:
        first = objects[0]
        bad = next(
            i
            for i, row in enumerate(rows)
            if isinstance(row, dict) != first or not isinstance(row, dict | list)
        )
        raise InvalidInputError(
            f"items: every row must be an object, or every row a list; items[{bad}] is {kind(rows[bad])}",
            param="items",
        )
    return out.getvalue()


_ONE_CHAR = r"^[^\r\n]$"  # one character, and not a line break (that would end the row)
_DELIMITER = Field(",", pattern=_ONE_CHAR, description="The field separator (one character).")


class CsvParseParams(Params):
    text: str | None = _TEXT
    delimiter: str = _DELIMITER
    quotechar: str = Field('"', pattern=_ONE_CHAR, description="The quoting character (not the delimiter).")
    header: bool = Field(True, description="The first row names the columns: rows become objects.")
    infer_types: bool = Field(
        False,
        description="Turn integers, decimals, true/false and empty fields into numbers, booleans, null.",
    )
    ragged: Literal["error", "fill"] = Field(
        "error", description="A row shorter than the header: an error, or missing fields filled with null."
    )


@operation("csv_parse", category="formats", params=CsvParseParams)
async def csv_parse(p: CsvParseParams, ctx: OpContext) -> list[Any]:
    """Parse CSV into a list of objects keyed by the header row (or lists of fields without a header)."""
    if p.delimiter == p.quotechar:
        raise InvalidInputError("quotechar: must differ from the delimiter", param="quotechar")
    text = text_input(p, "text", ctx)
    return await asyncio.to_thread(
        parse_csv,
        text,
        delimiter=p.delimiter,
        quotechar=p.quotechar,
        header=p.header,
        infer_types=p.infer_types,
        ragged=p.ragged,
    )


class CsvDumpParams(Params):
    items: list[Any] | None = Field(
        None, description="Rows: objects or lists; the previous output when omitted."
    )
    columns: list[str] | None = Field(
        None,
        max_length=1000,
        description="Column order (and subset) for object rows; default: keys in first-seen order.",
    )
    delimiter: str = _DELIMITER
    header: bool = Field(True, description="Write a header row.")
    line_ending: Literal["\n", "\r\n"] = Field("\n", description="Line ending (RFC 4180 says CRLF).")
    escape_formulas: bool = Field(
        False,
        description="Prefix fields starting with = + - @ with ' so spreadsheets do not run them as formulas.",
    )


@operation("csv_dump", category="formats", params=CsvDumpParams)
async def csv_dump(p: CsvDumpParams, ctx: OpContext) -> str:
    """Write rows (objects or lists) as CSV text with a header row; nested values are written as JSON."""
    rows = list_input(p, "items", ctx)
    return await asyncio.to_thread(
        dump_csv,
        rows,
        columns=p.columns,
        delimiter=p.delimiter,
        header=p.header,
        line_ending=p.line_ending,
        escape_formulas=p.escape_formulas,
    )


OPERATIONS = (csv_parse, csv_dump)
