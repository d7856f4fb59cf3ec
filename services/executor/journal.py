"""A task's journal for the engine: step progress and checkpoints in the task store, across the Redis hop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

from services.common.envelope import now_ms
from services.common.errors import UnavailableError
from services.common.hop import Hop
from services.common.taskstore import TaskStore
from services.common.waits import WaitStore
from services.executor.dsl import Step

T = TypeVar("T")
# Checkpoint statuses a resumed run does not run again: skipped (its ``when`` was false) and recovered
# (it failed, then its catch steps ran or it continued on error) count as done.
COMPLETED = frozenset({"succeeded", "skipped", "recovered"})
# An agent step's model turns and tool calls, each checkpointed under ``<step key>/turn<n>[/call<m>]`` (event
# ``step.turn`` / ``step.tool_call``), so a redelivery replays them instead of asking or calling again.
AGENT_RECORDS = frozenset({"turn", "tool_call"})


class RedisCalls:
    """Task-store calls across the "executor.redis" hop; Redis failures become UnavailableError."""

    def __init__(self, store: TaskStore, hop: Hop) -> None:
        self.store = store
        self.hop = hop

    async def __call__(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        try:
            return await self.hop.call_as(f"taskstore.{fn.__name__}", fn, *args, **kwargs)
        except RedisError as exc:
            raise UnavailableError(f"Redis: {exc}") from exc


class TaskJournal:
    """The engine's Journal for one task, backed by the task store.

    Built from a claim, it already knows the checkpointed steps and that no cancellation was asked for
    when the claim read the record, so the engine's first two questions cost no round trip, nor does the
    step.started event the claim appended for the first step to run. Given the last step's id, it holds
    that step's checkpoint back (no step follows it) for the worker to store atomically with the task's
    outcome: ``take_final_checkpoint()``.
    """

    def __init__(
        self,
        redis: RedisCalls,
        tenant: str,
        task_id: str,
        attempt: int,
        *,
        claimed_steps: dict[str, dict[str, Any]] | None = None,
        announced_step_id: str = "",
        last_step_id: str = "",
        waits: WaitStore | None = None,
    ) -> None:
        self._redis, self._store = redis, redis.store
        self._tenant, self._task_id, self._attempt = tenant, task_id, attempt
        self._claimed_steps = claimed_steps
        self._cancel_known_clear = claimed_steps is not None
        self._announced_step_id = announced_step_id
        self._last_step_id = last_step_id
        self._final: tuple[str, dict[str, Any]] | None = None
        self._waits = waits

    def take_final_checkpoint(self) -> tuple[str, dict[str, Any]] | None:
        """The last step's held-back checkpoint, if any (then None): store it with the outcome."""
        final, self._final = self._final, None
        return final

    async def completed_steps(self) -> dict[str, Any]:
        states = self._claimed_steps
        if states is None:
            states = await self._redis(self._store.steps, self._tenant, self._task_id)
        return {sid: s.get("output") for sid, s in states.items() if s.get("status") in COMPLETED}

    async def step_started(self, step: Step) -> None:
        if step.id == self._announced_step_id:  # the claim appended this event
            self._announced_step_id = ""
            return
        await self._redis(
            self._store.append_event,
            self._tenant,
            self._task_id,
            "step.started",
            step_id=step.id,
            data=step_started_data(step, self._attempt),
        )

    async def step_succeeded(self, step: Step, output: Any, duration_ms: float) -> None:
        await self.step_finished(step, output, duration_ms, status="succeeded", error=None)

    async def step_finished(
        self, step: Step, output: Any, duration_ms: float, *, status: str, error: dict[str, Any] | None
    ) -> None:
        state = {
            "status": status,
            "type": step.type,
            "output": output,
            "duration_ms": round(duration_ms, 3),
            "attempt": self._attempt,
            "finished_ms": now_ms(),
        }
        if error is not None:
            state["error"] = error
        if step.id == self._last_step_id:
            self._final = (step.id, state)
            return
        await self._redis(self._store.checkpoint, self._tenant, self._task_id, step.id, state)

    async def step_failed(self, step: Step, error: dict[str, Any], duration_ms: float) -> None:
        state = {
            "status": "failed",
            "type": step.type,
            "error": error,
            "duration_ms": round(duration_ms, 3),
            "attempt": self._attempt,
            "finished_ms": now_ms(),
        }
        await self._redis(self._store.checkpoint, self._tenant, self._task_id, step.id, state)

    async def wait_state(self, key: str) -> dict[str, Any] | None:
        states = self._claimed_steps
        if states is None:
            states = await self._redis(self._store.steps, self._tenant, self._task_id)
        state = states.get(key)
        return state if state is not None and state.get("status") == "waiting" else None

    async def wait_started(self, step: Step, until_ms: int | None) -> None:
        state = {
            "status": "waiting",
            "type": step.type,
            "until_ms": until_ms,
            "signal": step.signal or None,
            "attempt": self._attempt,
            "started_ms": now_ms(),
        }
        await self._redis(self._store.checkpoint, self._tenant, self._task_id, step.id, state)
        if self._claimed_steps is not None:
            self._claimed_steps[step.id] = state

    async def signal(self, name: str) -> tuple[bool, Any]:
        if self._waits is None:
            return False, None
        received = await self._redis(self._waits.signals, self._tenant, self._task_id)
        return (True, received[name]) if name in received else (False, None)

    async def agent_records(self, key: str) -> dict[str, dict[str, Any]]:
        states = self._claimed_steps
        if states is None:
            states = await self._redis(self._store.steps, self._tenant, self._task_id)
        prefix = f"{key}/"
        return {
            k: s["output"]
            for k, s in states.items()
            if k.startswith(prefix) and s.get("status") in AGENT_RECORDS and isinstance(s.get("output"), dict)
        }

    async def agent_recorded(self, step: Step, record_key: str, kind: str, record: dict[str, Any]) -> None:
        state = {
            "status": kind,
            "type": step.type,
            "output": record,
            "duration_ms": record.get("duration_ms", 0.0),
            "attempt": self._attempt,
            "finished_ms": now_ms(),
        }
        await self._redis(self._store.checkpoint, self._tenant, self._task_id, record_key, state)
        if self._claimed_steps is not None:
            self._claimed_steps[record_key] = state

    async def cancel_requested(self) -> bool:
        if self._cancel_known_clear:  # the claim just read the flag (it refuses a flagged task)
            self._cancel_known_clear = False
            return False
        return await self._redis(self._store.cancel_requested, self._tenant, self._task_id)


def step_started_data(step: Step, attempt: int) -> dict[str, Any]:
    """The data of a step.started event."""
    return {"type": step.type, "index": step.index, "attempt": attempt}
