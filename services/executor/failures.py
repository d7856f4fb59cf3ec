"""How a run stops early: a step failed, or cancellation was asked for."""

from __future__ import annotations

from typing import Any

from services.common.errors import OpenClawError
from services.executor.model import Step


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


class WorkflowParked(Exception):
    """A wait step cannot finish yet: the task is to be parked until ``wake_at_ms`` (None: until a signal)."""

    def __init__(self, step: Step, wake_at_ms: int | None, signals: tuple[str, ...] = ()) -> None:
        super().__init__(f"{step.label()} waits")
        self.step = step
        self.wake_at_ms = wake_at_ms
        self.signals = signals

    @staticmethod
    def merge(parks: list[WorkflowParked]) -> WorkflowParked:
        """One park for several waiting branches or items: wake at the earliest, on any of their signals."""
        times = [p.wake_at_ms for p in parks if p.wake_at_ms is not None]
        signals = tuple(s for p in parks for s in p.signals)
        return WorkflowParked(parks[0].step, min(times) if times else None, signals)


class WorkflowCancelled(Exception):
    """Cancellation was requested; the step named did not start."""

    def __init__(self, next_step: Step) -> None:
        super().__init__(f"cancelled before {next_step.label()}")
        self.next_step = next_step
