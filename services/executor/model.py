"""The validated workflow: steps (operations and control steps), inputs, outputs and the DSL's bounds."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from services.common.errors import InvalidInputError

DSL_VERSION = 1
SUPPORTED_VERSIONS = (1,)
# Bounds of a document: every step counts, nested ones included; nesting is foreach, parallel, workflow.
MAX_STEPS = 200
MAX_DEPTH = 4
MAX_BRANCHES = 16
MAX_CONCURRENCY = 32
MAX_ITEMS = 1000
# A step's timeout and in-process retries stay well inside RabbitMQ's 30 min consumer timeout.
MAX_TIMEOUT_S = 1500.0
MAX_RETRY_ATTEMPTS = 10
MAX_BACKOFF_S = 60.0
# A wait parks the task (no worker or delivery is held), so it may be long; still bounded.
MAX_WAIT_S = 30 * 24 * 3600.0
CONTROL_TYPES = ("foreach", "parallel", "workflow", "wait", "agent")


@runtime_checkable
class ParamsSchemas(Protocol):
    """What parse_workflow needs to check params as well as names (the operation catalogue has it)."""

    def params_model(self, op_name: str) -> type[BaseModel] | None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """In-process retries of one step: ``attempts`` tries in all, exponential backoff, on which codes."""

    attempts: int
    initial_s: float = 1.0
    max_s: float = 30.0
    multiplier: float = 2.0
    # Error codes to retry; None: any error whose ``retryable`` is true.
    on: frozenset[str] | None = None

    def delay_s(self, failures: int) -> float:
        """The pause after the n-th failure (1-based)."""
        return float(min(self.max_s, self.initial_s * self.multiplier ** (failures - 1)))

    def applies(self, code: str, retryable: bool) -> bool:
        return code in self.on if self.on is not None else retryable


@dataclass(frozen=True)
class Step:
    """One step: an operation (``type`` from the catalogue) or a control step (foreach, parallel, workflow,
    wait, agent).

    ``path`` is where it is in the document (``steps[2].branches[0][1]``), for error messages.
    """

    index: int
    id: str
    type: str
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    path: str = ""
    when: Any = None
    timeout_s: float | None = None
    retry: RetryPolicy | None = None
    catch: tuple[Step, ...] = ()
    continue_on_error: bool = False
    # foreach: the list (an expression), how many items run at once, the steps run per item.
    items: Any = None
    concurrency: int = 1
    body: tuple[Step, ...] = ()
    # parallel: sequences of steps run side by side.
    branches: tuple[tuple[Step, ...], ...] = ()
    # workflow: the called workflow (a template by name, or inline) and its inputs (may hold expressions).
    workflow: Workflow | None = None
    template: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    # wait: a duration, a time (ISO 8601, may be an expression), or a signal (with timeout_s, optional).
    wait_seconds: float | None = None
    wait_until: Any = None
    signal: str = ""
    # agent: the ``agent`` object as written (values may hold expressions), checked against AgentSpec.
    agent: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.path:
            object.__setattr__(self, "path", f"steps[{self.index}]")

    def label(self) -> str:
        return f"step {self.id!r} ({self.path}, {self.type})"

    @property
    def is_control(self) -> bool:
        return self.type in CONTROL_TYPES


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
        """A step by id, at any depth."""
        for step in walk_steps(self.steps):
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def bind_inputs(self, given: Mapping[str, Any], *, where: str = "inputs") -> dict[str, Any]:
        """The inputs a run sees: given values over declared defaults; InvalidInputError if one is missing."""
        out = dict(given)
        problems = []
        for spec in self.inputs.values():
            if spec.name in out:
                continue
            if spec.has_default:
                out[spec.name] = spec.default
            elif spec.required:
                problems.append(f"{where}.{spec.name}: required")
        if problems:
            raise InvalidInputError("; ".join(problems), errors=problems)
        return out


def parse_time(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time with an offset (``Z`` or ``+02:00``)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone offset (add Z or +hh:mm)")
    return int(moment.timestamp() * 1000)


def walk_steps(steps: tuple[Step, ...]) -> Iterator[Step]:
    """Every step of a sequence, nested ones included (not those of called workflows), in document order."""
    for step in steps:
        yield step
        yield from walk_steps(step.body)
        for branch in step.branches:
            yield from walk_steps(branch)
        yield from walk_steps(step.catch)
