"""The workflow DSL: parse and validate a whole document before anything runs.

The article's form is accepted as is: ``{"name": ..., "steps": [{"type": ..., "params": {...}}]}``. Every
problem is reported with its path (``steps[1].params.url: required``); the gateway calls
``parse_workflow`` at submit time and the executor again before running.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

from pydantic import BaseModel, ValidationError

from services.common.errors import InvalidInputError
from services.executor import expressions
from services.executor.expressions import ExpressionError

DSL_VERSION = 1
MAX_STEPS = 200
STEP_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_TOP_FIELDS = ("name", "description", "version", "inputs", "steps", "outputs")
_STEP_FIELDS = ("id", "type", "params", "description")
_INPUT_FIELDS = ("description", "default", "required")


@runtime_checkable
class ParamsSchemas(Protocol):
    """What parse_workflow needs to check params as well as names (the operation catalogue has it)."""

    def params_model(self, op_name: str) -> type[BaseModel] | None: ...


@dataclass(frozen=True)
class Step:
    """One step: its id (given, or ``step<n>`` by position), operation type and raw params."""

    index: int
    id: str
    type: str
    params: dict[str, Any]
    description: str = ""

    @property
    def path(self) -> str:
        """Where the step is in the document, for error messages: ``steps[1]``."""
        return f"steps[{self.index}]"

    def label(self) -> str:
        return f"step {self.id!r} ({self.path}, {self.type})"


@dataclass(frozen=True)
class InputSpec:
    """A declared workflow input."""

    name: str
    description: str = ""
    required: bool = False
    default: Any = None
    has_default: bool = False


@dataclass(frozen=True)
class Workflow:
    """A validated workflow document."""

    name: str
    steps: tuple[Step, ...]
    outputs: dict[str, Any] | None = None
    inputs: dict[str, InputSpec] = field(default_factory=dict)
    description: str = ""
    version: int = DSL_VERSION

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def bind_inputs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The inputs a run sees: given values over declared defaults; InvalidInputError if one is missing."""
        out = dict(given)
        problems = []
        for spec in self.inputs.values():
            if spec.name in out:
                continue
            if spec.has_default:
                out[spec.name] = spec.default
            elif spec.required:
                problems.append(f"inputs.{spec.name}: required")
        if problems:
            raise InvalidInputError("; ".join(problems), errors=problems)
        return out


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = [f"{p}: {m}" if p else m for p, m in self.items]
        message = lines[0] if len(lines) == 1 else f"{len(lines)} problems in workflow:\n" + "\n".join(lines)
        raise InvalidInputError(message, errors=[{"path": p, "message": m} for p, m in self.items])


def parse_workflow(doc: Any, *, known_ops: Collection[str]) -> Workflow:
    """Validate a workflow document (a dict, or its JSON text) and return it parsed.

    ``known_ops`` names the operations; when it also provides params models (the catalogue from
    ``services.executor.ops.catalogue()`` does) each step's params are checked against its op's model.
    Raises InvalidInputError listing every problem by path; ``details["errors"]`` has them as data.
    """
    if isinstance(doc, str | bytes):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            raise InvalidInputError(f"workflow is not valid JSON: {exc}") from exc
    problems = _Problems()
    if not isinstance(doc, dict):
        problems.add("", f"a workflow must be a JSON object, not {_kind(doc)}")
        problems.raise_if_any()
    for key in doc:
        if key not in _TOP_FIELDS:
            problems.add(str(key), f"unknown field; allowed: {', '.join(_TOP_FIELDS)}")

    name = doc.get("name", "workflow")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        problems.add("name", "must be a non-empty string of at most 200 characters")
        name = "workflow"
    description = doc.get("description", "")
    if not isinstance(description, str):
        problems.add("description", "must be a string")
        description = ""
    version = doc.get("version", DSL_VERSION)
    if version != DSL_VERSION or isinstance(version, bool):
        problems.add("version", f"unsupported version {version!r}; this executor supports {DSL_VERSION}")

    inputs = _parse_inputs(doc.get("inputs", {}), problems)
    steps = _parse_steps(doc.get("steps"), known_ops, problems)
    ids = [s.id for s in steps]

    for step in steps:
        _check_references(
            step.params, f"{step.path}.params", ids[: step.index], inputs, problems, all_ids=ids
        )

    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, dict) or not outputs:
            problems.add("outputs", "must be a non-empty object mapping names to values or expressions")
            outputs = None
        else:
            _check_references(outputs, "outputs", ids, inputs, problems, prev_ok=bool(steps), all_ids=ids)
    problems.raise_if_any()
    return Workflow(
        name=name,
        steps=tuple(steps),
        outputs=outputs,
        inputs=inputs,
        description=description,
        version=DSL_VERSION,
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _parse_inputs(raw: Any, problems: _Problems) -> dict[str, InputSpec]:
    if not isinstance(raw, dict):
        problems.add("inputs", "must be an object mapping input names to {description, default, required}")
        return {}
    out: dict[str, InputSpec] = {}
    for name, spec in raw.items():
        where = f"inputs.{name}"
        if not INPUT_NAME.match(str(name)):
            problems.add(where, "input names are letters, digits and '_', starting with a letter or '_'")
            continue
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            problems.add(where, "must be an object with description, default and required")
            continue
        for key in spec:
            if key not in _INPUT_FIELDS:
                problems.add(f"{where}.{key}", f"unknown field; allowed: {', '.join(_INPUT_FIELDS)}")
        required = spec.get("required", False)
        if not isinstance(required, bool):
            problems.add(f"{where}.required", "must be true or false")
            required = False
        out[name] = InputSpec(
            name=name,
            description=str(spec.get("description", "")),
            required=required,
            default=spec.get("default"),
            has_default="default" in spec,
        )
    return out


def _parse_steps(raw: Any, known_ops: Collection[str], problems: _Problems) -> list[Step]:
    if raw is None:
        problems.add("steps", "required")
        return []
    if not isinstance(raw, list) or not raw:
        problems.add("steps", "must be a non-empty list of steps")
        return []
    if len(raw) > MAX_STEPS:
        problems.add("steps", f"at most {MAX_STEPS} steps are allowed, got {len(raw)}")
        return []
    # The duck test the runtime-checkable isinstance() would do, without its cost on every submit.
    schemas = cast(ParamsSchemas, known_ops) if callable(getattr(known_ops, "params_model", None)) else None
    steps: list[Step] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        where = f"steps[{i}]"
        if not isinstance(item, dict):
            problems.add(where, f"a step must be an object with type and params, not {_kind(item)}")
            continue
        for key in item:
            if key not in _STEP_FIELDS:
                problems.add(f"{where}.{key}", f"unknown field; allowed: {', '.join(_STEP_FIELDS)}")
        step_id = item.get("id", f"step{i + 1}")
        if not isinstance(step_id, str) or not STEP_ID.match(step_id):
            problems.add(
                f"{where}.id",
                "step ids are 1-64 letters, digits and '_', starting with a letter",
            )
            step_id = f"step{i + 1}"
        elif step_id in seen:
            problems.add(f"{where}.id", f"duplicate step id {step_id!r} (also steps[{seen[step_id]}])")
        seen.setdefault(step_id, i)
        op = item.get("type")
        if not isinstance(op, str) or not op:
            problems.add(f"{where}.type", "required: the operation to run, e.g. 'http_request'")
            op = ""
        elif op not in known_ops:
            problems.add(f"{where}.type", f"unknown step type {op!r}; known: {', '.join(sorted(known_ops))}")
        params = item.get("params", {})
        params_ok = isinstance(params, dict)
        if not params_ok:
            problems.add(f"{where}.params", f"must be an object, not {_kind(params)}")
            params = {}
        description = item.get("description", "")
        if not isinstance(description, str):
            problems.add(f"{where}.description", "must be a string")
            description = ""
        model = schemas.params_model(op) if schemas is not None and op in known_ops else None
        if model is not None and params_ok:
            for path, message in check_params(model, params):
                problems.add(f"{where}.params{path}", message)
        steps.append(Step(index=i, id=step_id, type=op, params=params, description=description))
    return steps


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


def _check_references(
    value: Any,
    where: str,
    earlier: list[str],
    inputs: dict[str, InputSpec],
    problems: _Problems,
    *,
    all_ids: list[str],
    prev_ok: bool | None = None,
) -> None:
    """Each expression must name an earlier step, a declared input (when inputs are declared), etc."""
    has_prev = bool(earlier) if prev_ok is None else prev_ok
    for path, text in expressions.strings(value):
        try:
            template = expressions.compile_template(text)
        except ExpressionError as exc:
            problems.add(f"{where}{path}", exc.message)
            continue
        if template is None:
            continue
        for expr in template.paths:
            loc = f"{where}{path}"
            if expr.root == "steps":
                target = expr.accessors[0] if expr.accessors else None
                if not isinstance(target, str):
                    problems.add(loc, f"{expr}: name a step, e.g. steps.step1.output")
                elif target not in earlier:
                    problems.add(loc, _unknown_step(expr, target, earlier, all_ids))
            elif expr.root == "prev" and not has_prev:
                problems.add(loc, f"{expr}: the first step has no previous step")
            elif expr.root == "inputs" and inputs:
                name = expr.accessors[0] if expr.accessors else None
                if isinstance(name, str) and name not in inputs:
                    problems.add(
                        loc, f"{expr}: unknown input {name!r}; declared: {', '.join(sorted(inputs))}"
                    )


def _unknown_step(expr: expressions.Path, target: str, earlier: list[str], all_ids: list[str]) -> str:
    if target in all_ids:
        return f"{expr}: step {target!r} runs later; a step can only use earlier steps' outputs"
    if not earlier:
        return f"{expr}: unknown step {target!r}; no step runs before this one"
    return f"{expr}: unknown step {target!r}; earlier steps: {', '.join(earlier)}"
