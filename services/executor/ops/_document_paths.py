"""Paths into JSON documents: get, set, delete, pick and omit by path; flatten and unflatten with joined keys.

Paths are dotted (``a.b.0``; ``\\.`` escapes a dot) or RFC 6901 JSON Pointers (``/a/b/0``). Part of the
formats category: ``formats.OPERATIONS`` gathers these operations. Inputs are never changed in place.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import Field

from services.common.errors import InvalidInputError, NotFoundError
from services.executor.context import OpContext
from services.executor.ops._values import (
    MAX_DEPTH,
    MAX_PATH_CHARS,
    check_value,
    delete_in_place,
    dict_input,
    found,
    kind,
    lookup,
    parse_path,
    set_path,
    value_input,
)
from services.executor.ops.base import Params, operation

MAX_PATHS = 1000

_INPUT = Field(None, description="The document; the previous step's output when omitted.")
_PATHS = Field(min_length=1, max_length=MAX_PATHS, description="Dotted paths or JSON Pointers.")


# Flatten


def _escape(key: str, sep: str) -> str:
    return key.replace("\\", "\\\\").replace(sep, "\\" + sep)


def flatten(value: Any, sep: str, lists: bool) -> dict[str, Any]:
    """{"a": {"b": 1}} as {"a.b": 1}; list items get index keys when ``lists``; empty containers are kept."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        prefix, item = stack.pop()
        children: list[tuple[str, Any]] = []
        if isinstance(item, dict) and item:
            children = [(_escape(str(k), sep), v) for k, v in item.items()]
        elif isinstance(item, list) and item and lists:
            children = [(str(i), v) for i, v in enumerate(item)]
        if not children:
            out[prefix] = item
            continue
        stack.extend((f"{prefix}{sep}{k}" if prefix else k, v) for k, v in reversed(children))
    return out


class JsonFlattenParams(Params):
    input: Any = _INPUT
    separator: str = Field(".", min_length=1, max_length=4, description="Joins the keys of nested levels.")
    lists: bool = Field(
        True, description="Flatten list items too (keys a.0, a.1); false keeps lists as values."
    )


@operation("json_flatten", category="formats", params=JsonFlattenParams)
async def json_flatten(p: JsonFlattenParams, ctx: OpContext) -> dict[str, Any]:
    """Flatten nested objects into one level with joined keys: {"a": {"b": 1}} becomes {"a.b": 1}."""
    doc = value_input(p, "input", ctx)
    if not isinstance(doc, dict | list):
        raise InvalidInputError(f"input: must be an object or a list, not {kind(doc)}", param="input")
    return flatten(doc, p.separator, p.lists)


def _split_key(key: str, sep: str) -> list[str]:
    parts, current, i = [], "", 0
    while i < len(key):
        if key[i] == "\\" and i + 1 < len(key):
            current += key[i + 1]
            i += 2
        elif key.startswith(sep, i):
            parts.append(current)
            current = ""
            i += len(sep)
        else:
            current += key[i]
            i += 1
    parts.append(current)
    return parts


def unflatten(flat: dict[str, Any], sep: str, lists: bool) -> Any:
    """The inverse of flatten; a key that is both a value and a parent (a=1, a.b=2) is an error."""
    root: dict[str, Any] = {}
    for key, value in flat.items():
        parts = _split_key(key, sep)
        if len(parts) > MAX_DEPTH:
            raise InvalidInputError(
                f"input: key {key!r} is nested deeper than {MAX_DEPTH} levels", param="input"
            )
        node = root
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = sep.join(parts[: depth + 1])
                raise InvalidInputError(
                    f"input: key {key!r} goes under {where!r}, which has a value", param="input"
                )
            node = child
        if parts[-1] in node and isinstance(node[parts[-1]], dict) and node[parts[-1]]:
            raise InvalidInputError(f"input: key {key!r} is also the parent of other keys", param="input")
        node[parts[-1]] = value
    return _lists(root) if lists else root


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _lists(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        indexes = sorted(int(k) for k in converted)
        if indexes == list(range(len(indexes))):
            return [converted[str(i)] for i in indexes]
    return converted


class JsonUnflattenParams(Params):
    input: dict[str, Any] | None = Field(
        None, description="A flat object; the previous step's output when omitted."
    )
    separator: str = Field(".", min_length=1, max_length=4, description="Splits keys into nested levels.")
    lists: bool = Field(True, description="Rebuild lists from levels whose keys are exactly 0, 1, 2...")


@operation("json_unflatten", category="formats", params=JsonUnflattenParams)
async def json_unflatten(p: JsonUnflattenParams, ctx: OpContext) -> Any:
    """Rebuild nested objects (and lists) from joined keys: {"a.b": 1} becomes {"a": {"b": 1}}."""
    flat = dict_input(p, "input", ctx)
    return unflatten(flat, p.separator, p.lists)


# Paths


class JsonGetParams(Params):
    input: Any = _INPUT
    path: str = Field(
        max_length=MAX_PATH_CHARS, description="A dotted path (a.b.0) or a JSON Pointer (/a/b/0)."
    )
    default: Any = Field(None, description="Returned when nothing is at the path.")
    required: bool = Field(False, description="Fail with not_found instead of returning the default.")


@operation("json_get", category="formats", params=JsonGetParams)
async def json_get(p: JsonGetParams, ctx: OpContext) -> Any:
    """The value at a dotted path or JSON Pointer (negative list indexes count from the end), or a default."""
    doc = value_input(p, "input", ctx)
    value = lookup(doc, parse_path(p.path))
    if found(value):
        return value
    if p.required:
        raise NotFoundError(f"path: nothing at {p.path!r}", param="path", path=p.path)
    return p.default


class JsonSetParams(Params):
    input: Any = _INPUT
    path: str = Field(max_length=MAX_PATH_CHARS, description="Where to set: a dotted path or a JSON Pointer.")
    value: Any = Field(description="The value to put there.")
    create: bool = Field(True, description="Create missing intermediate objects (else: not_found).")


@operation("json_set", category="formats", params=JsonSetParams)
async def json_set(p: JsonSetParams, ctx: OpContext) -> Any:
    """A copy of the document with a value set at a path (intermediate objects created; "-" appends to a list)."""
    doc = value_input(p, "input", ctx)
    check_value(p.value, "value")
    out = set_path(doc, parse_path(p.path), p.value, create=p.create, path=p.path)
    check_value(out, "input")
    return out


class JsonDeleteParams(Params):
    input: Any = _INPUT
    paths: list[str] = _PATHS
    missing_ok: bool = Field(True, description="A path with nothing at it is skipped (else: not_found).")


@operation("json_delete", category="formats", params=JsonDeleteParams)
async def json_delete(p: JsonDeleteParams, ctx: OpContext) -> Any:
    """A copy of the document without the values at the given paths."""
    doc = copy.deepcopy(value_input(p, "input", ctx))
    for i, path in enumerate(p.paths):
        parts = parse_path(path, f"paths[{i}]")
        if not parts:
            raise InvalidInputError(f"paths[{i}]: cannot delete the whole document", param="paths")
        if not delete_in_place(doc, parts) and not p.missing_ok:
            raise NotFoundError(f"paths[{i}]: nothing at {path!r}", param="paths", path=path)
    return doc


class JsonPickParams(Params):
    input: Any = _INPUT
    paths: list[str] = _PATHS


@operation("json_pick", category="formats", params=JsonPickParams)
async def json_pick(p: JsonPickParams, ctx: OpContext) -> dict[str, Any]:
    """A new object holding only the given paths, nested as in the input; missing paths are left out."""
    doc = value_input(p, "input", ctx)
    out: dict[str, Any] = {}
    for i, path in enumerate(p.paths):
        parts = parse_path(path, f"paths[{i}]")
        if not parts:
            raise InvalidInputError(f"paths[{i}]: must name a key, not the whole document", param="paths")
        value = lookup(doc, parts)
        if found(value):
            out = set_path(out, parts, value, create=True, path=path, param=f"paths[{i}]")
    return out


class JsonOmitParams(Params):
    input: dict[str, Any] | None = Field(
        None, description="The object; the previous step's output when omitted."
    )
    paths: list[str] = _PATHS


@operation("json_omit", category="formats", params=JsonOmitParams)
async def json_omit(p: JsonOmitParams, ctx: OpContext) -> dict[str, Any]:
    """A copy of an object without the given keys or nested paths (those not present are ignored)."""
    doc = copy.deepcopy(dict_input(p, "input", ctx))
    check_value(doc, "input")
    for i, path in enumerate(p.paths):
        delete_in_place(doc, parse_path(path, f"paths[{i}]"))
    return doc


OPERATIONS = (
    json_get,
    json_set,
    json_delete,
    json_pick,
    json_omit,
    json_flatten,
    json_unflatten,
)
