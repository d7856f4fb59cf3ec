"""Task state in Redis: the record, step checkpoints, the event stream and idempotency keys.

Keys are namespaced by tenant, so a tenant can only ever address its own tasks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from services.common.envelope import now_ms
from services.common.errors import InvalidInputError

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATUSES = frozenset({"queued", "running", "retrying", *TERMINAL})
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Moves a task to a new status unless it already ended; appends the event; expires ended tasks.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return {0, cur} end
local n = tonumber(ARGV[4])
local args = {'status', ARGV[1], 'updated_ms', ARGV[2]}
for i = 1, n do args[#args + 1] = ARGV[4 + i] end
redis.call('HSET', KEYS[1], unpack(args))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[3])
if ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  local ttl = tonumber(ARGV[5 + n])
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
end
return {1, cur}
"""

# Cancels a queued task at once, flags a running one; ended tasks are left alone.
_CANCEL = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return cur end
redis.call('HSET', KEYS[1], 'cancel', '1', 'updated_ms', ARGV[1])
if cur == 'queued' or cur == 'retrying' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'error', ARGV[3])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[2])
  return 'cancelled'
end
return cur
"""


def check_tenant(tenant: str) -> str:
    """Tenant ids become key segments: only a safe alphabet is allowed."""
    if not _TENANT.match(tenant):
        raise InvalidInputError(f"invalid tenant id {tenant!r}")
    return tenant


def check_task_id(task_id: str) -> str:
    """Reject ids that could address other keys."""
    if not _TASK_ID.match(task_id):
        raise InvalidInputError(f"invalid task id {task_id!r}")
    return task_id


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


def _event(task_id: str, type_: str, **fields: Any) -> str:
    body = {"type": type_, "task_id": task_id, "time_ms": now_ms()}
    body.update({k: v for k, v in fields.items() if v not in (None, "")})
    return json.dumps(body, default=str, separators=(",", ":"))


class TaskStore:
    """Reads and writes task state; every write that changes status is atomic with its event."""

    def __init__(self, redis: Redis, namespace: str, *, result_ttl_s: int = 7 * 24 * 3600) -> None:
        self._redis = redis
        self._ns = namespace
        self._ttl = result_ttl_s
        self._transition = redis.register_script(_TRANSITION)
        self._cancel = redis.register_script(_CANCEL)

    def _key(self, tenant: str, task_id: str) -> str:
        return f"{self._ns}:{check_tenant(tenant)}:task:{check_task_id(task_id)}"

    def _keys(self, tenant: str, task_id: str) -> tuple[str, str, str]:
        base = self._key(tenant, task_id)
        return base, f"{base}:events", f"{base}:steps"

    async def create(
        self,
        record: TaskRecord,
        *,
        workflow_json: str,
        inputs_json: str = "",
        idempotency_key: str = "",
        idempotency_ttl_s: int = 24 * 3600,
    ) -> tuple[TaskRecord, bool]:
        """Store a new queued task; with an idempotency key already used, return that task instead."""
        task_key, events_key, _ = self._keys(record.tenant, record.id)
        if idempotency_key:
            idem = f"{self._ns}:{record.tenant}:idem:{idempotency_key}"
            claimed = await self._redis.set(idem, record.id, nx=True, ex=idempotency_ttl_s)
            if not claimed:
                existing_id = await self._redis.get(idem)
                existing = await self.get(record.tenant, str(existing_id)) if existing_id else None
                if existing is not None:
                    return existing, False
                await self._redis.set(idem, record.id, ex=idempotency_ttl_s)
        now = now_ms()
        record.created_ms = record.updated_ms = now
        mapping = {
            "id": record.id,
            "tenant": record.tenant,
            "status": record.status,
            "name": record.name,
            "attempt": str(record.attempt),
            "created_ms": str(now),
            "updated_ms": str(now),
            "trace_id": record.trace_id,
            "workflow": workflow_json,
            "inputs": inputs_json,
            "idempotency_key": idempotency_key,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(task_key, mapping=mapping)
            pipe.xadd(events_key, {"e": _event(record.id, "task.queued", status=record.status)}, maxlen=10000)
            await pipe.execute()
        return record, True

    async def forget_idempotency(self, tenant: str, idempotency_key: str) -> None:
        """Release a key whose submit failed, so the client's retry creates the task afresh."""
        if idempotency_key:
            await self._redis.delete(f"{self._ns}:{check_tenant(tenant)}:idem:{idempotency_key}")

    async def get(self, tenant: str, task_id: str, *, with_steps: bool = False) -> TaskRecord | None:
        """The task, or None if this tenant has no such task."""
        data: dict[str, str] = await self._redis.hgetall(self._key(tenant, task_id))  # type: ignore[misc]
        if not data:
            return None
        record = TaskRecord.from_hash({str(k): str(v) for k, v in data.items()})
        if with_steps:
            record.steps = await self.steps(tenant, task_id)
        return record

    async def workflow_of(self, tenant: str, task_id: str) -> str | None:
        """The stored workflow JSON of a task."""
        value = await self._redis.hget(self._key(tenant, task_id), "workflow")  # type: ignore[misc]
        return str(value) if value is not None else None

    async def transition(
        self,
        tenant: str,
        task_id: str,
        status: str,
        event_type: str,
        *,
        fields: dict[str, str] | None = None,
        step_id: str = "",
        data: Any = None,
        error: dict[str, Any] | None = None,
    ) -> tuple[bool, str]:
        """Set the status (unless the task already ended) and append the event; returns (changed, previous)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        task_key, events_key, steps_key = self._keys(tenant, task_id)
        flat: list[str] = []
        for k, v in (fields or {}).items():
            flat += [k, v]
        event = _event(task_id, event_type, status=status, step_id=step_id, data=data, error=error)
        changed, previous = await self._transition(
            keys=[task_key, events_key, steps_key],
            args=[status, str(now_ms()), event, str(len(flat)), *flat, str(self._ttl)],
        )
        return bool(int(changed)), str(previous)

    async def append_event(
        self, tenant: str, task_id: str, event_type: str, *, step_id: str = "", data: Any = None
    ) -> None:
        """Append a non-status event (step progress)."""
        _, events_key, _ = self._keys(tenant, task_id)
        await self._redis.xadd(
            events_key, {"e": _event(task_id, event_type, step_id=step_id, data=data)}, maxlen=10000
        )

    async def checkpoint(self, tenant: str, task_id: str, step_id: str, state: dict[str, Any]) -> None:
        """Record a finished step durably before the next one starts, with its event, atomically."""
        _, events_key, steps_key = self._keys(tenant, task_id)
        event_type = "step.completed" if state.get("status") == "succeeded" else f"step.{state.get('status')}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(steps_key, step_id, json.dumps(state, default=str))
            pipe.xadd(
                events_key,
                {
                    "e": _event(
                        task_id,
                        event_type,
                        step_id=step_id,
                        data=state.get("output"),
                        error=state.get("error"),
                    )
                },
                maxlen=10000,
            )
            await pipe.execute()

    async def steps(self, tenant: str, task_id: str) -> dict[str, dict[str, Any]]:
        """Checkpointed step states by step id."""
        _, _, steps_key = self._keys(tenant, task_id)
        raw: dict[str, str] = await self._redis.hgetall(steps_key)  # type: ignore[misc]
        return {str(k): json.loads(v) for k, v in raw.items()}

    async def cancel_requested(self, tenant: str, task_id: str) -> bool:
        """Whether someone asked to cancel this task."""
        flag = await self._redis.hget(self._key(tenant, task_id), "cancel")  # type: ignore[misc]
        return bool(flag == "1")

    async def request_cancel(self, tenant: str, task_id: str) -> str:
        """Cancel a queued task now or flag a running one; returns the status after the call ("" if none)."""
        task_key, events_key, _ = self._keys(tenant, task_id)
        error = {"code": "cancelled", "message": "cancelled by request", "retryable": False}
        event = _event(task_id, "task.cancelled", status="cancelled", error=error)
        result = await self._cancel(
            keys=[task_key, events_key], args=[str(now_ms()), event, json.dumps(error)]
        )
        return str(result)

    async def events(
        self, tenant: str, task_id: str, *, after: str = "0-0", block_ms: int | None = None, count: int = 100
    ) -> list[TaskEventRecord]:
        """Events after the given stream id; blocks up to block_ms for new ones when given."""
        _, events_key, _ = self._keys(tenant, task_id)
        reply = await self._redis.xread({events_key: after or "0-0"}, count=count, block=block_ms)
        out: list[TaskEventRecord] = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                body = json.loads(fields["e"])
                out.append(
                    TaskEventRecord(
                        event_id=str(entry_id),
                        type=body["type"],
                        task_id=body["task_id"],
                        time_ms=int(body["time_ms"]),
                        status=body.get("status", ""),
                        step_id=body.get("step_id", ""),
                        data=body.get("data"),
                        error=body.get("error"),
                    )
                )
        return out
