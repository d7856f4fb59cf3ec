"""JSON from clients (HTTP bodies, gRPC ``*_json`` fields): parsed once, with its nesting bounded.

Every later consumer (the workflow check, ``json.dumps``, protobuf ``Struct``) may recurse over what a client
sent, so a document deeper than MAX_DEPTH is refused here with a 400 rather than a RecursionError later.
"""

from __future__ import annotations

import json
from typing import Any

from services.common.errors import InvalidInputError

MAX_DEPTH = 64
"""Levels of arrays and objects nested in one document; far more than any workflow or chat request needs."""


def parse_json(raw: str | bytes, *, field: str | None = None, max_depth: int = MAX_DEPTH) -> Any:
    """The parsed document; InvalidInputError naming the problem (and ``field``, when it is one)."""
    subject = field or "the request body"
    details: dict[str, Any] = {"field": field} if field else {}
    too_deep = f"{subject}: JSON nested too deeply (more than {max_depth} levels of arrays and objects)"
    try:
        value = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{subject} is not UTF-8: {exc.reason}", **details) from exc
    except json.JSONDecodeError as exc:
        prefix = f"{field} is " if field else ""
        raise InvalidInputError(
            f"{prefix}malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            line=exc.lineno,
            column=exc.colno,
            **details,
        ) from exc
    except RecursionError:
        raise InvalidInputError(too_deep, **details) from None
    except ValueError as exc:  # e.g. an integer literal longer than sys.get_int_max_str_digits()
        raise InvalidInputError(f"{subject} is not valid JSON: {exc}", **details) from exc
    if _deeper_than(value, max_depth):
        raise InvalidInputError(too_deep, max_depth=max_depth, **details)
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than limit levels deep (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
