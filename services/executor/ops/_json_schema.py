"""JSON Schema: validate a document (every error with its path) and infer a schema from a sample.

Part of the formats category: ``formats.OPERATIONS`` gathers these operations. A schema comes from the
workflow, so it is treated as hostile: a "$ref" never leaves the schema (no fetching from the worker), and
its regular expressions run under a time limit, because Python's ``re`` backtracks without bound and holds
the GIL while it does, which would stall every task on the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import lru_cache
from typing import Any, cast

import jsonpointer
import jsonschema
import referencing
import referencing.exceptions
import regex
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend, validator_for
from pydantic import Field

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops._values import check_value, identity, value_input
from services.executor.ops.base import Params, operation

REGEX_TIMEOUT_S = 0.5

_INPUT = Field(None, description="The document; the previous step's output when omitted.")


def _search(pattern: str, text: str) -> bool:
    try:
        return regex.search(pattern, text, timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        raise InvalidInputError(
            f"schema: pattern {pattern!r} ran over {REGEX_TIMEOUT_S} s on one value (catastrophic backtracking)",
            param="schema",
        ) from None
    except regex.error as exc:
        raise InvalidInputError(
            f"schema: pattern {pattern!r} is not a valid regular expression: {exc}"
        ) from None


# The keywords that run a schema's regular expressions, as jsonschema defines them but through _search.


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, extra: Any, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in known and not any(_search(p, k) for p in patterns)]
    if validator.is_type(extra, "object"):
        for key in extras:
            yield from validator.descend(instance[key], extra, path=key)
    elif not extra and extras:
        names = ", ".join(repr(key) for key in sorted(extras))
        yield ValidationError(f"Additional properties are not allowed ({names} unexpected)")


@lru_cache(maxsize=16)
def guarded(base: type[Validator]) -> type[Validator]:
    """The validator class with regex keywords matched under a time limit (user schemas are hostile input)."""
    keywords = {
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    }
    replaced = {k: v for k, v in keywords.items() if k in base.VALIDATORS}
    return cast("type[Validator]", extend(base, replaced))  # type: ignore[no-untyped-call]


def _keywords_in(schema: Any) -> set[str]:
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.update(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


class JsonValidateParams(Params):
    input: Any = _INPUT
    json_schema: dict[str, Any] = Field(
        alias="schema", description="A JSON Schema (its $schema picks the draft; 2020-12 when absent)."
    )
    max_errors: int = Field(50, ge=1, le=1000, description="Report at most this many errors.")
    check_formats: bool = Field(
        False, description='Also check "format" keywords (email, date-time, ipv4...).'
    )


def _validate(doc: Any, schema: dict[str, Any], max_errors: int, check_formats: bool) -> dict[str, Any]:
    base = validator_for(schema)
    try:
        base.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.path)
        raise InvalidInputError(
            f"schema: not a valid JSON Schema at /{where}: {exc.message}", param="schema"
        ) from None
    keywords = _keywords_in(schema)
    if "unevaluatedProperties" in keywords and "patternProperties" in keywords:
        # jsonschema matches these patterns with re, outside the keywords replaced above.
        raise InvalidInputError(
            "schema: patternProperties together with unevaluatedProperties is not supported", param="schema"
        )
    cls = guarded(base)
    # An empty registry: a "$ref" to a remote URL is an error, never a fetch from the worker.
    validator = cls(
        schema,
        registry=referencing.Registry(),
        format_checker=cls.FORMAT_CHECKER if check_formats else None,
    )
    errors: list[dict[str, Any]] = []
    try:
        for error in validator.iter_errors(doc):
            errors.append(
                {
                    "path": jsonpointer.JsonPointer.from_parts(list(error.absolute_path)).path,
                    "message": error.message,
                    "keyword": str(error.validator),
                    "schema_path": "/" + "/".join(str(part) for part in error.absolute_schema_path),
                }
            )
            if len(errors) > max_errors:
                break
    except referencing.exceptions.Unresolvable as exc:
        raise InvalidInputError(f"schema: cannot resolve $ref {exc}", param="schema") from None
    except RecursionError:
        raise InvalidInputError(
            "schema: a $ref cycle (or nesting) too deep to follow", param="schema"
        ) from None
    truncated = len(errors) > max_errors
    errors = sorted(errors[:max_errors], key=lambda e: (e["path"], e["schema_path"]))
    return {"valid": not errors, "errors": errors, "truncated": truncated}


@operation("json_validate", category="formats", params=JsonValidateParams)
async def json_validate(p: JsonValidateParams, ctx: OpContext) -> dict[str, Any]:
    """Validate a document against a JSON Schema; returns {valid, errors: [{path, message, keyword}], truncated}."""
    doc = value_input(p, "input", ctx)
    check_value(p.json_schema, "schema")
    return await asyncio.to_thread(_validate, doc, p.json_schema, p.max_errors, p.check_formats)


# Schema inference


def infer_schema(value: Any) -> dict[str, Any]:
    """A JSON Schema describing ``value``: object properties all required, list items merged."""
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        if not value:
            return {"type": "array"}
        return {"type": "array", "items": _union([infer_schema(item) for item in value])}
    return {
        "type": "object",
        "properties": {key: infer_schema(item) for key, item in value.items()},
        "required": sorted(value),
    }


def _union(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    objects = [s for s in schemas if s["type"] == "object"]
    distinct = {identity(s): s for s in schemas if s["type"] != "object"}
    others = list(distinct.values())
    if objects:
        props: dict[str, list[dict[str, Any]]] = {}
        for schema in objects:
            for key, sub in schema["properties"].items():
                props.setdefault(key, []).append(sub)
        required = set.intersection(*(set(s["required"]) for s in objects))
        merged = {
            "type": "object",
            "properties": {key: _union(subs) for key, subs in props.items()},
            "required": sorted(required),
        }
        others.append(merged)
    return others[0] if len(others) == 1 else {"anyOf": others}


class JsonSchemaInferParams(Params):
    input: Any = Field(None, description="A sample document; the previous step's output when omitted.")


@operation("json_schema_infer", category="formats", params=JsonSchemaInferParams)
async def json_schema_infer(p: JsonSchemaInferParams, ctx: OpContext) -> dict[str, Any]:
    """Infer a JSON Schema (2020-12) from a sample: types, object properties, merged list item shapes."""
    doc = value_input(p, "input", ctx)
    schema = await asyncio.to_thread(infer_schema, doc)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


OPERATIONS = (json_validate, json_schema_infer)
