"""Operation params against their models: the problems found before a run, and the error after resolving."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from services.common.errors import InvalidInputError
from services.executor import expressions
from services.executor.model import Step


def check_params(model: type[BaseModel], params: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems of params against an op's model, as (path suffix, message).

    A value holding an expression is only known at run time, so type errors at or under it are not
    reported now (the engine checks again after resolving); missing fields always are.
    """
    try:
        model.model_validate(params)
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] != "missing" and _under_expression(params, loc):
                continue
            out.append((_loc_path(loc), _message(err)))
        return out
    return []


def params_error(step: Step, exc: ValidationError) -> InvalidInputError:
    """A run-time params failure (after expressions were resolved), with paths like validation's."""
    lines = [f"{step.path}.params{_loc_path(tuple(e['loc']))}: {_message(e)}" for e in exc.errors()]
    return InvalidInputError(f"{step.label()}: " + "; ".join(lines), step_id=step.id, errors=lines)


def _loc_path(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def _message(err: Any) -> str:
    if err["type"] == "missing":
        return "required"
    if err["type"] == "extra_forbidden":
        return "unknown parameter"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _under_expression(params: Any, loc: tuple[Any, ...]) -> bool:
    value = params
    if expressions.has_expression(value) and not loc:
        return True
    for part in loc:
        if (isinstance(value, dict) and part in value) or (
            isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
        ):
            value = value[part]
        else:
            return False
        if isinstance(value, str) and expressions.OPEN in value:
            return True
    return False
