"""The task service: submit, read, watch and cancel tasks for one tenant, whatever transport asked.

HTTP, gRPC (and later WebSocket and MQTT) decode their input into these calls and encode what comes back;
nothing here knows about a transport. A task is accepted only once RabbitMQ has confirmed its envelope.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisError

from openclaw.v1 import tasks_pb2
from services.common import telemetry
from services.common.envelope import now_ms
from services.common.errors import (
    InProgressError,
    InvalidInputError,
    NotFoundError,
    OpenClawError,
    UnavailableError,
)
from services.common.hop import Hop
from services.common.taskstore import TERMINAL, TaskEventRecord, TaskRecord, TaskStore, check_task_id
from services.common.tenants import TenantPolicy
from services.common.waits import MAX_SIGNALS, SIGNAL_NAME, WaitStore
from services.gateway.metrics import TASKS_SUBMITTED

_log = logging.getLogger(__name__)
T = TypeVar("T")

ENVELOPE_TYPE = "workflow.run"
MAX_WAIT_S = 60.0
MAX_DEADLINE_S = 7 * 24 * 3600
# Blocking reads are cut into slices shorter than the Redis client's socket timeout (5 s), which also
# bounds how long a watcher takes to notice a drain.
_BLOCK_SLICE_S = 4.0
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
_EVENT_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
_U64_MAX = 2**64 - 1


def _valid_event_id(value: str) -> bool:
    """A Redis stream id: one or two unsigned 64-bit parts (Redis refuses anything larger)."""
    return bool(_EVENT_ID.match(value)) and all(int(part) <= _U64_MAX for part in value.split("-"))


_TERMINAL_EVENTS = frozenset({"task.succeeded", "task.failed", "task.cancelled"})

_accepted = TASKS_SUBMITTED.labels("accepted")
_replayed = TASKS_SUBMITTED.labels("replayed")
_rejected = TASKS_SUBMITTED.labels("rejected")
_unavailable = TASKS_SUBMITTED.labels("unavailable")


class EnvelopePublisher(Protocol):
    """Publishes a task envelope and returns once the broker has confirmed it (UnavailableError if not)."""

    async def publish(self, env: tasks_pb2.TaskEnvelope, headers: dict[str, Any] | None = None) -> None: ...


class WorkflowCatalogue(Protocol):
    """What the executor accepts: checks a workflow document and resolves template names."""

    def check_workflow(self, workflow_json: str, inputs: dict[str, Any]) -> tuple[str, frozenset[str]]:
        """The workflow's name and every operation it may run (nested and called workflows included);
        InvalidInputError naming the problem's path if the executor would refuse it."""
        ...

    def load_template(self, name: str) -> dict[str, Any]:
        """The workflow document of a template; NotFoundError if there is none by that name."""
        ...

    def check_template_inputs(self, name: str, inputs: dict[str, Any]) -> None:
        """InvalidInputError naming each input (``inputs.<path>``) the template's parameter schema refuses."""
        ...


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """A task submission, as every transport decodes it."""

    workflow: dict[str, Any] | None = None
    template: str = ""
    inputs: dict[str, Any] | None = None
    deadline_seconds: float | None = None
    idempotency_key: str = ""

    @classmethod
    def from_document(cls, doc: Any, *, idempotency_key: str = "") -> SubmitRequest:
        """Decode a JSON body: ``{"workflow": {...}}`` or ``{"template": name, "inputs": {...}}``."""
        if not isinstance(doc, dict):
            raise InvalidInputError("the request body must be a JSON object")
        unknown = sorted(set(doc) - {"workflow", "template", "inputs", "deadline_seconds"})
        if unknown:
            raise InvalidInputError(f"unknown field(s) in the request: {', '.join(unknown)}", fields=unknown)
        deadline = doc.get("deadline_seconds")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int | float)):
            raise InvalidInputError("deadline_seconds must be a number", field="deadline_seconds")
        if deadline is not None and not 0 < deadline <= MAX_DEADLINE_S:  # before float() can overflow
            raise InvalidInputError(
                f"deadline_seconds must be in (0, {MAX_DEADLINE_S}]", field="deadline_seconds"
            )
        template = doc.get("template", "")
        if not isinstance(template, str):
            raise InvalidInputError("template must be a string", field="template")
        return cls(
            workflow=doc.get("workflow"),
            template=template,
            inputs=doc.get("inputs"),
            deadline_seconds=float(deadline) if deadline is not None else None,
            idempotency_key=idempotency_key,
        )


@dataclass(frozen=True, slots=True)
class Submitted:
    """The task a submit produced; created is False when an idempotent retry found the earlier one."""

    task: TaskRecord
    created: bool


def is_terminal(event: TaskEventRecord) -> bool:
    """Whether the event ends the task's stream."""
    return event.type in _TERMINAL_EVENTS or event.status in TERMINAL


class TaskService:
    """Tasks of one deployment, addressed per tenant; the only way any transport touches tasks."""

    def __init__(
        self,
        store: TaskStore,
        publisher: EnvelopePublisher,
        catalogue: WorkflowCatalogue,
        *,
        max_attempts: int = 3,
        redis_hop: Hop | None = None,
        publish_hop: Hop | None = None,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._catalogue = catalogue
        self._max_attempts = max_attempts
        self._publish_timeout_s = publish_timeout_s
        self._redis = redis_hop or Hop("gateway.redis")
        self._publish = publish_hop or Hop("gateway.amqp_publish")
        self._closing = asyncio.Event()
        self._waits = WaitStore(store)

    def close(self) -> None:
        """Start draining: open watches and waits end at their next slice so the transport can finish."""
        self._closing.set()

    async def submit(
        self,
        tenant: str,
        request: SubmitRequest,
        *,
        policy: TenantPolicy | None = None,
        submitted_by: str = "",
    ) -> Submitted:
        """Validate, store and publish a task; returns once RabbitMQ has confirmed the envelope.

        With a policy, every operation the workflow may run must be allowed (PermissionDeniedError naming
        those that are not).
        """
        try:
            workflow_json, inputs_json, name = self._resolve(request, policy)
        except OpenClawError:
            _rejected.inc()
            raise
        deadline_ms = 0
        if request.deadline_seconds is not None:
            deadline_ms = now_ms() + int(request.deadline_seconds * 1000)
        record = TaskRecord(
            id=uuid.uuid4().hex,
            tenant=tenant,
            status="queued",
            name=name,
            trace_id=telemetry.current_trace_id(),
        )
        record, created = await self._redis_call(
            "taskstore.create",
            self._store.create,
            record,
            workflow_json=workflow_json,
            inputs_json=inputs_json,
            idempotency_key=request.idempotency_key,
            deadline_ms=deadline_ms,
        )
        if not created:
            _replayed.inc()
            return Submitted(await self._replay(record, request.template), False)
        env = tasks_pb2.TaskEnvelope(
            task_id=record.id,
            tenant=tenant,
            type=ENVELOPE_TYPE,
            attempt=1,
            max_attempts=self._max_attempts,
            deadline_unix_ms=deadline_ms,
            created_unix_ms=record.created_ms,
            workflow_json=workflow_json,
            template=request.template,
            inputs_json=inputs_json,
            idempotency_key=request.idempotency_key,
            submitted_by=submitted_by,  # who, for the executor's audit records
        )
        try:
            async with self._publish.guard("amqp.publish", **{"messaging.system": "rabbitmq"}):
                await self._publisher.publish(env)
        except (Exception, asyncio.CancelledError) as exc:
            _unavailable.inc()
            await self._abandon(record, request.idempotency_key, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            retry_after = float(getattr(exc, "retry_after", 1.0) or 1.0)
            raise UnavailableError(
                "the task queue did not accept the task; retry later", retry_after=retry_after
            ) from exc
        if request.idempotency_key:
            # Only keyed submits can be replayed, so only they pay for the marker a replay checks. Without
            # it a replay re-publishes, which is harmless: the task is queued either way.
            try:
                await self._redis_call(
                    "taskstore.mark_enqueued", self._store.mark_enqueued, tenant, record.id
                )
            except OpenClawError:
                _log.warning("could not mark task %s enqueued", record.id, exc_info=True)
        _accepted.inc()
        return Submitted(record, True)

    async def _replay(self, record: TaskRecord, template: str) -> TaskRecord:
        """The task an idempotency key already names, making sure it really was queued.

        The first submit may have died between storing the task and RabbitMQ's confirm: then nothing was
        published, and the replay publishes it. Publishing twice is harmless (a worker skips an ended task
        and refuses one another worker holds), so the only case refused is a first submit still in flight.
        """
        if record.status != "queued":
            return record
        fields = await self._redis_call(
            "taskstore.envelope_fields", self._store.envelope_fields, record.tenant, record.id
        )
        if fields.get("enqueued") == "1":
            return record
        if now_ms() - record.created_ms < (self._publish_timeout_s + 1.0) * 1000:
            raise InProgressError(
                "a submit with this Idempotency-Key is still being queued; retry shortly", retry_after=1.0
            )
        env = tasks_pb2.TaskEnvelope(
            task_id=record.id,
            tenant=record.tenant,
            type=ENVELOPE_TYPE,
            attempt=1,
            max_attempts=self._max_attempts,
            deadline_unix_ms=int(fields.get("deadline_ms") or 0),
            created_unix_ms=record.created_ms,
            workflow_json=fields.get("workflow", ""),
            template=template,
            inputs_json=fields.get("inputs", ""),
        )
        try:
            async with self._publish.guard("amqp.publish", **{"messaging.system": "rabbitmq"}):
                await self._publisher.publish(env)
        except Exception as exc:
            _unavailable.inc()
            raise UnavailableError(
                "the task queue did not accept the task; retry later", retry_after=1.0
            ) from exc
        await self._redis_call("taskstore.mark_enqueued", self._store.mark_enqueued, record.tenant, record.id)
        _log.info(
            "re-published a task whose first submit never reached the queue", extra={"task_id": record.id}
        )
        return record

    async def get(self, tenant: str, task_id: str, *, steps: bool = False, wait_s: float = 0.0) -> TaskRecord:
        """The task; with wait_s, first waits (bounded by MAX_WAIT_S) until it ends.

        A wait costs two round trips to Redis whatever the task does meanwhile: read the task, then block
        on its "done" signal with the read of the outcome pipelined behind.
        """
        record = await self._require(tenant, task_id)
        if wait_s > 0:
            record = await self.wait(record, wait_s)
        if steps:
            record.steps = await self._redis_call("taskstore.steps", self._store.steps, tenant, task_id)
        return record

    async def wait(self, record: TaskRecord, wait_s: float) -> TaskRecord:
        """The task of a record in hand (one just submitted, say) once it has ended, or as it is after wait_s:
        one blocking round trip, no read first."""
        if record.status in TERMINAL:
            return record
        return await self._wait_until_ended(record.tenant, record.id, min(wait_s, MAX_WAIT_S), record)

    async def watch(
        self, tenant: str, task_id: str, *, after: str = "", heartbeat_s: float = 15.0
    ) -> AsyncGenerator[TaskEventRecord | None, None]:
        """The task's events after the given event id until its terminal event; None marks heartbeat_s of quiet.

        Raises NotFoundError now (before any event) if the tenant has no such task.
        """
        if after and not _valid_event_id(after):
            raise InvalidInputError(f"invalid event id {after!r}", field="after_event_id")
        record = await self._require(tenant, task_id)
        return self._follow(tenant, task_id, after or "0-0", record.status in TERMINAL, heartbeat_s)

    async def cancel(self, tenant: str, task_id: str) -> TaskRecord:
        """Cancel a queued task at once or ask a running one to stop; returns the task afterwards."""
        check_task_id(task_id)
        status = await self._redis_call("taskstore.cancel", self._store.request_cancel, tenant, task_id)
        if not status:
            raise _not_found(task_id)
        return await self._require(tenant, task_id)

    async def signal(self, tenant: str, task_id: str, name: str, payload: Any) -> TaskRecord:
        """Deliver a named signal (with a JSON payload) to a task; a waiting task wakes to read it."""
        check_task_id(task_id)
        if not isinstance(name, str) or not SIGNAL_NAME.match(name):
            raise InvalidInputError(
                f"signal name {name!r}: 1-64 letters, digits, '_', '.' and '-', starting with a letter",
                field="name",
            )
        status = await self._redis_call("waits.signal", self._waits.signal, tenant, task_id, name, payload)
        if not status:
            raise _not_found(task_id)
        if status in TERMINAL:
            raise InvalidInputError(
                f"task {task_id} has already ended ({status}); signals only reach unfinished tasks",
                status=status,
            )
        if status == "too_many":
            raise InvalidInputError(
                f"task {task_id} already holds {MAX_SIGNALS} signal names; reuse one", field="name"
            )
        return await self._require(tenant, task_id)

    def _resolve(self, request: SubmitRequest, policy: TenantPolicy | None) -> tuple[str, str, str]:
        """(workflow JSON, inputs JSON, name) of a valid request; raises naming what is wrong."""
        if (request.workflow is None) == (not request.template):
            raise InvalidInputError("give either 'workflow' or 'template', not both or neither")
        if request.inputs is not None and not isinstance(request.inputs, dict):
            raise InvalidInputError("inputs must be a JSON object", field="inputs")
        if request.deadline_seconds is not None and not 0 < request.deadline_seconds <= MAX_DEADLINE_S:
            raise InvalidInputError(
                f"deadline_seconds must be in (0, {MAX_DEADLINE_S}]", field="deadline_seconds"
            )
        if request.idempotency_key and not _IDEMPOTENCY_KEY.match(request.idempotency_key):
            raise InvalidInputError("the idempotency key must be 1-200 printable ASCII characters, no spaces")
        if request.template:
            doc = self._catalogue.load_template(request.template)
            self._catalogue.check_template_inputs(request.template, request.inputs or {})
        elif isinstance(request.workflow, dict):
            doc = request.workflow
        else:
            raise InvalidInputError("workflow must be a JSON object", field="workflow")
        workflow_json = json.dumps(doc, separators=(",", ":"))
        name, operations = self._catalogue.check_workflow(workflow_json, request.inputs or {})
        if policy is not None:
            policy.check_operations(set(operations))
        inputs_json = json.dumps(request.inputs, separators=(",", ":")) if request.inputs is not None else ""
        return workflow_json, inputs_json, name

    async def _abandon(self, record: TaskRecord, idempotency_key: str, cause: BaseException) -> None:
        """A task RabbitMQ did not take: mark it failed and free its key so a retry starts afresh."""
        error = {"code": "unavailable", "message": f"the task was never queued: {cause}", "retryable": True}
        try:
            await self._redis_call(
                "taskstore.abandon",
                self._store.transition,
                record.tenant,
                record.id,
                "failed",
                "task.failed",
                error=error,
            )
            await self._redis_call(
                "taskstore.forget_idempotency", self._store.forget_idempotency, record.tenant, idempotency_key
            )
        except Exception:  # the publish failure is what the caller must hear about, not this one
            _log.warning("could not mark unqueued task %s failed", record.id, exc_info=True)

    async def _require(self, tenant: str, task_id: str) -> TaskRecord:
        check_task_id(task_id)
        record = await self._redis_call("taskstore.get", self._store.get, tenant, task_id)
        if record is None:
            raise _not_found(task_id)
        return record

    async def _read(
        self, tenant: str, task_id: str, after: str, block_s: float | None
    ) -> list[TaskEventRecord]:
        # Blocking reads go through the breaker only: their duration is the caller's wait, not Redis latency.
        block_ms = None if block_s is None else max(1, int(block_s * 1000))
        try:
            async with self._redis.breaker.guard():
                return await self._store.events(tenant, task_id, after=after, block_ms=block_ms)
        except RedisError as exc:
            raise _redis_unavailable(exc) from exc

    async def _redis_call(
        self, name: str, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any
    ) -> T:
        """One call across the gateway.redis hop; Redis failures become UnavailableError (503, retryable)."""
        try:
            return await self._redis.call_as(name, fn, *args, **kwargs)
        except RedisError as exc:
            raise _redis_unavailable(exc) from exc

    async def _wait_until_ended(
        self, tenant: str, task_id: str, wait_s: float, record: TaskRecord
    ) -> TaskRecord:
        """The task once it has ended, or as it is when the wait elapses or a drain begins.

        Blocks on the task's "done" signal (no polling), in slices shorter than the client's socket timeout.
        """
        deadline = time.monotonic() + wait_s
        while not self._closing.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            block_ms = max(1, int(min(remaining, _BLOCK_SLICE_S) * 1000))
            try:
                ended, latest = await self._redis.call_blocking(
                    "taskstore.wait", self._store.wait_then_get, tenant, task_id, block_ms
                )
            except RedisError as exc:
                raise _redis_unavailable(exc) from exc
            if latest is None:  # expired or deleted while we waited
                raise _not_found(task_id)
            record = latest
            if ended:
                break
        return record

    async def _follow(
        self, tenant: str, task_id: str, after: str, ended: bool, heartbeat_s: float
    ) -> AsyncGenerator[TaskEventRecord | None, None]:
        quiet_since = time.monotonic()
        while not self._closing.is_set():
            block = None
            if not ended:
                block = min(_BLOCK_SLICE_S, max(0.001, quiet_since + heartbeat_s - time.monotonic()))
            events = await self._read(tenant, task_id, after, block)
            if not events:
                if ended:
                    return
                if time.monotonic() - quiet_since >= heartbeat_s:
                    yield None
                    quiet_since = time.monotonic()
                continue
            for event in events:
                after = event.event_id
                yield event
                if is_terminal(event):
                    return
            quiet_since = time.monotonic()


def _redis_unavailable(exc: RedisError) -> UnavailableError:
    return UnavailableError(f"the task store (Redis) is unavailable: {exc}", retry_after=1.0)


def _not_found(task_id: str) -> NotFoundError:
    return NotFoundError(f"task {task_id!r} not found", task_id=task_id)
