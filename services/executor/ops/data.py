"""Data operations over JSON values."""

from __future__ import annotations

from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import Field, field_validator

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.expressions import OPEN
from services.executor.ops.base import Params, operation


class JsonTransformParams(Params):
    expression: str = Field(min_length=1, max_length=4096, description="A JMESPath expression.")
    input: Any = Field(None, description="The value to query; the previous step's output when omitted.")

    @field_validator("expression")
    @classmethod
    def _compiles(cls, value: str) -> str:
        if OPEN not in value:
            try:
                jmespath.compile(value)
            except JMESPathError as exc:
                raise ValueError(f"not a valid JMESPath expression: {exc}") from None
        return value


@operation("json_transform", category="data", params=JsonTransformParams)
async def json_transform(p: JsonTransformParams, ctx: OpContext) -> Any:
    """Query or reshape JSON with a JMESPath expression (https://jmespath.org); the output is the result."""
    value = p.input if "input" in p.model_fields_set else ctx.prev_output
    try:
        return jmespath.search(p.expression, value)
    except JMESPathError as exc:
        raise InvalidInputError(f"expression: {exc}") from exc


OPERATIONS = (json_transform,)
