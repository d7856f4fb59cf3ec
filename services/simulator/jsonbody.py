"""Request bodies parsed with their nesting bounded: a deep document is a 400, never a RecursionError."""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64
"""Levels of arrays and objects nested in one body; far more than any provider request needs."""


def parse_json(raw: bytes) -> Any:
    """The parsed body; ValueError with a sentence naming what is wrong with it."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValueError(_TOO_DEEP) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long integer literal
        raise ValueError(f"malformed JSON body: {exc}") from exc
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_DEPTH:
                raise ValueError(_TOO_DEEP)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return value


_TOO_DEEP = f"JSON nested too deeply (more than {MAX_DEPTH} levels of arrays and objects)"
