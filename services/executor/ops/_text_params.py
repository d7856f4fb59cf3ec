"""The text family's shared params: the optional, bounded ``text`` input and the output-size check."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from services.common.errors import InvalidInputError, PayloadTooLargeError
from services.executor.context import OpContext
from services.executor.ops.base import Params, input_or_prev

MAX_TEXT = 1024 * 1024
MAX_ITEMS = 100_000
_DESCRIPTION = "The text; the previous step's output when omitted."


def text_field(description: str = _DESCRIPTION) -> Any:
    """The primary ``text`` param: optional (the pipeline convenience), bounded."""
    return Field(None, max_length=MAX_TEXT, description=description)


def json_kind(value: Any) -> str:
    """The JSON name of a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a string" if isinstance(value, str) else type(value).__name__


def text_input(p: Params, ctx: OpContext, field: str = "text") -> str:
    """The op's text param, or the previous step's output, checked to be a string of bounded length."""
    value = input_or_prev(p, field, ctx)
    if not isinstance(value, str):
        raise InvalidInputError(f"{field}: must be a string, not {json_kind(value)}", param=field)
    if len(value) > MAX_TEXT:
        raise InvalidInputError(f"{field}: is {len(value)} characters; the limit is {MAX_TEXT}", param=field)
    return value


def output_limit(ctx: OpContext) -> int:
    """The most characters a text result may have (the engine's step-output limit)."""
    return ctx.services.max_output_bytes


def check_size(size: int, ctx: OpContext, param: str) -> None:
    """Refuse, before building it, a result of ``size`` characters over the output limit."""
    limit = output_limit(ctx)
    if size > limit:
        raise PayloadTooLargeError(
            f"{param}: the result would be {size} characters; the limit is {limit}", param=param
        )
