"""Task state in Redis: the record, step checkpoints, the event stream and idempotency keys.

Keys are namespaced by tenant, so a tenant can only ever address its own tasks. With a Sealer (master keys
configured), the tenant's data is encrypted at rest: the workflow, inputs, result and error fields, every step
checkpoint and the data and error of every event; the Lua scripts treat them as opaque strings, and every read
here returns plaintext. Values written without a sealer (older records, scripts' own events) read as they are.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from services.common import taskscripts
from services.common.encryption import DecryptionError
from services.common.envelope import now_ms
from services.common.errors import UnavailableError
from services.common.identifiers import RESERVED_TENANTS, check_task_id, check_tenant
from services.common.taskrecord import STATUSES, TERMINAL, TaskClaim, TaskEventRecord, TaskRecord, event_json

if TYPE_CHECKING:
    from services.common.encryption import Sealer

# What importers of this module have always found here; each lives in the module named by its concept.
__all__ = [
    "RESERVED_TENANTS",
    "SEALED_FIELDS",
    "SEALED_PREFIX",
    "STATUSES",
    "TERMINAL",
    "TaskClaim",
    "TaskEventRecord",
    "TaskRecord",
    "TaskStore",
    "check_task_id",
    "check_tenant",
    "event_json",
]

SEALED_PREFIX = "enc:v1:"  # services.common.encryption.TEXT_PREFIX
# Task hash fields that hold the tenant's data.
SEALED_FIELDS = ("workflow", "inputs", "result", "error")


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
        self._transition = redis.register_script(taskscripts.TRANSITION)
        self._cancel = redis.register_script(taskscripts.CANCEL)
        self._claim = redis.register_script(taskscripts.CLAIM)
        self._renew = redis.register_script(taskscripts.RENEW)
        self._release = redis.register_script(taskscripts.RELEASE)
        self._checkpoint = redis.register_script(taskscripts.CHECKPOINT)
        self._create = redis.register_script(taskscripts.CREATE)
        self._create_idempotent = redis.register_script(taskscripts.CREATE_IDEMPOTENT)

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
            return event_json(task_id, type_, data=data, error=error, **fields)
        payload = json.dumps({"data": data, "error": error}, default=str, separators=(",", ":"))
        sealed = await self._sealer.seal_text(tenant, payload, f"task:{task_id}:event")
        return event_json(task_id, type_, sealed=sealed, **fields)

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
        event = event_json(task_id, "task.cancelled", status="cancelled", error=error)
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
