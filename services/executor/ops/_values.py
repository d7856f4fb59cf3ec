"""JSON values as operations see them: size bounds, paths (dotted or JSON Pointer) and JMESPath compiling.

Shared by the formats and lists categories' modules; it defines no operation itself.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import math
from collections.abc import Callable
from typing import Annotated, Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult
from pydantic import AfterValidator, BaseModel, Field

from services.common.errors import InvalidInputError, NotFoundError
from services.executor.context import OpContext
from services.executor.expressions import OPEN
from services.executor.ops.base import input_or_prev

MAX_DEPTH = 64
MAX_NODES = 1_000_000
MAX_TEXT_CHARS = 4 * 1024 * 1024
MAX_ITEMS = 100_000
MAX_PATH_CHARS = 1024
MAX_EXPRESSION_CHARS = 4096

_MISSING = object()


def check_value(value: Any, param: str) -> None:
    """Refuse values nested deeper than MAX_DEPTH or holding more than MAX_NODES values.

    The walk stops at the limit, so a YAML alias bomb (shared nodes that expand exponentially) is refused
    after MAX_NODES steps instead of being expanded.
    """
    nodes = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise InvalidInputError(f"{param}: holds more than {MAX_NODES} values", param=param)
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise InvalidInputError(f"{param}: nested deeper than {MAX_DEPTH} levels", param=param)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def count_nodes(value: Any, limit: int = MAX_NODES) -> int:
    """How many values ``value`` holds (itself included), counting no further than ``limit + 1``."""
    nodes = 0
    stack = [value]
    while stack and nodes <= limit:
        item = stack.pop()
        nodes += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return nodes


def value_input(p: BaseModel, field: str, ctx: OpContext) -> Any:
    """The field's value (or the previous step's output), checked against the size bounds."""
    value = input_or_prev(p, field, ctx)
    check_value(value, field)
    return value


def text_input(p: BaseModel, field: str, ctx: OpContext) -> str:
    """The field's text (or the previous step's output, which must then be text), bounded in length."""
    value = input_or_prev(p, field, ctx)
    if not isinstance(value, str):
        raise InvalidInputError(f"{field}: must be text, not {kind(value)}", param=field)
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInputError(f"{field}: longer than {MAX_TEXT_CHARS} characters", param=field)
    return value


def list_input(p: BaseModel, field: str, ctx: OpContext) -> list[Any]:
    """The field's list (or the previous step's output, which must then be a list), bounded in size."""
    value = input_or_prev(p, field, ctx)
    if not isinstance(value, list):
        raise InvalidInputError(f"{field}: must be a list, not {kind(value)}", param=field)
    if len(value) > MAX_ITEMS:
        raise InvalidInputError(f"{field}: more than {MAX_ITEMS} items", param=field)
    check_value(value, field)
    return value


def dict_input(p: BaseModel, field: str, ctx: OpContext) -> dict[str, Any]:
    """The field's object (or the previous step's output, which must then be an object), bounded in size."""
    value = input_or_prev(p, field, ctx)
    if not isinstance(value, dict):
        raise InvalidInputError(f"{field}: must be an object, not {kind(value)}", param=field)
    if len(value) > MAX_ITEMS:
        raise InvalidInputError(f"{field}: more than {MAX_ITEMS} keys", param=field)
    check_value(value, field)
    return value


def kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def identity(value: Any) -> str:
    """A hashable identity of a JSON value (canonical JSON), so objects and lists can be compared in sets."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def to_json(value: Any, where: str = "") -> Any:
    """A parser's result as plain JSON: dates become ISO text, bytes base64, sets lists, keys text.

    NaN and infinities have no JSON form and are refused, naming where they are.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"text: {where or 'the value'} is {value}, which JSON cannot hold")
        return value
    if isinstance(value, dict):
        return {_key(k): to_json(v, f"{where}.{_key(k)}" if where else _key(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        return [to_json(v, where) for v in sorted(value, key=repr)]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _key(key: Any) -> str:
    if isinstance(key, bool) or key is None:
        return "null" if key is None else str(key).lower()
    return str(key)


# Paths: "a.b.0.c" (dotted; "\." escapes a dot) or "/a/b/0/c" (RFC 6901 JSON Pointer).


def parse_path(path: str, param: str = "path") -> list[str]:
    """The segments of a dotted path or a JSON Pointer ("" and "/" style); refuses empty segments."""
    if len(path) > MAX_PATH_CHARS:
        raise InvalidInputError(f"{param}: longer than {MAX_PATH_CHARS} characters", param=param)
    if path == "":
        return []
    if path.startswith("/"):
        return [seg.replace("~1", "/").replace("~0", "~") for seg in path[1:].split("/")]
    parts: list[str] = []
    current = ""
    escaped = False
    for ch in path:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ".":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    if any(part == "" for part in parts):
        raise InvalidInputError(f"{param}: {path!r} has an empty segment", param=param)
    return parts


def _index(container: list[Any], segment: str, *, append: bool = False) -> int | None:
    if append and segment == "-":
        return len(container)
    if not segment.lstrip("-").isdigit():
        return None
    i = int(segment)
    i = i + len(container) if i < 0 else i
    return i if 0 <= i < len(container) + (1 if append else 0) else None


def lookup(doc: Any, parts: list[str]) -> Any:
    """The value at ``parts`` in ``doc``, or the module's missing sentinel (see ``found``)."""
    value = doc
    for seg in parts:
        if isinstance(value, dict):
            if seg not in value:
                return _MISSING
            value = value[seg]
        elif isinstance(value, list):
            i = _index(value, seg)
            if i is None:
                return _MISSING
            value = value[i]
        else:
            return _MISSING
    return value


def found(value: Any) -> bool:
    """Whether ``lookup`` found something."""
    return value is not _MISSING


def set_path(doc: Any, parts: list[str], new: Any, *, create: bool, path: str, param: str = "path") -> Any:
    """A copy of ``doc`` with ``new`` at ``parts`` (intermediate objects made when ``create``)."""
    if not parts:
        return copy.deepcopy(new)
    root = copy.deepcopy(doc)
    parent = root
    for depth, seg in enumerate(parts[:-1]):
        if isinstance(parent, dict):
            if seg not in parent:
                if not create:
                    raise NotFoundError(f"{param}: nothing at {_prefix(parts, depth)!r} (in {path!r})")
                parent[seg] = {}
            parent = parent[seg]
        elif isinstance(parent, list):
            i = _index(parent, seg)
            if i is None:
                raise NotFoundError(f"{param}: no list item {seg!r} at {_prefix(parts, depth)!r}")
            parent = parent[i]
        else:
            raise InvalidInputError(
                f"{param}: {_prefix(parts, depth - 1) or 'the root'!r} is {kind(parent)}, not an object or list",
                param=param,
            )
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(new)
    elif isinstance(parent, list):
        i = _index(parent, last, append=True)
        if i is None:
            raise InvalidInputError(f"{param}: {last!r} is not an index of the list in {path!r}", param=param)
        if i == len(parent):
            parent.append(copy.deepcopy(new))
        else:
            parent[i] = copy.deepcopy(new)
    else:
        raise InvalidInputError(f"{param}: the parent of {path!r} is {kind(parent)}", param=param)
    return root


def delete_in_place(doc: Any, parts: list[str]) -> bool:
    """Remove the value at ``parts`` from ``doc`` (mutating it); False when there was nothing there."""
    if not parts:
        return False
    parent = lookup(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
        return True
    if isinstance(parent, list):
        i = _index(parent, last)
        if i is not None:
            del parent[i]
            return True
    return False


def _prefix(parts: list[str], depth: int) -> str:
    return ".".join(parts[: depth + 1])


def key_getter(key: str | None, param: str = "key") -> Callable[[Any], Any]:
    """A function reading the dotted/pointer ``key`` path from an item (the item itself when None).

    Missing values read as the missing sentinel, so callers decide between an error and a default.
    """
    if key is None:
        return lambda item: item
    parts = parse_path(key, param)
    return lambda item: lookup(item, parts)


def _jmespath_compiles(value: str) -> str:
    if OPEN not in value:  # an expression is resolved at run time and compiled then
        try:
            jmespath.compile(value)
        except JMESPathError as exc:
            raise ValueError(f"not a valid JMESPath expression: {exc}") from None
    return value


JmesPath = Annotated[
    str, Field(min_length=1, max_length=MAX_EXPRESSION_CHARS), AfterValidator(_jmespath_compiles)
]


def truthy(value: Any) -> bool:
    """JMESPath's truth: false, null, and empty text, lists and objects are false."""
    return not (value is None or value is False or (isinstance(value, str | list | dict) and not value))


def compile_jmespath(expression: str, param: str = "expression") -> ParsedResult:
    """A compiled JMESPath expression; InvalidInputError naming the param if it does not parse."""
    try:
        return jmespath.compile(expression)
    except JMESPathError as exc:
        raise InvalidInputError(f"{param}: not a valid JMESPath expression: {exc}", param=param) from None


def search(compiled: ParsedResult, value: Any, param: str = "expression") -> Any:
    """Run a compiled JMESPath expression; a type error in it (e.g. ``length(`1`)``) is bad input."""
    try:
        return compiled.search(value)
    except JMESPathError as exc:
        raise InvalidInputError(f"{param}: {exc}", param=param) from None
