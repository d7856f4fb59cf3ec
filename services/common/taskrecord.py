"""The task record types: a task as stored and shown, one entry of its event stream, a worker's claim on it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from services.common.envelope import now_ms

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATUSES = frozenset({"queued", "running", "retrying", "waiting", *TERMINAL})


@dataclass
class TaskRecord:
    """A task as stored and as the APIs show it."""

    id: str
    tenant: str
    status: str
    name: str = ""
    attempt: int = 0
    created_ms: int = 0
    updated_ms: int = 0
    trace_id: str = ""
    result: Any = None
    error: dict[str, Any] | None = None
    cancel_requested: bool = False
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> TaskRecord:
        """Build from the Redis hash."""
        return cls(
            id=data["id"],
            tenant=data["tenant"],
            status=data.get("status", "queued"),
            name=data.get("name", ""),
            attempt=int(data.get("attempt", "0")),
            created_ms=int(data.get("created_ms", "0")),
            updated_ms=int(data.get("updated_ms", "0")),
            trace_id=data.get("trace_id", ""),
            result=json.loads(data["result"]) if data.get("result") else None,
            error=json.loads(data["error"]) if data.get("error") else None,
            cancel_requested=data.get("cancel") == "1",
        )

    def to_api(self) -> dict[str, Any]:
        """The JSON shape returned by the HTTP API."""
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "name": self.name,
            "attempt": self.attempt,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "trace_id": self.trace_id,
            "result": self.result,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
        }
        if self.steps:
            out["steps"] = self.steps
        return out


@dataclass
class TaskEventRecord:
    """One entry of a task's event stream."""

    event_id: str
    type: str
    task_id: str
    time_ms: int
    status: str = ""
    step_id: str = ""
    data: Any = None
    error: dict[str, Any] | None = None

    def to_api(self) -> dict[str, Any]:
        """The JSON shape used in SSE and WebSocket frames."""
        return {
            "event_id": self.event_id,
            "type": self.type,
            "task_id": self.task_id,
            "time_ms": self.time_ms,
            "status": self.status,
            "step_id": self.step_id,
            "data": self.data,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class TaskClaim:
    """What a worker's claim found: ``outcome`` is "claimed" (the task is now running), "missing",
    "ended", "leased" (running under another worker's live lease), "cancel_requested" or "refused"
    (nothing changed); ``status`` is the status before the claim."""

    outcome: str
    status: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    step_started: str = ""
    """The step whose step.started event the claim appended ("" if none)."""

    @property
    def claimed(self) -> bool:
        return self.outcome == "claimed"


def event_json(task_id: str, type_: str, **fields: Any) -> str:
    """An event body as stored in a task's stream (for scripts beside the task store's own)."""
    body = {"type": type_, "task_id": task_id, "time_ms": now_ms()}
    body.update({k: v for k, v in fields.items() if v not in (None, "")})
    return json.dumps(body, default=str, separators=(",", ":"))
