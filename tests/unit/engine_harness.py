"""A fake journal and a few controllable operations for the engine's unit tests."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field

from services.common.errors import from_dict
from services.executor.context import OpContext, OpServices, RunState
from services.executor.dsl import Step, Workflow, parse_workflow
from services.executor.engine import Engine
from services.executor.ops.base import Catalogue, Operation, Params


class EchoParams(Params):
    value: Any = None


class FlakyParams(Params):
    key: str
    fail: int = 0
    error: dict[str, Any] = Field(
        default_factory=lambda: {"code": "unavailable", "message": "try later", "retryable": True}
    )


class SleepParams(Params):
    seconds: float


class Ops:
    """Operations whose calls are counted, and that fail on demand."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.running = 0
        self.peak = 0

    async def echo(self, p: EchoParams, ctx: OpContext) -> Any:
        self.calls[f"echo:{ctx.step_id}"] += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0)  # let concurrent items overlap, so the concurrency bound is observable
        self.running -= 1
        return p.value

    async def flaky(self, p: FlakyParams, ctx: OpContext) -> Any:
        self.calls[p.key] += 1
        if self.calls[p.key] <= p.fail:
            raise from_dict(p.error)
        return {"key": p.key, "calls": self.calls[p.key]}

    async def sleep(self, p: SleepParams, ctx: OpContext) -> Any:
        await asyncio.sleep(p.seconds)
        return p.seconds

    def catalogue(self) -> Catalogue:
        return Catalogue(
            [
                Operation("echo", "test", "Returns value.", EchoParams, self.echo),
                Operation(
                    "flaky", "test", "Fails `fail` times per key, then succeeds.", FlakyParams, self.flaky
                ),
                Operation("sleep", "test", "Sleeps.", SleepParams, self.sleep),
            ]
        )


class MemoryJournal:
    """The engine's journal in memory: checkpoints by key with their status, and the events in order."""

    def __init__(
        self, done: dict[str, dict[str, Any]] | None = None, cancel_after: int | None = None
    ) -> None:
        self.states: dict[str, dict[str, Any]] = dict(done or {})
        self.events: list[tuple[str, str]] = []
        self.cancel_after = cancel_after

    async def completed_steps(self) -> dict[str, Any]:
        return {
            k: s.get("output")
            for k, s in self.states.items()
            if s["status"] in ("succeeded", "skipped", "recovered")
        }

    async def step_started(self, step: Step) -> None:
        self.events.append(("started", step.id))

    async def step_succeeded(self, step: Step, output: Any, duration_ms: float) -> None:
        raise AssertionError("the engine records outcomes with step_finished when the journal has it")

    async def step_finished(
        self, step: Step, output: Any, duration_ms: float, *, status: str, error: dict[str, Any] | None
    ) -> None:
        self.states[step.id] = {"status": status, "output": output, "error": error}
        self.events.append((status, step.id))

    async def step_failed(self, step: Step, error: dict[str, Any], duration_ms: float) -> None:
        self.states[step.id] = {"status": "failed", "error": error}
        self.events.append(("failed", step.id))

    async def cancel_requested(self) -> bool:
        if self.cancel_after is None:
            return False
        return sum(1 for e, _ in self.events if e == "started") >= self.cancel_after

    def status(self, key: str) -> str:
        return str(self.states[key]["status"])


class Runner:
    """Parses and runs documents with the test operations."""

    def __init__(self, tmp_path: Path) -> None:
        self.ops = Ops()
        self.catalogue = self.ops.catalogue()
        self.engine = Engine(self.catalogue, OpServices(storage_root=tmp_path))

    def parse(self, doc: dict[str, Any]) -> Workflow:
        return parse_workflow(doc, known_ops=self.catalogue)

    async def run(
        self, doc: dict[str, Any], journal: MemoryJournal | None = None, inputs: dict[str, Any] | None = None
    ) -> Any:
        wf = self.parse(doc)
        state = RunState(workflow=wf, task_id="t1", tenant="acme", attempt=1, inputs=inputs or {})
        return await self.engine.run(wf, state, journal if journal is not None else MemoryJournal())


class WaitingJournal(MemoryJournal):
    """A MemoryJournal that can hold waits: their recorded start, and signals received."""

    def __init__(self, done: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(done)
        self.signals: dict[str, Any] = {}

    async def wait_state(self, key: str) -> dict[str, Any] | None:
        state = self.states.get(key)
        return state if state is not None and state["status"] == "waiting" else None

    async def wait_started(self, step: Step, until_ms: int | None) -> None:
        self.states[step.id] = {"status": "waiting", "until_ms": until_ms}
        self.events.append(("waiting", step.id))

    async def signal(self, name: str) -> tuple[bool, Any]:
        return (True, self.signals[name]) if name in self.signals else (False, None)
