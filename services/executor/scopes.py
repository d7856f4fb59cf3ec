"""What each expression of a workflow may read, checked before anything runs.

A step sees the outputs of the steps before it in its own sequence and in the sequences around it; after a
``parallel`` step joins, its branches' steps are visible too. A foreach body also sees ``item`` and
``index``, catch steps see ``error``; ``prev`` is the step before in the same sequence (the first step of a
sequence has none). The outputs of a foreach body's or a catch's steps are not visible outside them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from services.common.errors import InvalidInputError
from services.executor import expressions
from services.executor.expressions import ExpressionError
from services.executor.model import InputSpec, Step, walk_steps


class Problems:
    """Every problem of a document, by path; raised together."""

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


@dataclass(frozen=True)
class _Visible:
    steps: tuple[str, ...]
    prev: bool = False
    item: bool = False
    error: bool = False


def check_references(
    steps: tuple[Step, ...],
    outputs: dict[str, Any] | None,
    inputs: dict[str, InputSpec],
    problems: Problems,
    *,
    outputs_path: str = "outputs",
) -> None:
    """Check every expression of a document (one level: called workflows are checked on their own)."""
    checker = _Checker(inputs, problems, [s.id for s in walk_steps(steps)])
    exported = checker.sequence(steps, _Visible(()))
    checker.position = len(checker.all_ids)
    if outputs is not None:
        checker.value(outputs, outputs_path, _Visible(tuple(exported), prev=bool(steps)))


class _Checker:
    def __init__(self, inputs: dict[str, InputSpec], problems: Problems, all_ids: list[str]) -> None:
        self.inputs, self.problems, self.all_ids = inputs, problems, all_ids
        self.order = {sid: i for i, sid in enumerate(all_ids)}
        # Where the step being checked is in document order: a step named later "runs later".
        self.position = len(all_ids)

    def sequence(self, steps: tuple[Step, ...], outer: _Visible) -> list[str]:
        """Check a sequence; returns the ids it makes visible to what follows it."""
        seen = list(outer.steps)
        exported: list[str] = []
        for i, step in enumerate(steps):
            here = replace(outer, steps=tuple(seen), prev=i > 0)
            self.position = self.order.get(step.id, self.position)
            if step.when is not None:
                self.value(step.when, f"{step.path}.when", here)
            self.value(step.params, f"{step.path}.params", here)
            if step.type == "foreach":
                self.value(step.items, f"{step.path}.items", here)
                self.sequence(step.body, replace(here, prev=False, item=True))
            elif step.type == "workflow":
                self.value(step.inputs, f"{step.path}.inputs", here)
            elif step.type == "wait" and step.wait_until is not None:
                self.value(step.wait_until, f"{step.path}.until", here)
            elif step.type == "agent" and step.agent is not None:
                self.value(step.agent, f"{step.path}.agent", here)
            joined: list[str] = []
            for branch in step.branches:
                joined += self.sequence(branch, replace(here, prev=False))
            if step.catch:
                self.sequence(step.catch, replace(here, prev=False, error=True))
            seen += [step.id, *joined]
            exported += [step.id, *joined]
        return exported

    def value(self, value: Any, where: str, vis: _Visible) -> None:
        for path, text in expressions.strings(value):
            loc = f"{where}{path}"
            try:
                template = expressions.compile_template(text)
            except ExpressionError as exc:
                self.problems.add(loc, exc.message)
                continue
            if template is None:
                continue
            for expr in template.paths:
                message = self.path(expr, vis)
                if message:
                    self.problems.add(loc, message)

    def path(self, expr: expressions.Path, vis: _Visible) -> str:
        """What is wrong with one path here, or ''."""
        first = expr.accessors[0] if expr.accessors else None
        if expr.root == "steps":
            if not isinstance(first, str):
                return f"{expr}: name a step, e.g. steps.step1.output"
            if first not in vis.steps:
                return self.unknown_step(expr, first, vis)
        elif expr.root == "prev" and not vis.prev:
            return f"{expr}: the first step has no previous step"
        elif expr.root in ("item", "index") and not vis.item:
            return f"{expr}: {expr.root!r} is only available in the steps of a foreach"
        elif expr.root == "error" and not vis.error:
            return f"{expr}: 'error' is only available in catch steps"
        elif expr.root == "inputs" and self.inputs and isinstance(first, str) and first not in self.inputs:
            return f"{expr}: unknown input {first!r}; declared: {', '.join(sorted(self.inputs))}"
        return ""

    def unknown_step(self, expr: expressions.Path, target: str, vis: _Visible) -> str:
        if target in self.all_ids:
            if self.order[target] > self.position:
                return f"{expr}: step {target!r} runs later; a step can only use earlier steps' outputs"
            return (
                f"{expr}: step {target!r} is not visible here (it is inside a foreach, a catch or another "
                "branch); use the enclosing step's output"
            )
        if not vis.steps:
            return f"{expr}: unknown step {target!r}; no step runs before this one"
        return f"{expr}: unknown step {target!r}; earlier steps: {', '.join(vis.steps)}"
