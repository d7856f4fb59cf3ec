"""The DSL's JSON Schema (draft 2020-12), shipped as package data: for editors, clients and our tests.

``parse_workflow`` is the authority at run time (it also checks operations, params and expressions);
the schema describes the same document shape, and tests hold the two to agreeing.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

SCHEMA_FILE = "workflow.schema.json"


@functools.cache
def workflow_schema() -> dict[str, Any]:
    """The schema document."""
    text = resources.files("services.executor").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def _validator() -> Draft202012Validator:
    Draft202012Validator.check_schema(workflow_schema())
    return Draft202012Validator(workflow_schema())


def schema_problems(doc: Any) -> list[str]:
    """Where a document breaks the schema, as ``path: message`` lines (empty when it conforms)."""
    out = []
    for error in sorted(_validator().iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        out.append(f"{path}: {error.message}")
    return out
