"""The workflow DSL: parse and validate a whole document before anything runs.

The article's form is accepted as is: ``{"name": ..., "steps": [{"type": ..., "params": {...}}]}``. Every
problem is reported with its path (``steps[2].params.url: required``); the gateway calls
``parse_workflow`` at submit time and the executor again before running. The document's shape is also
published as a JSON Schema (``workflow.schema.json``, see ``schema.py``); tests keep the two in step.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Collection
from typing import Any, cast

from services.common.errors import InvalidInputError, NotFoundError
from services.common.waits import SIGNAL_NAME
from services.executor import expressions
from services.executor.agent_spec import check_agent
from services.executor.model import (
    CONTROL_TYPES,
    DSL_VERSION,
    MAX_BACKOFF_S,
    MAX_BRANCHES,
    MAX_CONCURRENCY,
    MAX_DEPTH,
    MAX_RETRY_ATTEMPTS,
    MAX_STEPS,
    MAX_TIMEOUT_S,
    MAX_WAIT_S,
    SUPPORTED_VERSIONS,
    InputSpec,
    ParamsSchemas,
    RetryPolicy,
    Step,
    Workflow,
    parse_time,
    walk_steps,
)
from services.executor.params import check_params, params_error
from services.executor.scopes import Problems, check_references
from services.executor.templates import load_template

__all__ = [
    "DSL_VERSION",
    "InputSpec",
    "RetryPolicy",
    "Step",
    "Workflow",
    "check_params",
    "params_error",
    "parse_workflow",
    "walk_steps",
]

STEP_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ERROR_CODE = re.compile(r"^[a-z][a-z_]{0,63}$")
_TOP_FIELDS = ("name", "description", "version", "inputs", "steps", "outputs")
_INPUT_FIELDS = ("description", "default", "required")
_COMMON = ("id", "type", "description", "when", "catch", "continue_on_error")
_STEP_FIELDS: dict[str, tuple[str, ...]] = {
    "": (*_COMMON[:3], "params", *_COMMON[3:], "timeout", "retry"),
    "foreach": (*_COMMON, "items", "concurrency", "steps"),
    "parallel": (*_COMMON, "branches"),
    "workflow": (*_COMMON, "template", "workflow", "inputs"),
    "wait": (*_COMMON, "seconds", "until", "signal", "timeout"),
    "agent": (*_COMMON, "agent"),
}
_RETRY_FIELDS = ("attempts", "backoff", "on")
_BACKOFF_FIELDS = ("initial_s", "max_s", "multiplier")


CACHED_WORKFLOW_CHARS = 16 * 1024
"""Parsed workflows are cached by their text up to this size (gateway and executor, 256 each), so whatever tenants
submit the caches hold a few tens of MiB at worst; bigger workflows are parsed every time."""


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
    problems = Problems()
    workflow = _Parser(known_ops, problems, _Budget()).document(doc, "", depth=0)
    problems.raise_if_any()
    assert workflow is not None
    return workflow


class _Budget:
    """Steps left for the whole document, called workflows included."""

    def __init__(self) -> None:
        self.left = MAX_STEPS
        self.reported = False


class _Parser:
    """One document's parse: its step ids are unique across it, nested steps included."""

    def __init__(self, known_ops: Collection[str], problems: Problems, budget: _Budget) -> None:
        self.known_ops = known_ops
        self.problems = problems
        self.budget = budget
        self.ids: dict[str, str] = {}
        # The duck test the runtime-checkable isinstance() would do, without its cost on every submit.
        self.schemas = (
            cast(ParamsSchemas, known_ops) if callable(getattr(known_ops, "params_model", None)) else None
        )

    def add(self, path: str, message: str) -> None:
        self.problems.add(path, message)

    def document(self, doc: Any, prefix: str, *, depth: int) -> Workflow | None:
        """A whole document at ``prefix`` (``""`` for the task's, ``steps[1].workflow.`` for a called one)."""
        if not isinstance(doc, dict):
            self.add(prefix.rstrip("."), f"a workflow must be a JSON object, not {_kind(doc)}")
            return None
        for key in doc:
            if key not in _TOP_FIELDS:
                self.add(f"{prefix}{key}", f"unknown field; allowed: {', '.join(_TOP_FIELDS)}")
        name = doc.get("name", "workflow")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            self.add(f"{prefix}name", "must be a non-empty string of at most 200 characters")
            name = "workflow"
        description = doc.get("description", "")
        if not isinstance(description, str):
            self.add(f"{prefix}description", "must be a string")
            description = ""
        version = doc.get("version", DSL_VERSION)
        if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
            supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
            self.add(
                f"{prefix}version", f"unsupported version {version!r}; this executor supports {supported}"
            )
        inputs = self.inputs(doc.get("inputs", {}), f"{prefix}inputs")
        raw_steps = doc.get("steps")
        if raw_steps is None:
            self.add(f"{prefix}steps", "required")
            steps: tuple[Step, ...] = ()
        else:
            steps = self.sequence(raw_steps, f"{prefix}steps", depth=depth, default_id="step{n}")
        outputs = doc.get("outputs")
        if outputs is not None and (not isinstance(outputs, dict) or not outputs):
            self.add(f"{prefix}outputs", "must be a non-empty object mapping names to values or expressions")
            outputs = None
        check_references(steps, outputs, inputs, self.problems, outputs_path=f"{prefix}outputs")
        return Workflow(
            name=name,
            steps=steps,
            outputs=outputs,
            inputs=inputs,
            description=description,
            version=DSL_VERSION,
        )

    def inputs(self, raw: Any, where: str) -> dict[str, InputSpec]:
        if not isinstance(raw, dict):
            self.add(where, "must be an object mapping input names to {description, default, required}")
            return {}
        out: dict[str, InputSpec] = {}
        for name, spec in raw.items():
            at = f"{where}.{name}"
            if not INPUT_NAME.match(str(name)):
                self.add(at, "input names are letters, digits and '_', starting with a letter or '_'")
                continue
            if spec is None:
                spec = {}
            if not isinstance(spec, dict):
                self.add(at, "must be an object with description, default and required")
                continue
            for key in spec:
                if key not in _INPUT_FIELDS:
                    self.add(f"{at}.{key}", f"unknown field; allowed: {', '.join(_INPUT_FIELDS)}")
            required = spec.get("required", False)
            if not isinstance(required, bool):
                self.add(f"{at}.required", "must be true or false")
                required = False
            out[name] = InputSpec(
                name=name,
                description=str(spec.get("description", "")),
                required=required,
                default=spec.get("default"),
                has_default="default" in spec,
            )
        return out

    def sequence(self, raw: Any, where: str, *, depth: int, default_id: str) -> tuple[Step, ...]:
        """A non-empty list of steps; ``default_id`` names steps without an id (``{n}``: 1-based position)."""
        if not isinstance(raw, list) or not raw:
            self.add(where, "must be a non-empty list of steps")
            return ()
        if len(raw) > self.budget.left:
            if not self.budget.reported:
                self.add(where, f"at most {MAX_STEPS} steps are allowed in a workflow, nested ones included")
                self.budget.reported = True
            return ()
        self.budget.left -= len(raw)
        steps = []
        for i, item in enumerate(raw):
            step = self.step(item, f"{where}[{i}]", i, depth=depth, default_id=default_id.format(n=i + 1))
            if step is not None:
                steps.append(step)
        return tuple(steps)

    def step(self, item: Any, where: str, index: int, *, depth: int, default_id: str) -> Step | None:
        if not isinstance(item, dict):
            self.add(where, f"a step must be an object with type and params, not {_kind(item)}")
            return None
        step_id = item.get("id", default_id)
        if not isinstance(step_id, str) or not STEP_ID.match(step_id):
            self.add(f"{where}.id", "step ids are 1-64 letters, digits and '_', starting with a letter")
            step_id = default_id
        elif step_id in self.ids:
            self.add(f"{where}.id", f"duplicate step id {step_id!r} (also {self.ids[step_id]})")
        self.ids.setdefault(step_id, where)
        op = item.get("type")
        if not isinstance(op, str) or not op:
            self.add(f"{where}.type", "required: the operation to run, e.g. 'http_request'")
            op = ""
        elif op not in CONTROL_TYPES and op not in self.known_ops:
            self.add(f"{where}.type", _unknown_type(op, self.known_ops))
        kind = op if op in CONTROL_TYPES else ""
        allowed = _STEP_FIELDS[kind]
        for key in item:
            if key not in allowed:
                self.add(f"{where}.{key}", f"unknown field; allowed: {', '.join(allowed)}")
        description = item.get("description", "")
        if not isinstance(description, str):
            self.add(f"{where}.description", "must be a string")
            description = ""
        continue_on_error = item.get("continue_on_error", False)
        if not isinstance(continue_on_error, bool):
            self.add(f"{where}.continue_on_error", "must be true or false")
            continue_on_error = False
        catch: tuple[Step, ...] = ()
        if "catch" in item:
            catch = self.nested(item["catch"], f"{where}.catch", depth, f"{step_id}_catch{{n}}")
            if continue_on_error:
                self.add(
                    f"{where}.continue_on_error", "a step with catch steps cannot also continue on error"
                )
        fields: dict[str, Any] = {
            "index": index,
            "id": step_id,
            "type": op,
            "description": description,
            "path": where,
            "when": item.get("when"),
            "catch": catch,
            "continue_on_error": continue_on_error,
        }
        if kind == "foreach":
            fields.update(self.foreach(item, where, depth, step_id))
        elif kind == "parallel":
            fields["branches"] = self.branches(item.get("branches"), f"{where}.branches", depth, step_id)
        elif kind == "workflow":
            fields.update(self.call(item, where, depth))
        elif kind == "wait":
            fields.update(self.wait(item, where))
        elif kind == "agent":
            for path, message in check_agent(item.get("agent"), self.known_ops):
                self.add(f"{where}.agent{path}", message)
            fields["agent"] = item.get("agent") if isinstance(item.get("agent"), dict) else {}
        else:
            fields.update(self.operation(item, where, op))
        return Step(**fields)

    def nested(self, raw: Any, where: str, depth: int, default_id: str) -> tuple[Step, ...]:
        if depth + 1 > MAX_DEPTH:
            self.add(where, f"nested deeper than {MAX_DEPTH} levels (foreach, parallel, catch and workflow)")
            return ()
        return self.sequence(raw, where, depth=depth + 1, default_id=default_id)

    def operation(self, item: dict[str, Any], where: str, op: str) -> dict[str, Any]:
        params = item.get("params", {})
        params_ok = isinstance(params, dict)
        if not params_ok:
            self.add(f"{where}.params", f"must be an object, not {_kind(params)}")
            params = {}
        model = self.schemas.params_model(op) if self.schemas is not None and op in self.known_ops else None
        if model is not None and params_ok:
            for path, message in check_params(model, params):
                self.add(f"{where}.params{path}", message)
        out: dict[str, Any] = {"params": params}
        if "timeout" in item:
            timeout = item["timeout"]
            if not _number(timeout) or not 0 < timeout <= MAX_TIMEOUT_S:
                self.add(
                    f"{where}.timeout", f"must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}"
                )
            else:
                out["timeout_s"] = float(timeout)
        if "retry" in item:
            out["retry"] = policy = self.retry(item["retry"], f"{where}.retry")
            timeout = out.get("timeout_s")
            if policy is not None and timeout is not None:
                # Tries, each up to its timeout, and the pauses between: what one delivery may spend here.
                worst = policy.attempts * timeout + (policy.attempts - 1) * policy.max_s
                if worst > MAX_TIMEOUT_S:
                    self.add(
                        f"{where}.retry",
                        f"{policy.attempts} tries of up to {timeout:g} s each, with pauses, may take {worst:g} s; "
                        f"keep it within {MAX_TIMEOUT_S:g} s and leave longer waits to the task's retries",
                    )
        return out

    def wait(self, item: dict[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        given = [k for k in ("seconds", "until", "signal") if k in item]
        if len(given) != 1:
            self.add(where, "a wait step needs exactly one of seconds, until (a time) and signal (a name)")
        if "seconds" in item:
            seconds = item["seconds"]
            if not _number(seconds) or not 0 <= seconds <= MAX_WAIT_S:
                self.add(f"{where}.seconds", f"must be a number of seconds from 0 to {MAX_WAIT_S:g}")
            else:
                out["wait_seconds"] = float(seconds)
        if "until" in item:
            until = item["until"]
            if not isinstance(until, str) or not (expressions.OPEN in until or _iso_time(until)):
                self.add(
                    f"{where}.until", "must be an ISO 8601 time with its offset, or an expression giving one"
                )
            else:
                out["wait_until"] = until
        if "signal" in item:
            signal = item["signal"]
            if not isinstance(signal, str) or not SIGNAL_NAME.match(signal):
                self.add(
                    f"{where}.signal",
                    "signal names are 1-64 letters, digits, '_', '.' and '-', starting with a letter",
                )
            else:
                out["signal"] = signal
        if "timeout" in item:
            timeout = item["timeout"]
            if "signal" not in item:
                self.add(f"{where}.timeout", "only a wait for a signal has a timeout")
            elif not _number(timeout) or not 0 < timeout <= MAX_WAIT_S:
                self.add(
                    f"{where}.timeout", f"must be a number of seconds above 0 and at most {MAX_WAIT_S:g}"
                )
            else:
                out["timeout_s"] = float(timeout)
        return out

    def retry(self, raw: Any, where: str) -> RetryPolicy | None:
        if not isinstance(raw, dict):
            self.add(where, "must be an object with attempts, and optionally backoff and on")
            return None
        ok = True
        for key in raw:
            if key not in _RETRY_FIELDS:
                self.add(f"{where}.{key}", f"unknown field; allowed: {', '.join(_RETRY_FIELDS)}")
                ok = False
        attempts = raw.get("attempts")
        if (
            not isinstance(attempts, int)
            or isinstance(attempts, bool)
            or not 1 <= attempts <= MAX_RETRY_ATTEMPTS
        ):
            self.add(f"{where}.attempts", f"required: tries in all, 1 to {MAX_RETRY_ATTEMPTS}")
            ok = False
        backoff = raw.get("backoff", {})
        values = {"initial_s": 1.0, "max_s": 30.0, "multiplier": 2.0}
        if not isinstance(backoff, dict):
            self.add(f"{where}.backoff", "must be an object with initial_s, max_s and multiplier")
            backoff, ok = {}, False
        for key, value in backoff.items():
            limit = 10.0 if key == "multiplier" else MAX_BACKOFF_S
            low = 1.0 if key == "multiplier" else 0.0
            if key not in _BACKOFF_FIELDS:
                self.add(f"{where}.backoff.{key}", f"unknown field; allowed: {', '.join(_BACKOFF_FIELDS)}")
                ok = False
            elif not _number(value) or not low <= value <= limit or (key != "multiplier" and value == 0):
                bound = f"from {low:g}" if key == "multiplier" else "above 0"
                self.add(f"{where}.backoff.{key}", f"must be a number {bound} and at most {limit:g}")
                ok = False
            else:
                values[key] = float(value)
        on = raw.get("on")
        codes: frozenset[str] | None = None
        if on is not None:
            if (
                not isinstance(on, list)
                or not on
                or not all(isinstance(c, str) and ERROR_CODE.match(c) for c in on)
            ):
                self.add(
                    f"{where}.on", "must be a non-empty list of error codes, e.g. ['unavailable', 'timeout']"
                )
                ok = False
            else:
                codes = frozenset(on)
        if not ok or not isinstance(attempts, int):
            return None
        return RetryPolicy(attempts=attempts, on=codes, **values)

    def foreach(self, item: dict[str, Any], where: str, depth: int, step_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "items" not in item:
            self.add(f"{where}.items", "required: a list, or an expression giving one")
        elif not isinstance(item["items"], list | str):
            self.add(f"{where}.items", "must be a list, or an expression giving one")
        else:
            out["items"] = item["items"]
        concurrency = item.get("concurrency", 1)
        if (
            not isinstance(concurrency, int)
            or isinstance(concurrency, bool)
            or not 1 <= concurrency <= MAX_CONCURRENCY
        ):
            self.add(f"{where}.concurrency", f"must be an integer from 1 to {MAX_CONCURRENCY}")
        else:
            out["concurrency"] = concurrency
        if "steps" not in item:
            self.add(f"{where}.steps", "required: the steps run for each item")
        else:
            out["body"] = self.nested(item["steps"], f"{where}.steps", depth, f"{step_id}_step{{n}}")
        return out

    def branches(self, raw: Any, where: str, depth: int, step_id: str) -> tuple[tuple[Step, ...], ...]:
        if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_BRANCHES:
            self.add(where, f"required: a list of 2 to {MAX_BRANCHES} branches, each a list of steps")
            return ()
        return tuple(
            self.nested(branch, f"{where}[{b}]", depth, f"{step_id}_b{b + 1}_step{{n}}")
            for b, branch in enumerate(raw)
        )

    def call(self, item: dict[str, Any], where: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        inputs = item.get("inputs", {})
        if not isinstance(inputs, dict):
            self.add(f"{where}.inputs", "must be an object mapping the called workflow's inputs to values")
            inputs = {}
        out["inputs"] = inputs
        has_template, has_inline = "template" in item, "workflow" in item
        if has_template == has_inline:
            self.add(
                where, "a workflow step needs exactly one of template (a name) and workflow (a document)"
            )
            return out
        if depth + 1 > MAX_DEPTH:
            self.add(where, f"nested deeper than {MAX_DEPTH} levels (foreach, parallel, catch and workflow)")
            return out
        child = _Parser(self.known_ops, self.problems, self.budget)
        if has_template:
            name = item["template"]
            try:
                doc = load_template(name)
            except NotFoundError as exc:
                self.add(f"{where}.template", exc.message.removeprefix("template: "))
                return out
            out["template"] = name
            called = child.document(doc, f"{where}.template({name}).", depth=depth + 1)
        else:
            called = child.document(item["workflow"], f"{where}.workflow.", depth=depth + 1)
        if called is None:
            return out
        out["workflow"] = called
        for name in inputs:
            if called.inputs and name not in called.inputs:
                declared = ", ".join(sorted(called.inputs))
                self.add(
                    f"{where}.inputs.{name}",
                    f"the called workflow declares no input {name!r}; declared: {declared}",
                )
        for spec in called.inputs.values():
            if spec.required and spec.name not in inputs:
                self.add(f"{where}.inputs.{spec.name}", "required by the called workflow")
        return out


def _unknown_type(op: str, known_ops: Collection[str]) -> str:
    close = difflib.get_close_matches(op, [*known_ops, *CONTROL_TYPES], n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "`openclaw ops list` lists the operations"
    return f"unknown step type {op!r}; {hint}"


def _iso_time(text: str) -> bool:
    try:
        parse_time(text)
    except ValueError:
        return False
    return True


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )
