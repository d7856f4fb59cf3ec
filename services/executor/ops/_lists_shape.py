"""Lists by position and shape: chunk, zip, unzip, flatten, take, slice, reverse, range, concat, set algebra, sampling.

Part of the lists category: ``lists.OPERATIONS`` gathers these operations. Set operations compare items
whole (as canonical JSON, so 1 and true differ) or by a key path.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import Field

from services.common.errors import InvalidInputError, NotFoundError
from services.executor.context import OpContext
from services.executor.ops._values import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_NODES,
    MAX_PATH_CHARS,
    check_value,
    found,
    identity,
    key_getter,
    kind,
    list_input,
)
from services.executor.ops.base import Params, operation

_ITEMS = Field(None, description="The list; the previous step's output when omitted.")
_KEY = Field(
    None,
    max_length=MAX_PATH_CHARS,
    description="A dotted path or JSON Pointer into each item (e.g. user.id); the item itself when omitted.",
)
_LISTS = Field(min_length=1, max_length=100, description="The lists.")


def _check_total(lists: list[list[Any]]) -> None:
    if sum(len(lst) for lst in lists) > MAX_ITEMS:
        raise InvalidInputError(f"lists: more than {MAX_ITEMS} items in all", param="lists")
    check_value(lists, "lists")


class ListChunkParams(Params):
    items: list[Any] | None = _ITEMS
    size: int = Field(ge=1, le=MAX_ITEMS, description="Items per chunk; the last chunk may be shorter.")


@operation("list_chunk", category="lists", params=ListChunkParams)
async def list_chunk(p: ListChunkParams, ctx: OpContext) -> list[list[Any]]:
    """Split a list into consecutive chunks of a given size (the last one may be shorter)."""
    items = list_input(p, "items", ctx)
    return [items[i : i + p.size] for i in range(0, len(items), p.size)]


class ListZipParams(Params):
    lists: list[list[Any]] = _LISTS
    names: list[str] | None = Field(
        None, max_length=100, description="Give each tuple as an object with these keys (one per list)."
    )
    mode: Literal["strict", "shortest", "longest"] = Field(
        "strict",
        description="Lists of different lengths: an error, cut to the shortest, or padded with null.",
    )


@operation("list_zip", category="lists", params=ListZipParams)
async def list_zip(p: ListZipParams, ctx: OpContext) -> list[Any]:
    """Pair up items by position across lists: [[a0, b0], [a1, b1]...] or objects keyed by names."""
    _check_total(p.lists)
    if p.names is not None and len(p.names) != len(p.lists):
        raise InvalidInputError(f"names: {len(p.names)} names for {len(p.lists)} lists", param="names")
    lengths = [len(lst) for lst in p.lists]
    if p.mode == "strict" and len(set(lengths)) > 1:
        raise InvalidInputError(
            f"lists: lengths differ ({lengths}); set mode to shortest or longest", param="lists"
        )
    if p.names is not None and len(set(p.names)) != len(p.names):
        raise InvalidInputError("names: each name must be different", param="names")
    count = max(lengths) if p.mode == "longest" else min(lengths)
    if count * len(p.lists) > MAX_NODES:
        raise InvalidInputError(f"lists: the result would hold more than {MAX_NODES} values", param="lists")
    rows = [[lst[i] if i < len(lst) else None for lst in p.lists] for i in range(count)]
    if p.names is None:
        return rows
    return [dict(zip(p.names, row, strict=True)) for row in rows]


class ListUnzipParams(Params):
    items: list[Any] | None = Field(
        None, description="A list of lists (tuples); the previous output when omitted."
    )
    fill: bool = Field(False, description="Pad short tuples with null instead of failing.")


@operation("list_unzip", category="lists", params=ListUnzipParams)
async def list_unzip(p: ListUnzipParams, ctx: OpContext) -> list[list[Any]]:
    """Turn a list of tuples into one list per position (the inverse of list_zip)."""
    items = list_input(p, "items", ctx)
    for i, item in enumerate(items):
        if not isinstance(item, list):
            raise InvalidInputError(f"items[{i}]: must be a list, not {kind(item)}", param="items", index=i)
    width = max((len(item) for item in items), default=0)
    if width * len(items) > MAX_NODES:
        raise InvalidInputError(f"items: the result would hold more than {MAX_NODES} values", param="items")
    if not p.fill:
        for i, item in enumerate(items):
            if len(item) != width:
                raise InvalidInputError(
                    f"items[{i}]: has {len(item)} values, others have {width}; set fill to pad", param="items"
                )
    return [[item[j] if j < len(item) else None for item in items] for j in range(width)]


class ListFlattenParams(Params):
    items: list[Any] | None = _ITEMS
    depth: int = Field(1, ge=1, le=MAX_DEPTH, description="How many levels of nested lists to flatten.")


def _flatten(items: list[Any], depth: int, out: list[Any]) -> None:
    for item in items:
        if isinstance(item, list) and depth > 0:
            _flatten(item, depth - 1, out)
        else:
            out.append(item)
        if len(out) > MAX_ITEMS:
            raise InvalidInputError(f"items: flattens to more than {MAX_ITEMS} items", param="items")


@operation("list_flatten", category="lists", params=ListFlattenParams)
async def list_flatten(p: ListFlattenParams, ctx: OpContext) -> list[Any]:
    """Flatten nested lists into one list, a given number of levels deep (1 by default)."""
    out: list[Any] = []
    _flatten(list_input(p, "items", ctx), p.depth, out)
    return out


class ListEndParams(Params):
    items: list[Any] | None = _ITEMS
    count: int | None = Field(
        None, ge=0, le=MAX_ITEMS, description="Return a list of this many items instead."
    )
    default: Any = Field(None, description="Returned (without count) when the list is empty.")


@operation("list_first", category="lists", params=ListEndParams)
async def list_first(p: ListEndParams, ctx: OpContext) -> Any:
    """The first item (or the default when empty), or the first ``count`` items as a list."""
    items = list_input(p, "items", ctx)
    if p.count is not None:
        return items[: p.count]
    return items[0] if items else p.default


@operation("list_last", category="lists", params=ListEndParams)
async def list_last(p: ListEndParams, ctx: OpContext) -> Any:
    """The last item (or the default when empty), or the last ``count`` items as a list."""
    items = list_input(p, "items", ctx)
    if p.count is not None:
        return items[len(items) - p.count :] if p.count else []
    return items[-1] if items else p.default


class ListNthParams(Params):
    items: list[Any] | None = _ITEMS
    index: int = Field(
        ge=-MAX_ITEMS, le=MAX_ITEMS, description="Position from 0; negative counts from the end."
    )
    default: Any = Field(None, description="Returned when there is no such position.")
    required: bool = Field(False, description="Fail with not_found instead of returning the default.")


@operation("list_nth", category="lists", params=ListNthParams)
async def list_nth(p: ListNthParams, ctx: OpContext) -> Any:
    """The item at a position (negative from the end), or the default when the list is shorter."""
    items = list_input(p, "items", ctx)
    if -len(items) <= p.index < len(items):
        return items[p.index]
    if p.required:
        raise NotFoundError(f"index: {p.index} is outside a list of {len(items)} items", param="index")
    return p.default


class ListSliceParams(Params):
    items: list[Any] | None = _ITEMS
    start: int | None = Field(
        None, ge=-MAX_ITEMS, le=MAX_ITEMS, description="First position (negative from the end)."
    )
    stop: int | None = Field(None, ge=-MAX_ITEMS, le=MAX_ITEMS, description="Position to stop before.")
    step: int = Field(
        1, ge=-MAX_ITEMS, le=MAX_ITEMS, description="Take every step-th item; negative walks back."
    )


@operation("list_slice", category="lists", params=ListSliceParams)
async def list_slice(p: ListSliceParams, ctx: OpContext) -> list[Any]:
    """The items from start up to (not including) stop, every step-th one, as Python slicing does."""
    if p.step == 0:
        raise InvalidInputError("step: must not be 0", param="step")
    return list_input(p, "items", ctx)[p.start : p.stop : p.step]


class ListReverseParams(Params):
    items: list[Any] | None = _ITEMS


@operation("list_reverse", category="lists", params=ListReverseParams)
async def list_reverse(p: ListReverseParams, ctx: OpContext) -> list[Any]:
    """The items in reverse order."""
    return list_input(p, "items", ctx)[::-1]


class ListRangeParams(Params):
    start: int = Field(0, ge=-(10**15), le=10**15, description="The first number.")
    stop: int = Field(ge=-(10**15), le=10**15, description="The number to stop before.")
    step: int = Field(1, ge=-(10**15), le=10**15, description="The difference between numbers (not 0).")


@operation("list_range", category="lists", params=ListRangeParams)
async def list_range(p: ListRangeParams, ctx: OpContext) -> list[int]:
    """The integers from start up to (not including) stop by step, at most MAX_ITEMS of them."""
    if p.step == 0:
        raise InvalidInputError("step: must not be 0", param="step")
    numbers = range(p.start, p.stop, p.step)
    if len(numbers) > MAX_ITEMS:
        raise InvalidInputError(
            f"stop: the range would hold {len(numbers)} numbers, over {MAX_ITEMS}", param="stop"
        )
    return list(numbers)


class ListConcatParams(Params):
    lists: list[list[Any]] = _LISTS


@operation("list_concat", category="lists", params=ListConcatParams)
async def list_concat(p: ListConcatParams, ctx: OpContext) -> list[Any]:
    """Join lists end to end into one list."""
    _check_total(p.lists)
    return [item for lst in p.lists for item in lst]


class ListDifferenceParams(Params):
    items: list[Any] | None = _ITEMS
    other: list[Any] = Field(max_length=MAX_ITEMS, description="Items to take away.")
    key: str | None = _KEY


def _ids(items: list[Any], key: str | None) -> list[str | None]:
    get = key_getter(key)
    return [identity(v) if found(v) else None for v in map(get, items)]


@operation("list_difference", category="lists", params=ListDifferenceParams)
async def list_difference(p: ListDifferenceParams, ctx: OpContext) -> list[Any]:
    """The items not in ``other`` (compared whole, or by a key), in their order, duplicates kept."""
    items = list_input(p, "items", ctx)
    check_value(p.other, "other")
    remove = set(_ids(p.other, p.key)) - {None}
    return [item for item, i in zip(items, _ids(items, p.key), strict=True) if i not in remove]


class ListSetParams(Params):
    lists: list[list[Any]] = _LISTS
    key: str | None = _KEY


@operation("list_intersection", category="lists", params=ListSetParams)
async def list_intersection(p: ListSetParams, ctx: OpContext) -> list[Any]:
    """The items of the first list present in every other list (whole or by key), without duplicates."""
    _check_total(p.lists)
    common = set.intersection(*(set(_ids(lst, p.key)) for lst in p.lists)) - {None}
    out: list[Any] = []
    for item, i in zip(p.lists[0], _ids(p.lists[0], p.key), strict=True):
        if i in common:
            common.discard(i)
            out.append(item)
    return out


@operation("list_union", category="lists", params=ListSetParams)
async def list_union(p: ListSetParams, ctx: OpContext) -> list[Any]:
    """The items of all lists (whole or by key) without duplicates, in first-seen order."""
    _check_total(p.lists)
    seen: set[str | None] = set()
    out: list[Any] = []
    for lst in p.lists:
        for item, i in zip(lst, _ids(lst, p.key), strict=True):
            if i is None or i not in seen:
                seen.add(i)
                out.append(item)
    return out


class ListSampleParams(Params):
    items: list[Any] | None = _ITEMS
    count: int = Field(ge=0, le=MAX_ITEMS, description="How many items to draw (without replacement).")
    seed: int | None = Field(None, description="Fix the draw, so the same seed gives the same sample.")


@operation("list_sample", category="lists", params=ListSampleParams)
async def list_sample(p: ListSampleParams, ctx: OpContext) -> list[Any]:
    """Draw a random sample of distinct positions (seedable, so reruns can repeat it)."""
    items = list_input(p, "items", ctx)
    if p.count > len(items):
        raise InvalidInputError(f"count: {p.count} is more than the {len(items)} items", param="count")
    return random.Random(p.seed).sample(items, p.count)


class ListShuffleParams(Params):
    items: list[Any] | None = _ITEMS
    seed: int | None = Field(None, description="Fix the order, so the same seed gives the same shuffle.")


@operation("list_shuffle", category="lists", params=ListShuffleParams)
async def list_shuffle(p: ListShuffleParams, ctx: OpContext) -> list[Any]:
    """The items in a random order (seedable, so reruns can repeat it)."""
    items = list(list_input(p, "items", ctx))
    random.Random(p.seed).shuffle(items)
    return items


OPERATIONS = (
    list_chunk,
    list_zip,
    list_unzip,
    list_flatten,
    list_first,
    list_last,
    list_nth,
    list_slice,
    list_reverse,
    list_range,
    list_concat,
    list_difference,
    list_intersection,
    list_union,
    list_sample,
    list_shuffle,
)
