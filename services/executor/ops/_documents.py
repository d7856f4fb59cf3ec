"""Operations on JSON documents: query (JSONPath), deep merge, patch (RFC 6902), merge patch (RFC 7386), diff.

Part of the formats category: ``formats.OPERATIONS`` gathers these operations. Every operation returns a
new value: its input is never changed in place.
"""

from __future__ import annotations

import asyncio
import copy
import warnings
from typing import Any, Literal

import jsonpatch
import jsonpointer
from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.ext.parser import parse as jsonpath_parse
from pydantic import Field

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops._values import (
    MAX_DEPTH,
    MAX_EXPRESSION_CHARS,
    MAX_ITEMS,
    MAX_NODES,
    check_value,
    count_nodes,
    identity,
    value_input,
)
from services.executor.ops.base import Params, operation

MAX_PATCH_OPS = 10_000

_INPUT = Field(None, description="The document; the previous step's output when omitted.")


# Query


def _jsonpath(expression: str) -> Any:
    if "=~" in expression or "sub(" in expression:
        # Python's re has no time limit and holds the GIL: a hostile pattern would stall the whole worker.
        raise InvalidInputError(
            "expression: regular expressions (=~, sub()) are not allowed in JSONPath; "
            "filter with a text_regex operation instead",
            param="expression",
        )
    try:
        # The union (|) and intersection (&) operators still work but warn; the warning is not the user's error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return jsonpath_parse(expression)
    except (JSONPathError, ValueError, TypeError, AttributeError) as exc:
        raise InvalidInputError(
            f"expression: not a valid JSONPath expression: {exc}", param="expression"
        ) from None


class JsonQueryParams(Params):
    expression: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION_CHARS,
        description="A JSONPath expression, e.g. $.store.book[?(@.price < 10)].title.",
    )
    input: Any = _INPUT
    mode: Literal["values", "first", "paths"] = Field(
        "values",
        description="values: every match; first: the first match or null; paths: [{path, value}] per match.",
    )
    limit: int = Field(10_000, ge=1, le=MAX_ITEMS, description="At most this many matches are returned.")


def _query(compiled: Any, doc: Any, mode: str, limit: int) -> Any:
    try:
        matches = compiled.find(doc)
    except Exception as exc:  # jsonpath-ng raises plain exceptions for type mismatches in filters
        raise InvalidInputError(f"expression: {exc}", param="expression") from None
    matches = matches[:limit]
    if mode == "first":
        return matches[0].value if matches else None
    if mode == "paths":
        return [{"path": str(m.full_path), "value": m.value} for m in matches]
    return [m.value for m in matches]


@operation("json_query", category="formats", params=JsonQueryParams)
async def json_query(p: JsonQueryParams, ctx: OpContext) -> Any:
    """Query a document with JSONPath (filters included); returns the matches, the first, or paths with values."""
    doc = value_input(p, "input", ctx)
    return await asyncio.to_thread(_query, _jsonpath(p.expression), doc, p.mode, p.limit)


# Merge and patch


def deep_merge(base: Any, over: Any, lists: str, depth: int = 0) -> Any:
    """``over`` merged into ``base``: objects merge key by key, lists by the strategy, other values replace."""
    if depth > MAX_DEPTH:
        raise InvalidInputError(f"values: nested deeper than {MAX_DEPTH} levels", param="values")
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = deep_merge(base[key], value, lists, depth + 1) if key in base else value
        return out
    if isinstance(base, list) and isinstance(over, list):
        if lists == "append":
            return base + over
        if lists == "unique":
            merged = list(base)
            seen = {identity(item) for item in base}
            for item in over:
                if identity(item) not in seen:
                    seen.add(identity(item))
                    merged.append(item)
            return merged
    return over


class JsonMergeParams(Params):
    values: list[Any] = Field(
        min_length=1, max_length=100, description="Documents to merge, later ones winning over earlier ones."
    )
    lists: Literal["replace", "append", "unique"] = Field(
        "replace",
        description="Lists under the same key: the later one replaces, is appended, or adds new items only.",
    )


@operation("json_merge", category="formats", params=JsonMergeParams)
async def json_merge(p: JsonMergeParams, ctx: OpContext) -> Any:
    """Deep-merge documents left to right (objects key by key; lists replaced, appended or unioned)."""
    check_value(p.values, "values")
    result: Any = p.values[0]
    for value in p.values[1:]:
        result = deep_merge(result, value, p.lists)
    return copy.deepcopy(result)


class JsonPatchParams(Params):
    input: Any = _INPUT
    patch: list[dict[str, Any]] = Field(
        max_length=MAX_PATCH_OPS,
        description='RFC 6902 operations: [{"op": "add"|"remove"|"replace"|"move"|"copy"|"test", "path": ...}].',
    )


def _apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    doc = copy.deepcopy(doc)
    # What adds, replaces and copies bring in is counted as it comes, so a run of "copy" operations
    # cannot double the document until it fills the worker's memory.
    budget = MAX_NODES - count_nodes(doc)
    for i, op in enumerate(ops):
        try:
            if op.get("op") in ("add", "replace"):
                budget -= count_nodes(op.get("value"))
            elif op.get("op") == "copy" and isinstance(op.get("from"), str):
                budget -= count_nodes(jsonpointer.resolve_pointer(doc, op["from"], None))
            if budget < 0:
                raise InvalidInputError(
                    f"patch[{i}]: the document would hold more than {MAX_NODES} values",
                    param="patch",
                    index=i,
                )
            doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise InvalidInputError(f"patch[{i}]: test failed: {exc}", param="patch", index=i) from None
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            raise InvalidInputError(f"patch[{i}]: {exc}", param="patch", index=i) from None
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"patch[{i}]: cannot apply: {exc}", param="patch", index=i) from None
    check_value(doc, "input")
    return doc


@operation("json_patch", category="formats", params=JsonPatchParams)
async def json_patch(p: JsonPatchParams, ctx: OpContext) -> Any:
    """Apply an RFC 6902 JSON Patch; all or nothing, and a failing operation is named by its index."""
    doc = value_input(p, "input", ctx)
    return await asyncio.to_thread(_apply_patch, doc, p.patch)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def make_merge_patch(source: Any, target: Any) -> Any:
    """The RFC 7386 merge patch turning ``source`` into ``target`` (null marks removed keys)."""
    if not (isinstance(source, dict) and isinstance(target, dict)):
        return copy.deepcopy(target)
    out: dict[str, Any] = {key: None for key in source if key not in target}
    for key, value in target.items():
        if key not in source:
            out[key] = copy.deepcopy(value)
        elif source[key] != value or type(source[key]) is not type(value):
            out[key] = make_merge_patch(source[key], value)
    return out


class JsonMergePatchParams(Params):
    input: Any = _INPUT
    patch: Any = Field(description="An RFC 7386 merge patch: an object whose null values delete keys.")


@operation("json_merge_patch", category="formats", params=JsonMergePatchParams)
async def json_merge_patch(p: JsonMergePatchParams, ctx: OpContext) -> Any:
    """Apply an RFC 7386 JSON Merge Patch: objects merge, null deletes a key, other values replace."""
    doc = value_input(p, "input", ctx)
    check_value(p.patch, "patch")
    return merge_patch(doc, p.patch)


class JsonDiffParams(Params):
    source: Any = Field(description="The original document.")
    target: Any = Field(description="The changed document.")
    format: Literal["json_patch", "merge_patch"] = Field(
        "json_patch", description="json_patch: RFC 6902 operations; merge_patch: an RFC 7386 merge patch."
    )


def _diff(source: Any, target: Any, fmt: str) -> Any:
    if fmt == "merge_patch":
        return make_merge_patch(source, target)
    return list(jsonpatch.make_patch(source, target).patch)


@operation("json_diff", category="formats", params=JsonDiffParams)
async def json_diff(p: JsonDiffParams, ctx: OpContext) -> Any:
    """The patch turning one document into another (RFC 6902 operations, or an RFC 7386 merge patch)."""
    check_value(p.source, "source")
    check_value(p.target, "target")
    return await asyncio.to_thread(_diff, p.source, p.target, p.format)


OPERATIONS = (
    json_query,
    json_merge,
    json_patch,
    json_merge_patch,
    json_diff,
)
