"""The template library: preset workflows shipped as JSON files in ``template_library/``, run by name.

A template file is a workflow document whose inputs are given as ``parameters``, a JSON Schema (draft
2020-12) for the task's ``inputs`` object, plus ``examples``: inputs it is documented and tested with. The
workflow the executor runs (``load_template``) declares its inputs from that schema (description, default,
required), so the schema is the one place a template's parameters are written down.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from services.common.errors import InvalidInputError, NotFoundError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PACKAGE = "services.executor"
_TEMPLATE_ONLY = ("parameters", "examples")
_MAX_PROBLEMS = 20
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class Template:
    """One template of the library: its workflow, parameter schema and example inputs."""

    name: str
    description: str
    parameters: dict[str, Any]
    examples: tuple[dict[str, Any], ...]
    workflow: dict[str, Any]

    def validate(self, inputs: Any) -> None:
        """InvalidInputError naming every input (``inputs.<path>``) that does not fit the parameter schema."""
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            raise InvalidInputError("inputs must be a JSON object", field="inputs")
        validator = Draft202012Validator(self.parameters, format_checker=Draft202012Validator.FORMAT_CHECKER)
        problems: list[str] = []
        for error in sorted(validator.iter_errors(inputs), key=lambda e: [str(p) for p in e.absolute_path]):
            problems.extend(_explain(error))
        if not problems:
            return
        problems = list(dict.fromkeys(problems))[:_MAX_PROBLEMS]
        head = problems[0] if len(problems) == 1 else f"{len(problems)} problems in inputs"
        raise InvalidInputError(
            f"template {self.name!r}: {head}" + "".join(f"\n{p}" for p in problems if len(problems) > 1),
            field=problems[0].split(":", 1)[0],
            errors=problems,
        )

    def describe(self) -> dict[str, Any]:
        """What ``openclaw templates show`` prints: name, description, parameters, examples, steps, outputs."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": copy.deepcopy(self.parameters),
            "examples": copy.deepcopy(list(self.examples)),
            "steps": [f"{s.get('id', '?')} ({s.get('type')})" for s in self.workflow.get("steps", [])],
            "outputs": sorted(self.workflow.get("outputs") or {}),
        }


def _folder() -> Any:
    return resources.files(_PACKAGE).joinpath("template_library")


def list_templates() -> list[str]:
    """Names of the shipped templates."""
    folder = _folder()
    if not folder.is_dir():  # an install that left the JSON files out (package data)
        return []
    return sorted(
        entry.name.removesuffix(".json")
        for entry in folder.iterdir()
        if entry.name.endswith(".json") and _NAME.match(entry.name.removesuffix(".json"))
    )


def get_template(name: str) -> Template:
    """The template called ``name``; NotFoundError naming the known ones."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise NotFoundError(f"template: no template named {name!r}; known: {', '.join(list_templates())}")
    return _read(name)


def load_template(name: str) -> dict[str, Any]:
    """The workflow document of a template (a fresh copy); NotFoundError naming the known ones."""
    return copy.deepcopy(get_template(name).workflow)


def validate_inputs(name: str, inputs: Any) -> None:
    """Check a task's inputs against the template's parameter schema (InvalidInputError naming each input)."""
    get_template(name).validate(inputs)


@cache
def _read(name: str) -> Template:
    entry = _folder().joinpath(f"{name}.json")
    if not entry.is_file():
        raise NotFoundError(f"template: no template named {name!r}; known: {', '.join(list_templates())}")
    doc: dict[str, Any] = json.loads(entry.read_text(encoding="utf-8"))
    parameters = doc.get("parameters") or {"type": "object", "properties": {}}
    workflow = {key: value for key, value in doc.items() if key not in _TEMPLATE_ONLY}
    if "parameters" in doc:  # a legacy file declares ``inputs`` itself
        workflow["inputs"] = _declared_inputs(parameters)
    return Template(
        name=name,
        description=str(doc.get("description", "")),
        parameters=parameters,
        examples=tuple(doc.get("examples") or ()),
        workflow=workflow,
    )


def _declared_inputs(parameters: dict[str, Any]) -> dict[str, Any]:
    """The DSL's input declarations (description, default, required) from a parameter schema."""
    required = set(parameters.get("required", ()))
    out: dict[str, Any] = {}
    for name, prop in (parameters.get("properties") or {}).items():
        spec: dict[str, Any] = {"description": str(prop.get("description", ""))}
        if name in required:
            spec["required"] = True
        elif "default" in prop:
            spec["default"] = prop["default"]
        else:
            spec["default"] = None  # optional without a default: steps test it with `when`
        out[name] = spec
    return out


def _at(path: Any) -> str:
    out = "inputs"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _explain(error: ValidationError) -> list[str]:
    """One line per problem, each starting with the input's path."""
    where = _at(error.absolute_path)
    instance: Any = error.instance
    rule: Any = error.validator_value
    if error.validator == "required" and isinstance(instance, dict):
        return [f"{where}.{name}: required" for name in rule if name not in instance]
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = sorted((error.schema.get("properties") or {}) if isinstance(error.schema, dict) else ())
        extra = [name for name in instance if name not in known]
        allowed = ", ".join(known) or "none"
        return [f"{where}.{name}: unknown input; this template takes: {allowed}" for name in extra]
    if error.validator in ("oneOf", "anyOf") and _only_required(rule) and isinstance(instance, dict):
        choices = " or ".join("+".join(sub["required"]) for sub in rule)
        given = [n for sub in rule for n in sub["required"] if n in instance]
        if error.validator == "oneOf" and len(given) > 1:
            return [f"{where}: give only one of {choices}, not {' and '.join(given)}"]
        return [f"{where}: give {choices}"]
    message = error.message
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return [f"{where}: {message}"]


def _only_required(subschemas: Any) -> bool:
    return isinstance(subschemas, list) and all(
        isinstance(sub, dict) and set(sub) == {"required"} for sub in subschemas
    )
