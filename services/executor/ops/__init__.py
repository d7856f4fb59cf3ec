"""The operation catalogue, by category: ``catalogue()`` is what the engine and the gateway's validation use.

Importing this package is cheap: heavy libraries (boto3) are imported inside the operations that use them.
"""

from __future__ import annotations

from functools import lru_cache

from services.executor.ops import (
    archives,
    contents,
    data,
    dates,
    encoding,
    files,
    filesystem,
    formats,
    http,
    kv,
    listing,
    lists,
    llm,
    maths,
    messaging,
    objects,
    sql,
    tarballs,
    text,
)
from services.executor.ops.base import Catalogue, Operation, Params, operation

_CATEGORIES = (
    files,
    listing,
    filesystem,
    contents,
    archives,
    tarballs,
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
