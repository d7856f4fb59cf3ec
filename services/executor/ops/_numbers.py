"""Number lists as the math and statistics operations take them: checked, finite, bounded."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import Field, StrictFloat, StrictInt

from services.common.errors import InvalidInputError
from services.executor.ops.base import Params

MAX_ITEMS = 100_000
"""The longest list a math or statistics step takes."""
THREAD_ABOVE = 5_000
"""Lists longer than this are crunched off the event loop."""

Number = int | float
FiniteNumber = StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)]
NumberList = Annotated[list[FiniteNumber], Field(max_length=MAX_ITEMS)]

T = TypeVar("T")


class ItemsParams(Params):
    """Params of an operation over one list of numbers."""

    items: NumberList | None = Field(
        None, description="The numbers; the previous step's output when omitted."
    )


def kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def number(value: Any, param: str) -> Number:
    """``value`` if it is a finite number, else an InvalidInputError naming ``param``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{param}: expected a number, got {kind(value)}", param=param)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{param}: {value} is not a finite number", param=param)
    return value


def numbers(value: Any, param: str, *, at_least: int = 1) -> list[Number]:
    """``value`` as a list of finite numbers with at least ``at_least`` items, or a clear error."""
    if not isinstance(value, list):
        raise InvalidInputError(f"{param}: expected a list of numbers, got {kind(value)}", param=param)
    if len(value) > MAX_ITEMS:
        raise InvalidInputError(f"{param}: at most {MAX_ITEMS} numbers, got {len(value)}", param=param)
    out = [number(item, f"{param}[{index}]") for index, item in enumerate(value)]
    if len(out) < at_least:
        raise InvalidInputError(
            f"{param}: needs at least {at_least} number{'s' if at_least > 1 else ''}, got {len(out)}",
            param=param,
        )
    return out


def finite(value: Number, what: str, param: str) -> Number:
    """A computed result, refused if it overflowed to infinity or NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{param}: the {what} is not a finite number (overflow)", param=param)
    return value


async def crunch(fn: Callable[[], T], size: int) -> T:
    """Run ``fn`` inline for small inputs, in a worker thread for big ones (keeps the event loop free)."""
    if size > THREAD_ABOVE:
        return await asyncio.to_thread(fn)
    return fn()
