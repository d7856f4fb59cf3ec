"""List operations by content: filter, map, sort, group, dedupe, count, index, partition, sum, min and max.

Keys (``key`` params) are dotted paths or JSON Pointers into each item; per-item expressions are JMESPath,
which can only read the item. Lists hold at most MAX_ITEMS items and outputs are bounded the same way.
Operations by position and shape live in ``_lists_shape``, those on objects in ``_maps``; OPERATIONS
gathers them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops import _lists_shape, _maps
from services.executor.ops._values import (
    MAX_PATH_CHARS,
    JmesPath,
    compile_jmespath,
    found,
    identity,
    key_getter,
    kind,
    list_input,
    search,
    truthy,
)
from services.executor.ops.base import Params, operation

_ITEMS = Field(None, description="The list; the previous step's output when omitted.")
_KEY = Field(
    None,
    max_length=MAX_PATH_CHARS,
    description="A dotted path or JSON Pointer into each item (e.g. user.id); the item itself when omitted.",
)
_LISTS = Field(min_length=1, max_length=100, description="The lists.")


def _read(items: list[Any], key: str | None, *, missing: str = "error", param: str = "items") -> list[Any]:
    """The key's value in each item; a missing key is an error naming the item, or None when allowed."""
    get = key_getter(key)
    out = []
    for i, item in enumerate(items):
        value = get(item)
        if not found(value):
            if missing == "error":
                raise InvalidInputError(f"{param}[{i}]: has no {key!r}", param=param, index=i)
            value = None
        out.append(value)
    return out


def _rank(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return kind(value)


def _comparable(values: list[Any], key: str | None, param: str = "items") -> None:
    """All non-null values are numbers, or all text, or all booleans; else an error naming two that clash."""
    first: tuple[int, str] | None = None
    where = f".{key}" if key else ""
    for i, value in enumerate(values):
        if value is None:
            continue
        rank = _rank(value)
        if rank not in ("a number", "text", "a boolean"):
            raise InvalidInputError(f"{param}[{i}]{where}: is {rank}, which cannot be ordered", param=param)
        if first is None:
            first = (i, rank)
        elif rank != first[1]:
            raise InvalidInputError(
                f"{param}[{i}]{where} is {rank} but {param}[{first[0]}]{where} is {first[1]}: cannot compare them",
                param=param,
            )


def _json_key(value: Any) -> str:
    return value if isinstance(value, str) else identity(value)


class ListFilterParams(Params):
    items: list[Any] | None = _ITEMS
    expression: JmesPath = Field(description="A JMESPath expression run on each item, e.g. price < `10`.")
    invert: bool = Field(False, description="Keep the items for which the expression is false instead.")


@operation("list_filter", category="lists", params=ListFilterParams)
async def list_filter(p: ListFilterParams, ctx: OpContext) -> list[Any]:
    """Keep the items for which a JMESPath expression is true (false, null and empty values are false)."""
    items = list_input(p, "items", ctx)
    compiled = compile_jmespath(p.expression)
    return [item for item in items if truthy(search(compiled, item)) != p.invert]


class ListMapParams(Params):
    items: list[Any] | None = _ITEMS
    expression: JmesPath = Field(
        description="A JMESPath expression run on each item, e.g. {id: id, name: user.name}."
    )


@operation("list_map", category="lists", params=ListMapParams)
async def list_map(p: ListMapParams, ctx: OpContext) -> list[Any]:
    """Replace each item with the result of a JMESPath expression run on it."""
    items = list_input(p, "items", ctx)
    compiled = compile_jmespath(p.expression)
    return [search(compiled, item) for item in items]


class ListSortParams(Params):
    items: list[Any] | None = _ITEMS
    key: str | None = _KEY
    reverse: bool = Field(False, description="Largest first.")
    missing: Literal["last", "first", "error"] = Field(
        "last", description="Where items whose key is missing or null go (or make them an error)."
    )


@operation("list_sort", category="lists", params=ListSortParams)
async def list_sort(p: ListSortParams, ctx: OpContext) -> list[Any]:
    """Sort items (stably) by themselves or a key path; mixed types (numbers beside text) are an error."""
    items = list_input(p, "items", ctx)
    keys = _read(items, p.key, missing="error" if p.missing == "error" else "null")
    if p.missing == "error" and None in keys:
        i = keys.index(None)
        raise InvalidInputError(f"items[{i}]: {p.key or 'the item'} is null", param="items", index=i)
    _comparable(keys, p.key)
    present = sorted(
        (i for i in range(len(items)) if keys[i] is not None), key=lambda i: keys[i], reverse=p.reverse
    )
    absent = [i for i in range(len(items)) if keys[i] is None]
    order = absent + present if p.missing == "first" else present + absent
    return [items[i] for i in order]


class ListGroupByParams(Params):
    items: list[Any] | None = _ITEMS
    key: str = Field(max_length=MAX_PATH_CHARS, description="The dotted path or JSON Pointer to group by.")
    missing: Literal["error", "skip", "null"] = Field(
        "error", description='Items without the key: an error, left out, or grouped under "null".'
    )


@operation("list_group_by", category="lists", params=ListGroupByParams)
async def list_group_by(p: ListGroupByParams, ctx: OpContext) -> dict[str, list[Any]]:
    """Group items by a key into {key value: [items]} (in first-seen order; non-text keys written as JSON)."""
    items = list_input(p, "items", ctx)
    get = key_getter(p.key)
    groups: dict[str, list[Any]] = {}
    for i, item in enumerate(items):
        value = get(item)
        if not found(value):
            if p.missing == "error":
                raise InvalidInputError(f"items[{i}]: has no {p.key!r}", param="items", index=i)
            if p.missing == "skip":
                continue
            value = None
        groups.setdefault(_json_key(value), []).append(item)
    return groups


class ListDedupeParams(Params):
    items: list[Any] | None = _ITEMS
    key: str | None = _KEY
    keep: Literal["first", "last"] = Field(
        "first", description="Which of the duplicates stays (in its place)."
    )


@operation("list_dedupe", category="lists", params=ListDedupeParams)
async def list_dedupe(p: ListDedupeParams, ctx: OpContext) -> list[Any]:
    """Drop items that repeat an earlier item (or an earlier item's key), keeping the first or last one."""
    items = list_input(p, "items", ctx)
    ids = [identity(v) for v in _read(items, p.key)]
    order = range(len(items)) if p.keep == "first" else range(len(items) - 1, -1, -1)
    seen: set[str] = set()
    kept: list[int] = []
    for i in order:
        if ids[i] not in seen:
            seen.add(ids[i])
            kept.append(i)
    return [items[i] for i in sorted(kept)]


class ListUniqueParams(Params):
    items: list[Any] | None = _ITEMS
    key: str | None = _KEY


@operation("list_unique", category="lists", params=ListUniqueParams)
async def list_unique(p: ListUniqueParams, ctx: OpContext) -> list[Any]:
    """The distinct values of the items (or of a key in each item, missing ones skipped), in first-seen order."""
    items = list_input(p, "items", ctx)
    get = key_getter(p.key)
    seen: dict[str, Any] = {}
    for item in items:
        value = get(item)
        if found(value):
            seen.setdefault(identity(value), value)
    return list(seen.values())


class ListCountByParams(Params):
    items: list[Any] | None = _ITEMS
    key: str | None = _KEY


@operation("list_count_by", category="lists", params=ListCountByParams)
async def list_count_by(p: ListCountByParams, ctx: OpContext) -> dict[str, int]:
    """Count items per value (of a key, or of the item): {value: count}, most frequent first."""
    items = list_input(p, "items", ctx)
    counts: dict[str, int] = {}
    get = key_getter(p.key)
    for item in items:
        value = get(item)
        name = _json_key(value if found(value) else None)
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


class ListIndexByParams(Params):
    items: list[Any] | None = _ITEMS
    key: str = Field(max_length=MAX_PATH_CHARS, description="The dotted path or JSON Pointer to index by.")
    duplicates: Literal["error", "first", "last"] = Field(
        "error", description="Two items with the same key: an error, or keep the first or the last."
    )


@operation("list_index_by", category="lists", params=ListIndexByParams)
async def list_index_by(p: ListIndexByParams, ctx: OpContext) -> dict[str, Any]:
    """An object mapping each item's key to the item (a lookup table); duplicate keys are an error by default."""
    items = list_input(p, "items", ctx)
    out: dict[str, Any] = {}
    where: dict[str, int] = {}
    for i, value in enumerate(_read(items, p.key)):
        name = _json_key(value)
        if name in out:
            if p.duplicates == "error":
                raise InvalidInputError(
                    f"items[{i}]: key {name!r} repeats items[{where[name]}]; set duplicates to first or last",
                    param="items",
                )
            if p.duplicates == "first":
                continue
        out[name] = items[i]
        where[name] = i
    return out


class ListPartitionParams(Params):
    items: list[Any] | None = _ITEMS
    expression: JmesPath = Field(description="A JMESPath expression run on each item.")


@operation("list_partition", category="lists", params=ListPartitionParams)
async def list_partition(p: ListPartitionParams, ctx: OpContext) -> dict[str, list[Any]]:
    """Split items by a JMESPath test into {"matched": [...], "unmatched": [...]}, order kept."""
    items = list_input(p, "items", ctx)
    compiled = compile_jmespath(p.expression)
    out: dict[str, list[Any]] = {"matched": [], "unmatched": []}
    for item in items:
        out["matched" if truthy(search(compiled, item)) else "unmatched"].append(item)
    return out


class ListTotalParams(Params):
    items: list[Any] | None = _ITEMS
    key: str | None = _KEY
    skip_missing: bool = Field(
        False, description="Ignore items whose key is missing or null (else: an error)."
    )


def _numbers(p: ListTotalParams, items: list[Any]) -> list[tuple[int, int | float]]:
    values = _read(items, p.key, missing="null" if p.skip_missing else "error")
    out: list[tuple[int, int | float]] = []
    for i, value in enumerate(values):
        if value is None and p.skip_missing:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            where = f"items[{i}]" + (f".{p.key}" if p.key else "")
            raise InvalidInputError(f"{where}: is {kind(value)}, not a number", param="items", index=i)
        out.append((i, value))
    return out


@operation("list_sum", category="lists", params=ListTotalParams)
async def list_sum(p: ListTotalParams, ctx: OpContext) -> int | float:
    """The sum of the items (or of a numeric key in each); 0 for an empty list."""
    return sum(v for _, v in _numbers(p, list_input(p, "items", ctx)))


def _extreme(p: ListTotalParams, ctx: OpContext, pick: Callable[..., Any]) -> Any:
    items = list_input(p, "items", ctx)
    values = _read(items, p.key, missing="null" if p.skip_missing else "error")
    pairs = [(i, v) for i, v in enumerate(values) if not (v is None and p.skip_missing)]
    _comparable([v for _, v in pairs], p.key)
    if any(v is None for _, v in pairs):
        i = next(i for i, v in pairs if v is None)
        raise InvalidInputError(f"items[{i}]: {p.key or 'the item'} is null", param="items", index=i)
    if not pairs:
        return None
    best = pick(pairs, key=lambda pair: pair[1])[0]
    return items[best]


@operation("list_min", category="lists", params=ListTotalParams)
async def list_min(p: ListTotalParams, ctx: OpContext) -> Any:
    """The smallest item, or the item with the smallest key (the first on ties); null for an empty list."""
    return _extreme(p, ctx, min)


@operation("list_max", category="lists", params=ListTotalParams)
async def list_max(p: ListTotalParams, ctx: OpContext) -> Any:
    """The largest item, or the item with the largest key (the first on ties); null for an empty list."""
    return _extreme(p, ctx, max)


OPERATIONS = (
    list_filter,
    list_map,
    list_sort,
    list_group_by,
    list_dedupe,
    list_unique,
    list_count_by,
    list_index_by,
    list_partition,
    list_sum,
    list_min,
    list_max,
    *_lists_shape.OPERATIONS,
    *_maps.OPERATIONS,
)
