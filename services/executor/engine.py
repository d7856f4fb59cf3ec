"""The workflow engine: runs a validated workflow step by step, checkpointing each result.

The engine knows nothing of RabbitMQ or Redis: it reads and writes progress through a ``Journal``
(the worker provides one backed by the task store), so resuming, cancellation and step events are
the journal's business and the engine stays testable on its own.

Every step, nested ones included, is checkpointed under a key: its id, prefixed in a foreach item
(``each[2].fetch``) or a called workflow (``call.step1``), so a redelivered task skips every step that
already finished, at any depth. Control steps (foreach, parallel, workflow) are in ``flow.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol, cast

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Histogram
from pydantic import ValidationError

from services.common import telemetry
from services.common.errors import InvalidInputError, OpenClawError, PayloadTooLargeError, TimeoutError_
from services.executor import expressions, metrics
from services.executor.agent import run_agent
from services.executor.context import OpContext, OpServices, RunState
from services.executor.expressions import ExpressionError
from services.executor.failures import StepFailed, WorkflowCancelled, WorkflowParked
from services.executor.flow import Flow
from services.executor.model import Step, Workflow
from services.executor.ops.base import Catalogue, Operation
from services.executor.params import params_error

if TYPE_CHECKING:
    from services.executor.governance import Governance

__all__ = [
    "Engine",
    "Journal",
    "OutcomeJournal",
    "Run",
    "StepFailed",
    "WaitJournal",
    "WorkflowCancelled",
    "WorkflowParked",
]

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("openclaw.executor")


class Journal(Protocol):
    """Where a run's progress is kept (the task store, for the worker). Steps come keyed: ``step.id`` is
    the checkpoint key."""

    async def completed_steps(self) -> dict[str, Any]:
        """Outputs of steps that already finished in an earlier delivery, by checkpoint key."""
        ...

    async def step_started(self, step: Step) -> None: ...

    async def step_succeeded(self, step: Step, output: Any, duration_ms: float) -> None:
        """Checkpoint: durable before the next step starts."""
        ...

    async def step_failed(self, step: Step, error: dict[str, Any], duration_ms: float) -> None: ...

    async def cancel_requested(self) -> bool: ...


class OutcomeJournal(Protocol):
    """A journal that also records how a step finished when it did not simply succeed."""

    async def step_finished(
        self, step: Step, output: Any, duration_ms: float, *, status: str, error: dict[str, Any] | None
    ) -> None:
        """Checkpoint with a status: "succeeded", "skipped" (``when`` was false) or "recovered" (failed,
        then caught or continued); each counts as completed on resume."""
        ...


class WaitJournal(Protocol):
    """A journal that can hold a wait across deliveries: when it started, and the signals received."""

    async def wait_state(self, key: str) -> dict[str, Any] | None:
        """The recorded start of the wait step under ``key`` (``{"until_ms": ...}``), if it started before."""
        ...

    async def wait_started(self, step: Step, until_ms: int | None) -> None:
        """Record that the wait began and until when (durably, so a later delivery waits for the same time)."""
        ...

    async def signal(self, name: str) -> tuple[bool, Any]:
        """Whether the task received the named signal, and its payload."""
        ...


class Engine:
    """Runs workflows with the given operations and services."""

    def __init__(
        self,
        catalogue: Catalogue,
        services: OpServices,
        *,
        max_output_bytes: int = 1 << 20,
        governance: Governance | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.services = services
        self.max_output_bytes = max_output_bytes
        # Tenant policy and audit of every operation (None: neither, as in engine-only tests).
        self.governance = governance
        self._step_seconds: dict[str, Histogram] = {}

    async def run(self, workflow: Workflow, state: RunState, journal: Journal, *, actor: str = "") -> Any:
        """Run every step not already completed, then return the workflow's output; ``actor`` (who submitted
        the task) is named in audit records.

        Raises StepFailed or WorkflowCancelled; anything else is a bug or an infrastructure error.
        """
        run = Run(self, journal, await journal.completed_steps(), actor=actor)
        last = await run.sequence(workflow.steps, state)
        return run.outputs(workflow, state, last)

    def checked_output(self, step: Step, output: Any) -> Any:
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

    def observe(self, step_type: str, seconds: float) -> None:
        histogram = self._step_seconds.get(step_type)
        if histogram is None:  # one child per operation, looked up once (labels() takes a lock)
            histogram = self._step_seconds[step_type] = metrics.STEP_DURATION.labels(step_type, "succeeded")
        histogram.observe(seconds)


class Run:
    """One delivery's run of a task: what is already done, and how each step is run and recorded."""

    def __init__(self, engine: Engine, journal: Journal, done: dict[str, Any], *, actor: str = "") -> None:
        self.engine = engine
        self.journal = journal
        self.done = done
        self.actor = actor
        self.flow = Flow(self)
        records_outcomes, holds_waits = _abilities(type(journal))
        self._outcomes = cast(OutcomeJournal, journal) if records_outcomes else None
        self.waits = cast(WaitJournal, journal) if holds_waits else None

    async def sequence(self, steps: tuple[Step, ...], state: RunState) -> Any:
        """Run a sequence in a frame; returns the last step's output."""
        prev: str | None = None
        for step in steps:
            key = state.key(step.id)
            if key in self.done:
                state.outputs[step.id] = self.done[key]
            else:
                keyed = step if key == step.id else dataclasses.replace(step, id=key)
                if await self.journal.cancel_requested():
                    raise WorkflowCancelled(keyed)
                state.outputs[step.id] = await self.step(step, keyed, state, prev)
            # After the join, a parallel step's branch steps are visible (null if they never ran).
            for branch in step.branches:
                self.expose(branch, state)
            prev = step.id
        return state.outputs[steps[-1].id] if steps else None

    def expose(self, steps: tuple[Step, ...], state: RunState) -> None:
        """Make a joined branch's step outputs visible: as run now, as checkpointed before, or null."""
        for step in steps:
            if step.id not in state.outputs:
                state.outputs[step.id] = self.done.get(state.key(step.id))
            for branch in step.branches:
                self.expose(branch, state)

    async def step(self, step: Step, keyed: Step, state: RunState, prev: str | None) -> Any:
        """Run one step (keyed: the step under its checkpoint key) and checkpoint how it ended."""
        scope = state.scope(prev)
        if step.when is not None:
            try:
                condition = self.resolve(keyed, step.when, scope, "when")
            except OpenClawError as exc:
                await self.journal.step_failed(keyed, _record(keyed, exc), 0.0)
                raise StepFailed(keyed, exc) from exc
            if not expressions.truthy(condition):
                await self.finished(keyed, None, 0.0, status="skipped")
                return None
        await self.journal.step_started(keyed)
        start = time.perf_counter()
        try:
            output = await self.execute(step, keyed, state, scope)
        except StepFailed as exc:
            if not (step.catch or step.continue_on_error):
                raise
            error = exc.record()
            if step.catch:
                output = await self.sequence(step.catch, state.child(error=error))
            else:
                output = {"error": error}
            await self.finished(keyed, output, _ms(start), status="recovered", error=error)
            return output
        await self.finished(keyed, output, _ms(start), status="succeeded")
        return output

    async def execute(self, step: Step, keyed: Step, state: RunState, scope: dict[str, Any]) -> Any:
        if step.type == "foreach":
            return await self.contained(keyed, self.flow.foreach(step, keyed, state, scope))
        if step.type == "parallel":
            return await self.contained(keyed, self.flow.parallel(step, state))
        if step.type == "workflow":
            return await self.contained(keyed, self.flow.call(step, keyed, state, scope))
        if step.type == "wait":
            return await self.contained(keyed, self.flow.wait(step, keyed, scope))
        if step.type == "agent":
            return await self.contained(keyed, run_agent(self, step, keyed, state, scope))
        return await self.operation(step, keyed, state, scope)

    async def contained(self, keyed: Step, work: Awaitable[Any]) -> Any:
        """A control step's result, bounded like an operation's; its failure is recorded under its key too."""
        start = time.perf_counter()
        try:
            return self.engine.checked_output(keyed, await work)
        except StepFailed as exc:
            await self.journal.step_failed(keyed, exc.record(), _ms(start))
            raise
        except OpenClawError as exc:
            await self.journal.step_failed(keyed, _record(keyed, exc), _ms(start))
            raise StepFailed(keyed, exc) from exc

    async def operation(self, step: Step, keyed: Step, state: RunState, scope: dict[str, Any]) -> Any:
        """An operation step, with its in-process retries."""
        policy = step.retry
        failures = 0
        while True:
            start = time.perf_counter()
            with telemetry.span(
                _tracer,
                f"step {keyed.id}",
                attributes={"openclaw.step.id": keyed.id, "openclaw.step.type": step.type},
            ) as span:
                try:
                    output = await self.attempt(step, keyed, state, scope)
                except OpenClawError as exc:
                    error = exc
                except Exception as exc:
                    # An operation bug must fail the task, not the worker; retrying would not fix it.
                    log.exception("operation %s raised unexpectedly", step.type, extra={"step_id": keyed.id})
                    error = OpenClawError(f"{step.type} failed unexpectedly: {type(exc).__name__}: {exc}")
                else:
                    self.engine.observe(step.type, time.perf_counter() - start)
                    return output
                failures += 1
                metrics.STEP_DURATION.labels(step.type, "failed").observe(time.perf_counter() - start)
                span.set_status(Status(StatusCode.ERROR, error.message))
            if (
                policy is not None
                and failures < policy.attempts
                and policy.applies(error.code, error.retryable)
            ):
                await asyncio.sleep(policy.delay_s(failures))
                continue
            record = _record(keyed, error)
            if policy is not None:
                record["tries"] = failures
            await self.journal.step_failed(keyed, record, _ms(start))
            raise StepFailed(keyed, error)

    async def attempt(self, step: Step, keyed: Step, state: RunState, scope: dict[str, Any]) -> Any:
        op = self.engine.catalogue.get(step.type)
        if op is None:
            raise InvalidInputError(f"{step.path}.type: unknown step type {step.type!r}")
        governance = self.engine.governance
        if governance is None:
            return await self.run_op(op, step, keyed, state, scope, {})
        resolved: dict[str, Any] = {}
        return await governance.run_op(
            step.type,
            lambda: self.run_op(op, step, keyed, state, scope, resolved),
            tenant=state.tenant,
            task_id=state.task_id,
            step_id=keyed.id,
            attempt=state.attempt,
            actor=self.actor,
            params=resolved,
        )

    async def run_op(
        self,
        op: Operation[Any],
        step: Step,
        keyed: Step,
        state: RunState,
        scope: dict[str, Any],
        resolved: dict[str, Any],
    ) -> Any:
        """The operation's checked output; ``resolved`` receives its resolved params (for the audit record)."""
        raw = self.resolve(keyed, step.params, scope, "params")
        if isinstance(raw, dict):
            resolved.update(raw)
        try:
            params = op.params.model_validate(raw)
        except ValidationError as exc:
            raise params_error(keyed, exc) from exc
        ctx = OpContext(
            tenant=state.tenant,
            task_id=state.task_id,
            step_id=keyed.id,
            services=self.engine.services,
            attempt=state.attempt,
            workflow_name=state.workflow.name,
            prev_output=scope.get("prev", {}).get("output"),
            has_prev="prev" in scope,
        )
        if step.timeout_s is None:
            return self.engine.checked_output(keyed, await op.run(params, ctx))
        try:
            async with asyncio.timeout(step.timeout_s) as deadline:
                output = await op.run(params, ctx)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise TimeoutError_(
                f"{keyed.label()}: did not finish within its timeout of {step.timeout_s:g} s",
                timeout_s=step.timeout_s,
            ) from None
        return self.engine.checked_output(keyed, output)

    def resolve(self, keyed: Step, value: Any, scope: dict[str, Any], field: str) -> Any:
        """A step field with its expressions resolved; StepFailed naming the step and field if one fails."""
        try:
            return expressions.resolve(value, scope)
        except ExpressionError as exc:
            raise InvalidInputError(
                f"{keyed.label()}: {keyed.path}.{field}: {exc.message}", step_id=keyed.id
            ) from exc

    async def finished(
        self,
        keyed: Step,
        output: Any,
        duration_ms: float,
        *,
        status: str,
        error: dict[str, Any] | None = None,
    ) -> None:
        if self._outcomes is not None:
            await self._outcomes.step_finished(keyed, output, duration_ms, status=status, error=error)
        else:
            await self.journal.step_succeeded(keyed, output, duration_ms)

    def outputs(self, workflow: Workflow, state: RunState, last: Any) -> Any:
        """A workflow's result: its resolved ``outputs``, or its last step's output."""
        if workflow.outputs is None:
            return last
        final = workflow.steps[-1]
        try:
            return expressions.resolve(workflow.outputs, state.scope(final.id))
        except ExpressionError as exc:
            keyed = dataclasses.replace(final, id=state.key(final.id))
            raise StepFailed(keyed, InvalidInputError(f"outputs: {exc.message}")) from exc


@functools.cache
def _abilities(journal_type: type) -> tuple[bool, bool]:
    """Whether a journal class records outcomes and holds waits (the protocol checks are slow per run)."""
    return (
        callable(getattr(journal_type, "step_finished", None)),
        all(callable(getattr(journal_type, m, None)) for m in ("wait_state", "wait_started", "signal")),
    )


def _record(keyed: Step, error: OpenClawError) -> dict[str, Any]:
    record = error.to_dict()
    record["step_id"] = keyed.id
    return record


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
