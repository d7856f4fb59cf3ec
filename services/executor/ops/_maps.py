"""Map (JSON object) operations: keys, values, entries, invert, rename, defaults, filter and transform.

Every operation returns a new object; key order is kept, as JSON objects carry it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops._values import (
    JmesPath,
    check_value,
    compile_jmespath,
    dict_input,
    identity,
    kind,
    list_input,
    search,
    truthy,
)
from services.executor.ops.base import Params, operation

_INPUT = Field(None, description="The object; the previous step's output when omitted.")
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z0-9])|[A-Z]?[a-z0-9]+|[A-Z]+|[0-9]+")


class MapInputParams(Params):
    input: dict[str, Any] | None = _INPUT


@operation("map_keys", category="maps", params=MapInputParams)
async def map_keys(p: MapInputParams, ctx: OpContext) -> list[str]:
    """The keys of an object, in order."""
    return list(dict_input(p, "input", ctx))


@operation("map_values", category="maps", params=MapInputParams)
async def map_values(p: MapInputParams, ctx: OpContext) -> list[Any]:
    """The values of an object, in key order."""
    return list(dict_input(p, "input", ctx).values())


@operation("map_entries", category="maps", params=MapInputParams)
async def map_entries(p: MapInputParams, ctx: OpContext) -> list[dict[str, Any]]:
    """The entries of an object as [{"key": k, "value": v}, ...] (the inverse of map_from_entries)."""
    return [{"key": k, "value": v} for k, v in dict_input(p, "input", ctx).items()]


class MapFromEntriesParams(Params):
    items: list[Any] | None = Field(
        None, description='Entries: {"key", "value"} objects or [key, value] pairs; else the previous output.'
    )
    duplicates: Literal["error", "first", "last"] = Field(
        "last", description="A repeated key: an error, or keep the first or the last value."
    )


def _entry(i: int, entry: Any) -> tuple[str, Any]:
    if isinstance(entry, dict) and set(entry) == {"key", "value"}:
        key, value = entry["key"], entry["value"]
    elif isinstance(entry, list) and len(entry) == 2:
        key, value = entry
    else:
        raise InvalidInputError(
            f'items[{i}]: must be {{"key": ..., "value": ...}} or a [key, value] pair, not {kind(entry)}',
            param="items",
            index=i,
        )
    if isinstance(key, bool) or not isinstance(key, str | int | float):
        raise InvalidInputError(
            f"items[{i}]: the key must be text or a number, not {kind(key)}", param="items"
        )
    return str(key), value


@operation("map_from_entries", category="maps", params=MapFromEntriesParams)
async def map_from_entries(p: MapFromEntriesParams, ctx: OpContext) -> dict[str, Any]:
    """Build an object from {"key", "value"} entries or [key, value] pairs."""
    out: dict[str, Any] = {}
    for i, entry in enumerate(list_input(p, "items", ctx)):
        key, value = _entry(i, entry)
        if key in out:
            if p.duplicates == "error":
                raise InvalidInputError(f"items[{i}]: key {key!r} appears twice", param="items", index=i)
            if p.duplicates == "first":
                continue
        out[key] = value
    return out


class MapInvertParams(Params):
    input: dict[str, Any] | None = _INPUT
    duplicates: Literal["error", "first", "last", "collect"] = Field(
        "error",
        description="Two keys with the same value: an error, keep the first or last, or collect keys in a list.",
    )


@operation("map_invert", category="maps", params=MapInvertParams)
async def map_invert(p: MapInvertParams, ctx: OpContext) -> dict[str, Any]:
    """Swap keys and values: {"a": "x"} becomes {"x": "a"}; values must be text, numbers or booleans."""
    out: dict[str, Any] = {}
    for key, value in dict_input(p, "input", ctx).items():
        if value is None or isinstance(value, dict | list):
            raise InvalidInputError(
                f"input.{key}: is {kind(value)}, which cannot become a key", param="input"
            )
        name = value if isinstance(value, str) else identity(value)
        if p.duplicates == "collect":
            out.setdefault(name, []).append(key)
            continue
        if name in out and p.duplicates == "error":
            raise InvalidInputError(
                f"input.{key}: value {name!r} is also the value of {out[name]!r}; set duplicates",
                param="input",
            )
        if name not in out or p.duplicates == "last":
            out[name] = key
    return out


class MapRenameKeysParams(Params):
    input: dict[str, Any] | None = _INPUT
    mapping: dict[str, str] = Field(
        max_length=10_000, description="Old key to new key; other keys stay as they are."
    )


@operation("map_rename_keys", category="maps", params=MapRenameKeysParams)
async def map_rename_keys(p: MapRenameKeysParams, ctx: OpContext) -> dict[str, Any]:
    """Rename keys by a mapping, keeping their places; two keys landing on the same name is an error."""
    out: dict[str, Any] = {}
    source: dict[str, str] = {}
    for key, value in dict_input(p, "input", ctx).items():
        name = p.mapping.get(key, key)
        if name in out:
            raise InvalidInputError(
                f"mapping: {key!r} and {source[name]!r} would both be named {name!r}", param="mapping"
            )
        out[name] = value
        source[name] = key
    return out


def _fill(target: dict[str, Any], defaults: dict[str, Any], deep: bool) -> dict[str, Any]:
    out = dict(target)
    for key, value in defaults.items():
        if key not in out or out[key] is None:
            out[key] = copy.deepcopy(value)
        elif deep and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _fill(out[key], value, deep)
    return out


class MapDefaultsParams(Params):
    input: dict[str, Any] | None = _INPUT
    defaults: dict[str, Any] = Field(description="Values for keys the object lacks (or holds null for).")
    deep: bool = Field(True, description="Fill nested objects too, key by key.")


@operation("map_defaults", category="maps", params=MapDefaultsParams)
async def map_defaults(p: MapDefaultsParams, ctx: OpContext) -> dict[str, Any]:
    """Fill in missing or null keys from defaults (nested objects too); existing values win."""
    doc = dict_input(p, "input", ctx)
    check_value(p.defaults, "defaults")
    return _fill(doc, p.defaults, p.deep)


class MapFilterParams(Params):
    input: dict[str, Any] | None = _INPUT
    expression: JmesPath = Field(
        description='A JMESPath test run on {"key": k, "value": v} per entry, e.g. value > `0`.'
    )


@operation("map_filter", category="maps", params=MapFilterParams)
async def map_filter(p: MapFilterParams, ctx: OpContext) -> dict[str, Any]:
    """Keep the entries for which a JMESPath test on {"key", "value"} is true."""
    doc = dict_input(p, "input", ctx)
    compiled = compile_jmespath(p.expression)
    return {k: v for k, v in doc.items() if truthy(search(compiled, {"key": k, "value": v}))}


def _words(key: str) -> list[str]:
    return _WORDS.findall(key)


_CASES: dict[str, Callable[[str], str]] = {
    "lower": lambda key: key.lower(),
    "upper": lambda key: key.upper(),
    "snake": lambda key: "_".join(w.lower() for w in _words(key)),
    "kebab": lambda key: "-".join(w.lower() for w in _words(key)),
    "camel": lambda key: "".join(
        w.lower() if i == 0 else w[:1].upper() + w[1:].lower() for i, w in enumerate(_words(key))
    ),
    "pascal": lambda key: "".join(w[:1].upper() + w[1:].lower() for w in _words(key)),
}


class MapTransformKeysParams(Params):
    input: dict[str, Any] | None = _INPUT
    case: Literal["keep", "lower", "upper", "snake", "kebab", "camel", "pascal"] = Field(
        "keep",
        description="Rewrite each key in this case (snake: user_id, camel: userId, kebab: user-id...).",
    )
    prefix: str = Field("", max_length=100, description="Added before each (re-cased) key.")
    strip_prefix: str = Field(
        "", max_length=100, description="Removed from the start of keys that have it, first."
    )
    deep: bool = Field(False, description="Also rewrite keys of nested objects (inside lists too).")


def _transform_keys(value: Any, p: MapTransformKeysParams, where: str) -> Any:
    if isinstance(value, list):
        return [_transform_keys(v, p, f"{where}[{i}]") if p.deep else v for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    source: dict[str, str] = {}
    for key, item in value.items():
        name = key.removeprefix(p.strip_prefix) if p.strip_prefix else key
        name = p.prefix + (name if p.case == "keep" else _CASES[p.case](name))
        if name in out:
            raise InvalidInputError(
                f"{where}: keys {source[name]!r} and {key!r} both become {name!r}", param="input"
            )
        out[name] = _transform_keys(item, p, f"{where}.{key}") if p.deep else item
        source[name] = key
    return out


@operation("map_transform_keys", category="maps", params=MapTransformKeysParams)
async def map_transform_keys(p: MapTransformKeysParams, ctx: OpContext) -> dict[str, Any]:
    """Rewrite every key (change case, strip or add a prefix), optionally through nested objects."""
    doc = dict_input(p, "input", ctx)
    check_value(doc, "input")
    out: dict[str, Any] = _transform_keys(doc, p, "input")
    return out


class MapTransformValuesParams(Params):
    input: dict[str, Any] | None = _INPUT
    expression: JmesPath = Field(description="A JMESPath expression run on each value, e.g. to_string(@).")


@operation("map_transform_values", category="maps", params=MapTransformValuesParams)
async def map_transform_values(p: MapTransformValuesParams, ctx: OpContext) -> dict[str, Any]:
    """Replace each value with the result of a JMESPath expression run on it; keys are kept."""
    doc = dict_input(p, "input", ctx)
    compiled = compile_jmespath(p.expression)
    return {k: search(compiled, v) for k, v in doc.items()}


OPERATIONS = (
    map_keys,
    map_values,
    map_entries,
    map_from_entries,
    map_invert,
    map_rename_keys,
    map_defaults,
    map_filter,
    map_transform_keys,
    map_transform_values,
)
