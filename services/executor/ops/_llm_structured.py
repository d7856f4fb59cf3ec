"""LLM operations whose reply must have a shape: one of given labels, or JSON valid against a JSON Schema.

Each asks once and, if the reply does not fit, asks once more with the problem fed back (the repair
attempt); a reply that still does not fit fails the step with the problem and the reply quoted.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from pydantic import Field, StringConstraints, field_validator
from referencing import Registry
from referencing.exceptions import Unresolvable

from openclaw.v1 import router_pb2
from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops._json_schema import guarded
from services.executor.ops._llm_request import Message, ModelParams, ask, input_text, reply, unusable
from services.executor.ops.base import input_or_prev, operation

MAX_SCHEMA_CHARS = 32 * 1024
MAX_ERRORS = 10
Label = Annotated[str, StringConstraints(min_length=1, max_length=100, strip_whitespace=True)]
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


class TextParams(ModelParams):
    text: Any = Field(
        None,
        description="The text (or a step output, its text/content field used); the previous step's when omitted.",
    )
    repair: bool = Field(True, description="Ask once more, naming the problem, when the reply does not fit.")


def _unfenced(content: str) -> str:
    match = _FENCE.match(content)
    return (match.group(1) if match else content).strip()


def _bare(answer: str) -> str:
    """A one-label answer without the decoration models add: quotes, a final period, 'Label:'."""
    answer = _unfenced(answer).strip().strip("\"'`*").strip()
    answer = re.sub(r"^(?:label|category|sentiment|answer)\s*:\s*", "", answer, flags=re.IGNORECASE)
    return answer.rstrip(".!").strip().strip("\"'`*").strip()


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _choose(content: str, labels: list[str], multi: bool) -> tuple[list[str] | None, str]:
    """The labels a reply names (matched case-insensitively), or None and what is wrong with it."""
    by_key = {label.casefold(): label for label in labels}
    parsed = _json_or_none(_unfenced(content))
    if isinstance(parsed, dict):
        parsed = parsed.get("labels", parsed.get("label"))
    if isinstance(parsed, str):
        answers = [parsed]
    elif isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
        answers = parsed
    elif multi:
        answers = [_BULLET.sub("", part) for part in re.split(r"[,;\n]", _unfenced(content)) if part.strip()]
    else:
        answers = [content]
    chosen: list[str] = []
    for answer in answers:
        label = by_key.get(_bare(answer).casefold())
        if label is None:
            return None, f"{_bare(answer)!r} is not one of the labels"
        if label not in chosen:
            chosen.append(label)
    if not multi and len(chosen) != 1:
        return None, f"it names {len(chosen)} labels instead of exactly one"
    return chosen, ""


async def classify(
    p: ModelParams,
    ctx: OpContext,
    text: str,
    labels: list[str],
    *,
    multi: bool,
    repair: bool,
    guidance: str = "",
) -> tuple[list[str], list[router_pb2.ChatResponse]]:
    """Ask for labels of a text; returns the chosen labels and every response (for usage)."""
    listing = "\n".join(f"- {label}" for label in labels)
    if multi:
        task = (
            "Choose every label below that applies to the user's text. Reply with only a JSON array of the "
            'chosen labels, spelled exactly as listed (e.g. ["a", "b"]), or [] if none applies.'
        )
    else:
        task = "Choose the one label below that best fits the user's text. Reply with only that label, spelled exactly as listed."
    system = f"You are a precise text classifier. {task}\n\nLabels:\n{listing}"
    if guidance:
        system += f"\n\n{guidance}"
    messages: list[Message] = [("system", system), ("user", text)]
    responses = [await ask(p, ctx, messages)]
    chosen, problem = _choose(responses[-1].message.content, labels, multi)
    if chosen is None and repair:
        retry = f"Your answer does not fit: {problem}. {task}\n\nLabels:\n{listing}"
        messages += [("assistant", responses[-1].message.content), ("user", retry)]
        responses.append(await ask(p, ctx, messages, attempt="repair"))
        chosen, problem = _choose(responses[-1].message.content, labels, multi)
    if chosen is None:
        raise unusable(
            f"did not answer with {'labels' if multi else 'a label'} from {labels}: {problem}", responses[-1]
        )
    return chosen, responses


class ClassifyParams(TextParams):
    labels: list[Label] = Field(min_length=2, max_length=100, description="The labels to choose from.")
    multi_label: bool = Field(
        False, description="Allow any number of labels (0..all) instead of exactly one."
    )
    instructions: str | None = Field(
        None, max_length=4000, description="Guidance for the model: what each label means, edge cases."
    )

    @field_validator("labels")
    @classmethod
    def _distinct(cls, labels: list[str]) -> list[str]:
        seen = {label.casefold() for label in labels}
        if len(seen) != len(labels):
            raise ValueError("labels must differ (ignoring case)")
        return labels


@operation("llm_classify", category="llm", params=ClassifyParams)
async def llm_classify(p: ClassifyParams, ctx: OpContext) -> dict[str, Any]:
    """Classify a text into one of the given labels (or several, with multi_label) with a model; the answer is
    checked to be among the labels, with one repair attempt. Returns label (or labels), content, usage, route."""
    text = input_text(input_or_prev(p, "text", ctx), "text")
    chosen, responses = await classify(
        p, ctx, text, list(p.labels), multi=p.multi_label, repair=p.repair, guidance=p.instructions or ""
    )
    picked: dict[str, Any] = {"labels": chosen} if p.multi_label else {"label": chosen[0]}
    return {**reply(*responses), **picked, "attempts": len(responses)}


SENTIMENTS = ["positive", "negative", "neutral", "mixed"]


@operation("llm_sentiment", category="llm", params=TextParams)
async def llm_sentiment(p: TextParams, ctx: OpContext) -> dict[str, Any]:
    """The overall sentiment of a text, judged by a model: positive, negative, neutral or mixed (checked, with
    one repair attempt). Returns sentiment, content, usage and route."""
    text = input_text(input_or_prev(p, "text", ctx), "text")
    guidance = "mixed means clearly positive and clearly negative parts; neutral means neither."
    chosen, responses = await classify(
        p, ctx, text, SENTIMENTS, multi=False, repair=p.repair, guidance=guidance
    )
    return {**reply(*responses), "sentiment": chosen[0], "attempts": len(responses)}


class ExtractParams(TextParams):
    json_schema: dict[str, Any] = Field(
        description="A JSON Schema (draft 2020-12) the extracted JSON must satisfy, e.g. {'type': 'object', "
        "'properties': {'name': {'type': 'string'}}, 'required': ['name']}."
    )
    instructions: str | None = Field(
        None, max_length=4000, description="Guidance for the model on what to extract."
    )

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
            raise ValueError(f"the schema is longer than {MAX_SCHEMA_CHARS} characters of JSON")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            path = "/".join(str(part) for part in exc.absolute_path) or "(root)"
            raise ValueError(f"not a valid JSON Schema at {path}: {exc.message}") from None
        return schema


def _problems(content: str, validator: Validator) -> tuple[Any, list[str]]:
    """The JSON value of a reply and what makes it invalid (empty when valid)."""
    raw = _unfenced(content)
    value = _json_or_none(raw)
    if value is None and raw != "null":
        # Models sometimes wrap the JSON in a sentence: take the outermost object or array.
        start = min((i for i in (raw.find("{"), raw.find("[")) if i >= 0), default=-1)
        end = max(raw.rfind("}"), raw.rfind("]"))
        value = _json_or_none(raw[start : end + 1]) if 0 <= start < end else None
        if value is None:
            return None, ["the reply is not JSON"]
    try:
        errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    except Unresolvable as exc:
        raise InvalidInputError(
            f"json_schema: cannot resolve {exc} (only references inside the schema are allowed)",
            param="json_schema",
        ) from None
    return value, [f"{e.json_path}: {e.message}" for e in errors[:MAX_ERRORS]]


@operation("llm_extract", category="llm", params=ExtractParams)
async def llm_extract(p: ExtractParams, ctx: OpContext) -> dict[str, Any]:
    """Extract structured data from a text with a model: the reply must be JSON valid against json_schema
    (checked with jsonschema, one repair attempt feeding back the errors). Returns data, content, usage, route."""
    text = input_text(input_or_prev(p, "text", ctx), "text")
    # Guarded: the schema's "pattern" regexes come from the workflow and must not hang the worker.
    cls = guarded(Draft202012Validator)
    validator = cls(p.json_schema, registry=Registry(), format_checker=Draft202012Validator.FORMAT_CHECKER)
    system = (
        "Extract information from the user's text as JSON that satisfies this JSON Schema:\n"
        f"{json.dumps(p.json_schema, ensure_ascii=False)}\n"
        "Reply with only the JSON value: no prose, no code fences. Use null or omit optional fields the text "
        "does not give; never invent values."
    )
    if p.instructions:
        system += f"\n\n{p.instructions}"
    messages: list[Message] = [("system", system), ("user", text)]
    responses = [await ask(p, ctx, messages)]
    value, errors = _problems(responses[-1].message.content, validator)
    if errors and p.repair:
        feedback = "Your reply does not satisfy the schema:\n" + "\n".join(f"- {e}" for e in errors)
        feedback += "\nReply with only the corrected JSON value."
        messages += [("assistant", responses[-1].message.content), ("user", feedback)]
        responses.append(await ask(p, ctx, messages, attempt="repair"))
        value, errors = _problems(responses[-1].message.content, validator)
    if errors:
        raise unusable(
            f"did not return JSON valid against the schema ({'; '.join(errors)})",
            responses[-1],
            errors=errors,
        )
    return {**reply(*responses), "data": value, "attempts": len(responses)}


OPERATIONS = (llm_classify, llm_sentiment, llm_extract)
