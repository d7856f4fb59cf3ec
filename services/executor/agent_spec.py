"""An agent step's settings, checked at validation, and its tools: catalogue operations offered to a model.

The step is ``{"type": "agent", "agent": {...}}``; the object's fields are ``AgentSpec``'s. Each allow-listed
operation becomes one tool in OpenAI's function-calling format, its params JSON Schema the tool's
``parameters``; operation names that are not valid tool names (a plugin's ``vendor.name``) are mapped to ones
that are (``vendor__name``), and mapped back when the model calls them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from services.executor.model import CONTROL_TYPES
from services.executor.ops.base import Operation, Params
from services.executor.params import check_params

MAX_TOOLS = 64
MAX_TURNS = 50
MAX_AGENT_TIMEOUT_S = 1500.0
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DESCRIPTION_CHARS = 1024
"""Providers limit a function's description; longer operation descriptions are cut here."""


class AgentSpec(Params):
    """What an agent step is given: a model, instructions, its input, the tools it may call and its budgets."""

    model: str = Field(min_length=1, max_length=200, description="A model name known to the router.")
    instructions: str = Field(
        min_length=1, max_length=256 * 1024, description="The system message: what the agent is to do."
    )
    input: Any = Field(
        None,
        description="The task's data, sent as the user message. When omitted, the previous step's output is "
        "used (its text or content if it has one); null sends the instructions alone.",
    )
    tools: list[str] = Field(
        max_length=MAX_TOOLS, description="The operations the model may call; no other is offered or run."
    )
    max_turns: int = Field(8, ge=1, le=MAX_TURNS, description="Model calls at most.")
    max_tokens: int = Field(
        100_000,
        ge=1,
        le=100_000_000,
        description="Total tokens (prompt + completion, as the router reports) at most.",
    )
    timeout: float = Field(
        300.0, gt=0, le=MAX_AGENT_TIMEOUT_S, description="Seconds of wall time at most, per delivery."
    )
    on_budget: Literal["fail", "answer"] = Field(
        "fail",
        description="When a budget runs out: fail the step (resource_exhausted, not retried), or end it with "
        "the model's last text.",
    )
    max_result_chars: int = Field(
        8192, ge=256, le=65536, description="A tool result longer than this is cut before the model sees it."
    )
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")

    @model_validator(mode="after")
    def _unique_tools(self) -> AgentSpec:
        seen: set[str] = set()
        for name in self.tools:
            if name in seen:
                raise ValueError(f"tools: {name!r} is listed twice")
            seen.add(name)
        return self


def tool_name(op_name: str) -> str:
    """The function name a model sees for an operation: dots (plugin namespaces) become ``__``."""
    return op_name.replace(".", "__")


def check_agent(raw: Any, known_ops: Collection[str]) -> list[tuple[str, str]]:
    """Problems of an agent step's ``agent`` object, as (path suffix, message); expressions checked later."""
    if not isinstance(raw, dict):
        return [("", "required: an object with model, instructions and tools")]
    # The duplicate check is below, by index; pydantic's own would repeat it without the index.
    problems = [p for p in check_params(AgentSpec, raw) if "listed twice" not in p[1]]
    tools = raw.get("tools")
    if not isinstance(tools, list):
        return problems
    names: dict[str, str] = {}
    for i, name in enumerate(tools):
        if not isinstance(name, str):
            continue
        if name in tools[:i]:
            problems.append((f".tools[{i}]", f"{name!r} is listed twice"))
            continue
        if name in CONTROL_TYPES or name not in known_ops:
            problems.append((f".tools[{i}]", f"{name!r} is not an operation of the catalogue"))
            continue
        mapped = tool_name(name)
        if not TOOL_NAME.match(mapped):
            problems.append((f".tools[{i}]", f"{name!r} cannot be named as a tool ({mapped!r})"))
        elif mapped in names and names[mapped] != name:
            problems.append((f".tools[{i}]", f"{name!r} and {names[mapped]!r} would have the same tool name"))
        names.setdefault(mapped, name)
    return problems


def tool_definitions(ops: Mapping[str, Operation[Any]]) -> list[dict[str, Any]]:
    """The ``tools`` of a chat request: one function per operation, keyed by the operation's name."""
    out = []
    for name, op in ops.items():
        description = op.description or name
        if len(description) > DESCRIPTION_CHARS:
            description = description[: DESCRIPTION_CHARS - 1] + "…"
        schema = op.params.model_json_schema()
        schema.pop("title", None)
        out.append(
            {
                "type": "function",
                "function": {"name": tool_name(name), "description": description, "parameters": schema},
            }
        )
    return out
