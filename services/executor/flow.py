"""Control steps: foreach over a list, parallel branches, calls of other workflows, and waits.

Each runs sequences of steps through the run it belongs to, so every nested step is checkpointed under
its own key and skipped on resume. When one item or branch fails, the others already running finish
(their checkpoints survive for the next delivery), no new item starts, and the first failure in document
order is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from services.common.envelope import now_ms
from services.common.errors import InvalidInputError
from services.executor.context import RunState
from services.executor.failures import StepFailed, WorkflowCancelled, WorkflowParked
from services.executor.model import MAX_ITEMS, Step, parse_time

if TYPE_CHECKING:
    from services.executor.engine import Run

_Stop = StepFailed | WorkflowCancelled
# A wait shorter than this is slept in place; a longer one parks the task.
INLINE_WAIT_MS = 1000


class Flow:
    """The control steps of one run."""

    def __init__(self, run: Run) -> None:
        self.run = run

    async def foreach(self, step: Step, keyed: Step, state: RunState, scope: dict[str, Any]) -> list[Any]:
        """The body for each item, at most ``concurrency`` at once; the items' results in order."""
        items = self.run.resolve(keyed, step.items, scope, "items")
        if not isinstance(items, list):
            raise InvalidInputError(
                f"{keyed.label()}: {keyed.path}.items: must be a list, not {_kind(items)}"
            )
        if len(items) > MAX_ITEMS:
            raise InvalidInputError(
                f"{keyed.label()}: {keyed.path}.items: {len(items)} items; at most {MAX_ITEMS} are allowed"
            )
        results: list[Any] = [None] * len(items)
        stops: dict[int, _Stop] = {}
        pending = iter(range(len(items)))

        async def worker() -> None:
            for i in pending:
                if stops:
                    return
                frame = state.child(f"{step.id}[{i}].", item=items[i], index=i)
                try:
                    results[i] = await self.run.sequence(step.body, frame)
                except (StepFailed, WorkflowCancelled) as exc:
                    stops[i] = exc
                except WorkflowParked as exc:  # the other items go on; the task parks once they are done
                    parks.append(exc)

        parks: list[WorkflowParked] = []
        await _all(worker() for _ in range(min(step.concurrency, len(items))))
        _raise_first(stops, parks)
        return results

    async def parallel(self, step: Step, state: RunState) -> list[Any]:
        """Every branch side by side, joined; each branch's last output, in order."""
        results: list[Any] = [None] * len(step.branches)
        stops: dict[int, _Stop] = {}

        async def branch(b: int) -> None:
            try:
                results[b] = await self.run.sequence(step.branches[b], state)
            except (StepFailed, WorkflowCancelled) as exc:
                stops[b] = exc
            except WorkflowParked as exc:
                parks.append(exc)

        parks: list[WorkflowParked] = []
        await _all(branch(b) for b in range(len(step.branches)))
        _raise_first(stops, parks)
        return results

    async def call(self, step: Step, keyed: Step, state: RunState, scope: dict[str, Any]) -> Any:
        """A called workflow, as part of this task: its steps checkpointed under ``<step id>.``."""
        called = step.workflow
        if called is None:  # the parser never builds one without it
            raise InvalidInputError(f"{keyed.label()}: no workflow to call")
        given = self.run.resolve(keyed, step.inputs, scope, "inputs")
        inputs = called.bind_inputs(given, where=f"{keyed.path}.inputs")
        frame = state.called(called, inputs, f"{step.id}.")
        last = await self.run.sequence(called.steps, frame)
        return self.run.outputs(called, frame, last)

    async def wait(self, step: Step, keyed: Step, scope: dict[str, Any]) -> Any:
        """A wait for a duration, a time or a signal: done now, slept in place if short, else parked."""
        waits = self.run.waits
        if waits is None:
            raise InvalidInputError(f"{keyed.label()}: this executor cannot hold waits")
        now = now_ms()
        started = await waits.wait_state(keyed.id)
        if started is None:
            until = self._until(step, keyed, scope, now)
            await waits.wait_started(keyed, until)
        else:
            until = started.get("until_ms")
        if step.signal:
            received, payload = await waits.signal(step.signal)
            if received or (until is not None and now >= until):
                return {"signal": step.signal, "received": received, "payload": payload if received else None}
            raise WorkflowParked(keyed, until, (step.signal,))
        assert until is not None
        if until - now > INLINE_WAIT_MS:
            raise WorkflowParked(keyed, until)
        if until > now:
            await asyncio.sleep((until - now) / 1000)
        return {"until_ms": until}

    def _until(self, step: Step, keyed: Step, scope: dict[str, Any], now: int) -> int | None:
        if step.wait_seconds is not None:
            return now + int(step.wait_seconds * 1000)
        if step.wait_until is not None:
            text = self.run.resolve(keyed, step.wait_until, scope, "until")
            try:
                return parse_time(text if isinstance(text, str) else str(text))
            except ValueError as exc:
                raise InvalidInputError(
                    f"{keyed.label()}: {keyed.path}.until: not an ISO 8601 time with an offset: {exc}"
                ) from exc
        return None if step.timeout_s is None else now + int(step.timeout_s * 1000)


def _raise_first(stops: dict[int, _Stop], parks: list[WorkflowParked]) -> None:
    """A failure or cancellation first (in document order), else one park for every waiting part."""
    if stops:
        raise stops[min(stops)]
    if parks:
        raise WorkflowParked.merge(parks)


async def _all(work: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines together; an unexpected error (Redis away, say) cancels the rest and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in work:
                group.create_task(coro)
    except BaseExceptionGroup as grouped:
        raise grouped.exceptions[0] from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", str: "a string", bool: "a boolean"}.get(type(value), "a number")
