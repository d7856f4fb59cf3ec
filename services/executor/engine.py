"""The workflow engine: runs a validated workflow step by step, checkpointing each result.

The engine knows nothing of RabbitMQ or Redis: it reads and writes progress through a ``Journal``
(the worker provides one backed by the task store), so resuming, cancellation and step events are
the journal's business and the engine stays testable on its own.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Histogram
from pydantic import ValidationError

from services.common.errors import InvalidInputError, OpenClawError, PayloadTooLargeError
from services.executor import expressions, metrics
from services.executor.context import OpContext, OpServices, RunState
from services.executor.dsl import Step, Workflow, params_error
from services.executor.expressions import ExpressionError
from services.executor.ops.base import Catalogue

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("openclaw.executor")


class Journal(Protocol):
    """Where a run's progress is kept (the task store, for the worker)."""

    async def completed_steps(self) -> dict[str, Any]:
        """Outputs of steps that already succeeded in an earlier delivery, by step id."""
        ...

    async def step_started(self, step: Step) -> None: ...

    async def step_succeeded(self, step: Step, output: Any, duration_ms: float) -> None:
        """Checkpoint: durable before the next step starts."""
        ...

    async def step_failed(self, step: Step, error: dict[str, Any], duration_ms: float) -> None: ...

    async def cancel_requested(self) -> bool: ...


class StepFailed(Exception):
    """A step failed; carries the step and the error (whose ``retryable`` decides what happens next)."""

    def __init__(self, step: Step, error: OpenClawError) -> None:
        super().__init__(f"{step.label()} failed: {error.message}")
        self.step = step
        self.error = error

    @property
    def retryable(self) -> bool:
        return self.error.retryable

    def record(self) -> dict[str, Any]:
        """The task's error record: the error's wire form plus which step failed."""
        out = self.error.to_dict()
        out["step_id"] = self.step.id
        out["step_type"] = self.step.type
        return out


class WorkflowCancelled(Exception):
    """Cancellation was requested; the step named did not start."""

    def __init__(self, next_step: Step) -> None:
        super().__init__(f"cancelled before {next_step.label()}")
        self.next_step = next_step


class Engine:
    """Runs workflows with the given operations and services."""

    def __init__(
        self, catalogue: Catalogue, services: OpServices, *, max_output_bytes: int = 1 << 20
    ) -> None:
        self.catalogue = catalogue
        self.services = services
        self.max_output_bytes = max_output_bytes
        self._step_seconds: dict[str, Histogram] = {}

    async def run(self, workflow: Workflow, state: RunState, journal: Journal) -> Any:
        """Run every step not already completed, then return the workflow's output.

        Raises StepFailed or WorkflowCancelled; anything else is a bug or an infrastructure error.
        """
        done = await journal.completed_steps()
        for step in workflow.steps:
            if step.id in done:
                state.outputs[step.id] = done[step.id]
                continue
            if await journal.cancel_requested():
                raise WorkflowCancelled(step)
            state.outputs[step.id] = await self._run_step(step, state, journal)
        return self._outputs(workflow, state)

    def _outputs(self, workflow: Workflow, state: RunState) -> Any:
        if workflow.outputs is None:
            return state.outputs[workflow.steps[-1].id]
        last = workflow.steps[-1]
        try:
            return expressions.resolve(workflow.outputs, state.scope())
        except ExpressionError as exc:
            raise StepFailed(last, InvalidInputError(f"outputs: {exc.message}")) from exc

    async def _run_step(self, step: Step, state: RunState, journal: Journal) -> Any:
        op = self.catalogue.get(step.type)
        await journal.step_started(step)
        start = time.perf_counter()
        with _tracer.start_as_current_span(
            f"step {step.id}", attributes={"openclaw.step.id": step.id, "openclaw.step.type": step.type}
        ) as span:
            try:
                if op is None:
                    raise InvalidInputError(f"{step.path}.type: unknown step type {step.type!r}")
                scope = state.scope(step.index)
                try:
                    raw = expressions.resolve(step.params, scope)
                except ExpressionError as exc:
                    raise InvalidInputError(
                        f"{step.label()}: {step.path}.params: {exc.message}", step_id=step.id
                    ) from exc
                try:
                    params = op.params.model_validate(raw)
                except ValidationError as exc:
                    raise params_error(step, exc) from exc
                ctx = OpContext(
                    tenant=state.tenant,
                    task_id=state.task_id,
                    step_id=step.id,
                    services=self.services,
                    attempt=state.attempt,
                    workflow_name=state.workflow.name,
                    prev_output=scope.get("prev", {}).get("output"),
                    has_prev="prev" in scope,
                )
                output = self._checked_output(step, await op.run(params, ctx))
            except OpenClawError as exc:
                await self._failed(step, exc, start, journal, span)
                raise StepFailed(step, exc) from exc
            except Exception as exc:
                # An operation bug must fail the task, not the worker; retrying would not fix it.
                log.exception("operation %s raised unexpectedly", step.type, extra={"step_id": step.id})
                err = OpenClawError(f"{step.type} failed unexpectedly: {type(exc).__name__}: {exc}")
                await self._failed(step, err, start, journal, span)
                raise StepFailed(step, err) from exc
        duration = time.perf_counter() - start
        seconds = self._step_seconds.get(step.type)
        if seconds is None:  # one child per operation, looked up once (labels() takes a lock)
            seconds = self._step_seconds[step.type] = metrics.STEP_DURATION.labels(step.type, "succeeded")
        seconds.observe(duration)
        await journal.step_succeeded(step, output, duration * 1000)
        return output

    def _checked_output(self, step: Step, output: Any) -> Any:
        """A plain-JSON copy of the output (so a resumed run sees exactly what a fresh one did), bounded."""
        try:
            text = json.dumps(output, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise OpenClawError(f"{step.type} returned a value that is not JSON: {exc}") from exc
        if len(text) > self.max_output_bytes:
            raise PayloadTooLargeError(
                f"{step.label()}: output is {len(text)} bytes; the limit is {self.max_output_bytes}"
            )
        return json.loads(text)

    async def _failed(
        self, step: Step, error: OpenClawError, start: float, journal: Journal, span: trace.Span
    ) -> None:
        duration = time.perf_counter() - start
        metrics.STEP_DURATION.labels(step.type, "failed").observe(duration)
        span.set_status(Status(StatusCode.ERROR, error.message))
        record = error.to_dict()
        record["step_id"] = step.id
        await journal.step_failed(step, record, duration * 1000)
