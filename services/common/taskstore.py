"""Task state in Redis: the record, step checkpoints, the event stream and idempotency keys.

Keys are namespaced by tenant, so a tenant can only ever address its own tasks. With a Sealer (master keys
configured), the tenant's data is encrypted at rest: the workflow, inputs, result and error fields, every step
checkpoint and the data and error of every event; the Lua scripts treat them as opaque strings, and every read
here returns plaintext. Values written without a sealer (older records, scripts' own events) read as they are.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from services.common.encryption import DecryptionError
from services.common.envelope import now_ms
from services.common.errors import InvalidInputError, UnavailableError

if TYPE_CHECKING:
    from services.common.encryption import Sealer

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATUSES = frozenset({"queued", "running", "retrying", "waiting", *TERMINAL})
_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SEALED_PREFIX = "enc:v1:"  # services.common.encryption.TEXT_PREFIX
# Task hash fields that hold the tenant's data.
SEALED_FIELDS = ("workflow", "inputs", "result", "error")

# Moves a task to a new status unless it already ended; appends the event. A task that ends also gets
# its one entry on the "done" stream (what long-polls block on) and every key of it expires. A step
# checkpoint may ride along (the last step's, written with the outcome it leads to), ahead of the status.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return {0, cur} end
local n = tonumber(ARGV[4])
if ARGV[6 + n] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[6 + n], ARGV[7 + n])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[8 + n])
end
local args = {'status', ARGV[1], 'updated_ms', ARGV[2]}
for i = 1, n do args[#args + 1] = ARGV[4 + i] end
redis.call('HSET', KEYS[1], unpack(args))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[3])
if ARGV[1] == 'succeeded' or ARGV[1] == 'failed' or ARGV[1] == 'cancelled' then
  redis.call('XADD', KEYS[4], '*', 'status', ARGV[1])
  local ttl = tonumber(ARGV[5 + n])
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ttl) end
end
return {1, cur}
"""

# Cancels a queued, retrying or parked ("waiting") task at once (with its "done" entry; every key of it
# expires, as for any ended task), flags a running one; ended tasks are left alone.
_CANCEL = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return cur end
redis.call('HSET', KEYS[1], 'cancel', '1', 'updated_ms', ARGV[1])
if cur == 'queued' or cur == 'retrying' or cur == 'waiting' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'error', ARGV[3])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[2])
  redis.call('XADD', KEYS[3], '*', 'status', 'cancelled')
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], tonumber(ARGV[4])) end
  return 'cancelled'
end
return cur
"""

# Stores a new task with its task.queued event (one command instead of a MULTI block).
_CREATE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[1])
return 1
"""

# The same with an idempotency key, in one step so two submits with one key can never both create a task:
# returns the id of the task the key already names (while that task exists), else '' after creating this one.
_CREATE_IDEMPOTENT = """
local existing = redis.call('GET', KEYS[3])
if existing and redis.call('EXISTS', ARGV[4] .. existing) == 1 then return existing end
redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[1])
return ''
"""

# Records a finished step with its event, atomically (one command instead of a MULTI block).
_CHECKPOINT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[3])
return 1
"""

# A worker takes a delivered task: one round trip that refuses a missing or ended task, a task running
# under another worker's live lease (owner ARGV[7]; Redis' clock, so workers' clocks do not matter), a
# cancel-flagged task (or one the worker must end without running: ARGV[4] non-empty), else moves it to
# running under a lease of ARGV[8] ms for ARGV[7] (none if ARGV[7] is empty), appends task.started, and
# step.started of the first step (ARGV[5], event ARGV[6]) unless that step is already checkpointed;
# returns whether it did, and the checkpointed steps.
_CLAIM = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return {'ended', cur} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if cur == 'running' then
  local owner = redis.call('HGET', KEYS[1], 'lease_owner')
  local till = tonumber(redis.call('HGET', KEYS[1], 'lease_until_ms') or '0') or 0
  if owner and owner ~= '' and owner ~= ARGV[7] and till > now then return {'leased', cur} end
end
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return {'cancel_requested', cur} end
if ARGV[4] ~= '' then return {'refused', cur} end
redis.call('HSET', KEYS[1], 'status', 'running', 'updated_ms', ARGV[1], 'attempt', ARGV[3])
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'lease_owner', ARGV[7], 'lease_until_ms', now + tonumber(ARGV[8]))
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[2])
local announced = ''
if ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[3], ARGV[5]) == 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[6])
  announced = ARGV[5]
end
local out = {'claimed', cur, announced}
local steps = redis.call('HGETALL', KEYS[3])
for i = 1, #steps do out[#out + 1] = steps[i] end
return out
"""

# Extends a running task's lease by ARGV[2] ms, only for its owner ARGV[1]; 0 if the lease is not its own.
_RENEW = """
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'lease_until_ms', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2]))
return 1
"""

# Gives up a lease (a run handed back unfinished), only for its owner ARGV[1].
_RELEASE = """
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until_ms')
return 1
"""


# Words used as the first segment of deployment-wide keys (``{ns}:audit:...``, ``{ns}:quota:...``): a tenant with
# one of these ids would share that first segment with them (tenant keys are ``{ns}:{tenant}:...``), so they are
# refused as tenant ids. tests/unit/test_tenant_ids.py keeps this list in step with the code.
RESERVED_TENANTS = frozenset(
    {
        "apikey", "apikeys", "audit", "breaker", "breakers", "chatseen", "conv", "dek", "deks", "dlq", "kv",
        "models", "paired", "pairing", "quota", "ratelimit", "router", "schedule", "slots", "tenants", "waiting",
        "task", "idem", "ops", "system", "admin",
    }
)  # fmt: skip


def check_tenant(tenant: str) -> str:
    """Tenant ids become key segments: only a safe alphabet, and never a word deployment-wide keys start with."""
    if not _TENANT.match(tenant):
        raise InvalidInputError(f"invalid tenant id {tenant!r}")
    if tenant.lower() in RESERVED_TENANTS:
        raise InvalidInputError(f"tenant id {tenant!r} is reserved")
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


def _event(task_id: str, type_: str, **fields: Any) -> str:
    body = {"type": type_, "task_id": task_id, "time_ms": now_ms()}
    body.update({k: v for k, v in fields.items() if v not in (None, "")})
    return json.dumps(body, default=str, separators=(",", ":"))


def event_json(task_id: str, type_: str, **fields: Any) -> str:
    """An event body as stored in a task's stream (for scripts beside the task store's own)."""
    return _event(task_id, type_, **fields)


class TaskStore:
    """Reads and writes task state; every write that changes status is atomic with its event."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        *,
        result_ttl_s: int = 7 * 24 * 3600,
        sealer: Sealer | None = None,
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._ttl = result_ttl_s
        self._sealer = sealer
        self._transition = redis.register_script(_TRANSITION)
        self._cancel = redis.register_script(_CANCEL)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._checkpoint = redis.register_script(_CHECKPOINT)
        self._create = redis.register_script(_CREATE)
        self._create_idempotent = redis.register_script(_CREATE_IDEMPOTENT)

    def _key(self, tenant: str, task_id: str) -> str:
        return f"{self._ns}:{check_tenant(tenant)}:task:{check_task_id(task_id)}"

    def task_key(self, tenant: str, task_id: str) -> str:
        """The task's Redis hash (its events, steps and done stream are this plus ``:events`` and so on)."""
        return self._key(tenant, task_id)

    @property
    def namespace(self) -> str:
        return self._ns

    @property
    def redis(self) -> Redis:
        return self._redis

    @property
    def result_ttl_s(self) -> int:
        return self._ttl

    @property
    def sealer(self) -> Sealer | None:
        """What encrypts the tenant's data at rest (None: stored in plaintext)."""
        return self._sealer

    async def _seal(self, tenant: str, value: str, where: str) -> str:
        if self._sealer is None or not value:
            return value
        return await self._sealer.seal_text(tenant, value, where)

    async def _open(self, tenant: str, value: str, where: str) -> str:
        if not value.startswith(SEALED_PREFIX):
            return value
        if self._sealer is None:
            raise DecryptionError(
                f"{where}: encrypted, but this process has no master keys (OPENCLAW_MASTER_KEYS)"
            )
        return await self._sealer.open_text(tenant, value, where)

    async def _event(self, tenant: str, task_id: str, type_: str, **fields: Any) -> str:
        """An event body; with a sealer, its data and error travel sealed in ``sealed``."""
        data, error = fields.pop("data", None), fields.pop("error", None)
        if self._sealer is None or (data in (None, "") and not error):
            return _event(task_id, type_, data=data, error=error, **fields)
        payload = json.dumps({"data": data, "error": error}, default=str, separators=(",", ":"))
        sealed = await self._sealer.seal_text(tenant, payload, f"task:{task_id}:event")
        return _event(task_id, type_, sealed=sealed, **fields)

    async def _checkpoint_args(
        self, tenant: str, task_id: str, step_id: str, state: dict[str, Any]
    ) -> tuple[str, str]:
        """(stored state, event) of a step checkpoint."""
        status = state.get("status")
        event_type = "step.completed" if status == "succeeded" else f"step.{status}"
        event = await self._event(
            tenant, task_id, event_type, step_id=step_id, data=state.get("output"), error=state.get("error")
        )
        stored = await self._seal(tenant, json.dumps(state, default=str), f"task:{task_id}:step:{step_id}")
        return stored, event

    async def _step_state(self, tenant: str, task_id: str, step_id: str, raw: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(await self._open(tenant, raw, f"task:{task_id}:step:{step_id}"))
        return value

    async def _record(self, tenant: str, task_id: str, data: dict[str, str]) -> TaskRecord:
        """A task record from its hash, its sealed fields opened."""
        for name in SEALED_FIELDS:
            if data.get(name, "").startswith(SEALED_PREFIX):
                data[name] = await self._open(tenant, data[name], f"task:{task_id}:{name}")
        return TaskRecord.from_hash(data)

    def _keys(self, tenant: str, task_id: str) -> tuple[str, str, str]:
        base = self._key(tenant, task_id)
        return base, f"{base}:events", f"{base}:steps"

    def _done_key(self, tenant: str, task_id: str) -> str:
        return f"{self._key(tenant, task_id)}:done"

    async def create(
        self,
        record: TaskRecord,
        *,
        workflow_json: str,
        inputs_json: str = "",
        idempotency_key: str = "",
        idempotency_ttl_s: int = 24 * 3600,
        deadline_ms: int = 0,
    ) -> tuple[TaskRecord, bool]:
        """Store a new queued task; with an idempotency key already naming a task, return that task instead."""
        task_key, events_key, _ = self._keys(record.tenant, record.id)
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
            "workflow": await self._seal(record.tenant, workflow_json, f"task:{record.id}:workflow"),
            "inputs": await self._seal(record.tenant, inputs_json, f"task:{record.id}:inputs"),
            "idempotency_key": idempotency_key,
            "deadline_ms": str(deadline_ms),
        }
        flat = [item for pair in mapping.items() for item in pair]
        event = await self._event(record.tenant, record.id, "task.queued", status=record.status)
        if not idempotency_key:
            await self._create(keys=[task_key, events_key], args=[event, *flat])
            return record, True
        idem = f"{self._ns}:{record.tenant}:idem:{idempotency_key}"
        prefix = f"{self._ns}:{record.tenant}:task:"
        existing_id = await self._create_idempotent(
            keys=[task_key, events_key, idem],
            args=[event, record.id, str(idempotency_ttl_s), prefix, *flat],
        )
        if not existing_id:
            return record, True
        existing = await self.get(record.tenant, str(existing_id))
        if existing is None:  # ended and expired between the script and this read
            raise UnavailableError("the task this idempotency key names just expired; retry", retry_after=1.0)
        return existing, False

    async def mark_enqueued(self, tenant: str, task_id: str) -> None:
        """Record that RabbitMQ confirmed the task's envelope (what an idempotent replay checks)."""
        await self._redis.hset(self._key(tenant, task_id), "enqueued", "1")  # type: ignore[misc]

    async def envelope_fields(self, tenant: str, task_id: str) -> dict[str, str]:
        """What re-publishing a task's envelope needs: workflow, inputs, deadline_ms, enqueued."""
        values = await self._redis.hmget(  # type: ignore[misc]
            self._key(tenant, task_id), ["workflow", "inputs", "deadline_ms", "enqueued"]
        )
        keys = ("workflow", "inputs", "deadline_ms", "enqueued")
        out = {k: str(v) for k, v in zip(keys, values, strict=True) if v is not None}
        for name in ("workflow", "inputs"):
            if name in out:
                out[name] = await self._open(tenant, out[name], f"task:{task_id}:{name}")
        return out

    async def forget_idempotency(self, tenant: str, idempotency_key: str) -> None:
        """Release a key whose submit failed, so the client's retry creates the task afresh."""
        if idempotency_key:
            await self._redis.delete(f"{self._ns}:{check_tenant(tenant)}:idem:{idempotency_key}")

    async def get(self, tenant: str, task_id: str, *, with_steps: bool = False) -> TaskRecord | None:
        """The task, or None if this tenant has no such task."""
        data: dict[str, str] = await self._redis.hgetall(self._key(tenant, task_id))  # type: ignore[misc]
        if not data:
            return None
        record = await self._record(tenant, task_id, {str(k): str(v) for k, v in data.items()})
        if with_steps:
            record.steps = await self.steps(tenant, task_id)
        return record

    async def workflow_of(self, tenant: str, task_id: str) -> str | None:
        """The stored workflow JSON of a task."""
        value = await self._redis.hget(self._key(tenant, task_id), "workflow")  # type: ignore[misc]
        return await self._open(tenant, str(value), f"task:{task_id}:workflow") if value is not None else None

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
        checkpoint: tuple[str, dict[str, Any]] | None = None,
    ) -> tuple[bool, str]:
        """Set the status (unless the task already ended) and append the event; returns (changed, previous).

        ``checkpoint`` (step id, state) records a finished step in the same atomic step, before the status
        changes, as ``checkpoint()`` would; it is dropped with the rest if the task had already ended.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        task_key, events_key, steps_key = self._keys(tenant, task_id)
        flat: list[str] = []
        for k, v in (fields or {}).items():
            flat += [k, await self._seal(tenant, v, f"task:{task_id}:{k}") if k in SEALED_FIELDS else v]
        event = await self._event(
            tenant, task_id, event_type, status=status, step_id=step_id, data=data, error=error
        )
        step: list[str] = ["", "", ""]
        if checkpoint is not None:
            step = [checkpoint[0], *await self._checkpoint_args(tenant, task_id, *checkpoint)]
        changed, previous = await self._transition(
            keys=[task_key, events_key, steps_key, f"{task_key}:done"],
            args=[status, str(now_ms()), event, str(len(flat)), *flat, str(self._ttl), *step],
        )
        return bool(int(changed)), str(previous)

    async def claim(
        self,
        tenant: str,
        task_id: str,
        *,
        attempt: int,
        data: Any = None,
        refuse: bool = False,
        first_step: tuple[str, Any] | None = None,
        owner: str = "",
        lease_ms: int = 30_000,
    ) -> TaskClaim:
        """Take a delivered task in one round trip: unless it is missing, ended or flagged for cancellation,
        move it to running with ``attempt`` and append task.started (with ``data``); returns its checkpointed
        steps. With ``refuse`` nothing changes either way: the caller ends the task without running it.

        ``first_step`` (step id, event data): also append that step's step.started, unless it is already
        checkpointed (a resumed task starts further on); ``TaskClaim.step_started`` says whether it did.

        ``owner`` (a worker instance's id): the claim takes a lease of ``lease_ms`` for it, and refuses
        ("leased") a task running under another owner's lease that has not run out, so a redelivered copy
        never runs beside the first run. The owner keeps the lease with ``renew_lease``.
        """
        task_key, events_key, steps_key = self._keys(tenant, task_id)
        event = await self._event(tenant, task_id, "task.started", status="running", data=data)
        step_id, step_event = "", ""
        if first_step is not None:
            step_id = first_step[0]
            step_event = await self._event(
                tenant, task_id, "step.started", step_id=step_id, data=first_step[1]
            )
        reply = await self._claim(
            keys=[task_key, events_key, steps_key],
            args=[
                str(now_ms()),
                event,
                str(attempt),
                "1" if refuse else "",
                step_id,
                step_event,
                owner,
                str(lease_ms),
            ],
        )
        outcome, status = str(reply[0]), str(reply[1])
        if outcome != "claimed":
            return TaskClaim(outcome, status)
        steps = {
            str(reply[i]): await self._step_state(tenant, task_id, str(reply[i]), str(reply[i + 1]))
            for i in range(3, len(reply) - 1, 2)
        }
        return TaskClaim(outcome, status, steps, step_started=str(reply[2]))

    async def renew_lease(self, tenant: str, task_id: str, owner: str, lease_ms: int) -> bool:
        """Extend a running task's lease by ``lease_ms`` from now; False if it is not ``owner``'s any more."""
        renewed = await self._renew(keys=[self._key(tenant, task_id)], args=[owner, str(lease_ms)])
        return bool(int(renewed))

    async def release_lease(self, tenant: str, task_id: str, owner: str) -> bool:
        """Give up ``owner``'s lease (a run handed back unfinished), so another worker may claim at once."""
        released = await self._release(keys=[self._key(tenant, task_id)], args=[owner])
        return bool(int(released))

    async def append_event(
        self, tenant: str, task_id: str, event_type: str, *, step_id: str = "", data: Any = None
    ) -> None:
        """Append a non-status event (step progress)."""
        _, events_key, _ = self._keys(tenant, task_id)
        event = await self._event(tenant, task_id, event_type, step_id=step_id, data=data)
        await self._redis.xadd(events_key, {"e": event}, maxlen=10000)

    async def checkpoint(self, tenant: str, task_id: str, step_id: str, state: dict[str, Any]) -> None:
        """Record a finished step durably before the next one starts, with its event, atomically."""
        _, events_key, steps_key = self._keys(tenant, task_id)
        await self._checkpoint(
            keys=[steps_key, events_key],
            args=[step_id, *await self._checkpoint_args(tenant, task_id, step_id, state)],
        )

    async def steps(self, tenant: str, task_id: str) -> dict[str, dict[str, Any]]:
        """Checkpointed step states by step id."""
        _, _, steps_key = self._keys(tenant, task_id)
        raw: dict[str, str] = await self._redis.hgetall(steps_key)  # type: ignore[misc]
        return {str(k): await self._step_state(tenant, task_id, str(k), str(v)) for k, v in raw.items()}

    async def cancel_requested(self, tenant: str, task_id: str) -> bool:
        """Whether someone asked to cancel this task."""
        flag = await self._redis.hget(self._key(tenant, task_id), "cancel")  # type: ignore[misc]
        return bool(flag == "1")

    async def request_cancel(self, tenant: str, task_id: str) -> str:
        """Cancel a queued task now or flag a running one; returns the status after the call ("" if none)."""
        task_key, events_key, steps_key = self._keys(tenant, task_id)
        error = {"code": "cancelled", "message": "cancelled by request", "retryable": False}
        event = _event(task_id, "task.cancelled", status="cancelled", error=error)
        result = await self._cancel(
            keys=[task_key, events_key, f"{task_key}:done", steps_key],
            args=[str(now_ms()), event, json.dumps(error), str(self._ttl)],
        )
        return str(result)

    async def wait_ended(self, tenant: str, task_id: str, block_ms: int | None = None) -> bool:
        """Whether the task has ended, blocking up to block_ms for it to end (None: answer at once).

        Reads the task's "done" stream, written in the same script that ends the task, so a task that ends
        between the caller's last read and this call is seen at once: one wake-up whatever the step count.
        """
        reply = await self._redis.xread(
            {self._done_key(tenant, task_id): "0-0"},
            count=1,
            block=None if block_ms is None else max(1, block_ms),
        )
        return bool(reply)

    async def wait_then_get(self, tenant: str, task_id: str, block_ms: int) -> tuple[bool, TaskRecord | None]:
        """``wait_ended``, then the task as it is at that moment, in one round trip: the read is pipelined
        behind the blocking one, and Redis answers it as soon as the block ends."""
        task_key = self._key(tenant, task_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xread({f"{task_key}:done": "0-0"}, count=1, block=max(1, block_ms))
            pipe.hgetall(task_key)
            ended, data = await pipe.execute()
        record = (
            await self._record(tenant, task_id, {str(k): str(v) for k, v in data.items()}) if data else None
        )
        return bool(ended), record

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
                if "sealed" in body:
                    where = f"task:{task_id}:event"
                    body.update(json.loads(await self._open(tenant, body.pop("sealed"), where)))
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
