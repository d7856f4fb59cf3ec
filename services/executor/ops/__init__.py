"""The operation catalogue, by category: ``catalogue()`` is what the engine and the gateway's validation use.

Importing this package is cheap: heavy libraries (boto3) are imported inside the operations that use them.
"""

from __future__ import annotations

from functools import lru_cache

from services.executor.ops import (
    archives,
    data,
    dates,
    encoding,
    files,
    formats,
    http,
    kv,
    lists,
    llm,
    maths,
    messaging,
    objects,
    sql,
    text,
)
from services.executor.ops.base import Catalogue, Operation, Params, operation

_CATEGORIES = (
    files,
    archives,
    objects,
    http,
    llm,
    data,
    formats,
    lists,
    text,
    encoding,
    maths,
    dates,
    kv,
    sql,
    messaging,
)


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    """Every built-in operation by name."""
    return Catalogue(op for module in _CATEGORIES for op in module.OPERATIONS)


__all__ = ["Catalogue", "Operation", "Params", "catalogue", "operation"]
