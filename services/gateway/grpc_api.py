"""The gRPC transport of the task API (openclaw.v1.TaskService), over the same task service as HTTP.

The caller comes from ``authorization: Bearer <jwt or API key>`` or ``x-api-key`` metadata and is governed
like every other protocol (services/gateway/access.py); errors end the call with the error's status
and its wire form in trailing metadata (services.common.rpc).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from openclaw.v1 import gateway_pb2, gateway_pb2_grpc, tasks_pb2
from services.common import rpc
from services.common.errors import InvalidInputError, OpenClawError
from services.common.taskstore import TaskEventRecord, TaskRecord
from services.gateway.access import Call, Credentials, Gate
from services.gateway.jsonbody import MAX_DEPTH, parse_json
from services.gateway.tasks import SubmitRequest, TaskService

SERVICE_NAME = "openclaw.v1.TaskService"
_STATUS = {
    "queued": tasks_pb2.TASK_STATUS_QUEUED,
    "running": tasks_pb2.TASK_STATUS_RUNNING,
    "succeeded": tasks_pb2.TASK_STATUS_SUCCEEDED,
    "failed": tasks_pb2.TASK_STATUS_FAILED,
    "cancelled": tasks_pb2.TASK_STATUS_CANCELLED,
    "retrying": tasks_pb2.TASK_STATUS_RETRYING,
    "waiting": tasks_pb2.TASK_STATUS_WAITING,
}
Context = grpc.aio.ServicerContext[Any, Any]


class TaskServicer(gateway_pb2_grpc.TaskServiceServicer):  # type: ignore[misc]
    """Submit, Get, Watch and Cancel for the tenant named by the caller's token."""

    def __init__(self, tasks: TaskService, gate: Gate, *, max_json_depth: int = MAX_DEPTH) -> None:
        self._tasks = tasks
        self._gate = gate
        self._depth = max_json_depth

    async def Submit(self, request: gateway_pb2.SubmitTaskRequest, context: Context) -> tasks_pb2.Task:
        with rpc.server_span(context, "Submit", SERVICE_NAME):
            try:
                async with await self._admit(context, "tasks.submit") as call:
                    submit = _submit_request(request, self._depth)
                    submitted = await self._tasks.submit(
                        call.principal.tenant, submit, policy=call.policy, submitted_by=call.principal.subject
                    )
                    call.resource = f"task:{submitted.task.id}"
                    return task_message(submitted.task)
            except OpenClawError as exc:
                await _abort(context, exc)

    async def Get(self, request: gateway_pb2.GetTaskRequest, context: Context) -> tasks_pb2.Task:
        with rpc.server_span(context, "Get", SERVICE_NAME):
            try:
                async with await self._admit(context, "tasks.get", request.task_id) as call:
                    record = await self._tasks.get(call.principal.tenant, request.task_id, steps=True)
                    return task_message(record)
            except OpenClawError as exc:
                await _abort(context, exc)

    async def Watch(
        self, request: gateway_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        with rpc.server_span(context, "Watch", SERVICE_NAME):
            try:
                call = await self._admit(context, "tasks.watch", request.task_id)
            except OpenClawError as exc:
                await rpc.abort(context, exc)
                return
            error: BaseException | None = None
            try:
                slot = await call.stream_slot()
                try:
                    events = await self._tasks.watch(
                        call.principal.tenant, request.task_id, after=request.after_event_id
                    )
                    try:
                        async for event in events:
                            if event is not None:
                                yield event_message(event)
                    finally:
                        await events.aclose()
                finally:
                    await asyncio.shield(slot.release())
            except OpenClawError as exc:
                error = exc
                await rpc.abort(context, exc)
            except BaseException as exc:
                error = exc
                raise
            finally:
                await asyncio.shield(call.finish(error))

    async def Cancel(self, request: gateway_pb2.CancelTaskRequest, context: Context) -> tasks_pb2.Task:
        with rpc.server_span(context, "Cancel", SERVICE_NAME):
            try:
                async with await self._admit(context, "tasks.cancel", request.task_id) as call:
                    return task_message(await self._tasks.cancel(call.principal.tenant, request.task_id))
            except OpenClawError as exc:
                await _abort(context, exc)

    async def _admit(self, context: Context, action: str, task_id: str = "") -> Call:
        authorization = api_key = None
        for key, value in context.invocation_metadata() or ():
            text = value if isinstance(value, str) else bytes(value).decode("latin-1")
            if key == "authorization" and authorization is None:
                authorization = text
            elif key == "x-api-key" and api_key is None:
                api_key = text
        principal = await self._gate.authenticate(Credentials(authorization, api_key))
        resource = f"task:{task_id}" if task_id else ""
        return await self._gate.admit(principal, action, protocol="grpc", resource=resource)


async def _abort(context: Context, err: OpenClawError) -> NoReturn:
    await rpc.abort(context, err)
    raise AssertionError("context.abort returned")  # it raises; this tells the type checker so


def _submit_request(request: gateway_pb2.SubmitTaskRequest, max_depth: int = MAX_DEPTH) -> SubmitRequest:
    workflow = (
        _json_object(request.workflow_json, "workflow_json", max_depth) if request.workflow_json else None
    )
    inputs = _json_object(request.inputs_json, "inputs_json", max_depth) if request.inputs_json else None
    return SubmitRequest(
        workflow=workflow,
        template=request.template,
        inputs=inputs,
        deadline_seconds=float(request.deadline_seconds) if request.deadline_seconds else None,
        idempotency_key=request.idempotency_key,
    )


def _json_object(raw: str, field: str, max_depth: int) -> dict[str, Any]:
    value = parse_json(raw, field=field, max_depth=max_depth)
    if not isinstance(value, dict):
        raise InvalidInputError(f"{field} must be a JSON object", field=field)
    return value


def _error(data: dict[str, Any] | None) -> tasks_pb2.TaskError | None:
    if not data:
        return None
    return tasks_pb2.TaskError(
        code=str(data.get("code", "")),
        message=str(data.get("message", "")),
        step_id=str(data.get("step_id", "")),
        retryable=bool(data.get("retryable", False)),
    )


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"), default=str)


def task_message(record: TaskRecord) -> tasks_pb2.Task:
    """A task record as the protobuf Task."""
    task = tasks_pb2.Task(
        id=record.id,
        tenant=record.tenant,
        status=_STATUS.get(record.status, tasks_pb2.TASK_STATUS_UNSPECIFIED),
        name=record.name,
        result_json=_json(record.result),
        error=_error(record.error),
        attempt=record.attempt,
        created_unix_ms=record.created_ms,
        updated_unix_ms=record.updated_ms,
        trace_id=record.trace_id,
        cancel_requested=record.cancel_requested,
    )
    for step_id, state in record.steps.items():
        duration = state.get("duration_ms")
        task.steps.append(
            tasks_pb2.StepState(
                id=step_id,
                type=str(state.get("type", "")),
                status=str(state.get("status", "")),
                output_json=_json(state.get("output")),
                error=_error(state.get("error")),
                duration_ms=float(duration) if isinstance(duration, int | float) else 0.0,
            )
        )
    return task


def event_message(event: TaskEventRecord) -> tasks_pb2.TaskEvent:
    """A stream event as the protobuf TaskEvent."""
    return tasks_pb2.TaskEvent(
        task_id=event.task_id,
        event_id=event.event_id,
        type=event.type,
        step_id=event.step_id,
        status=_STATUS.get(event.status, tasks_pb2.TASK_STATUS_UNSPECIFIED),
        data_json=_json(event.data),
        time_unix_ms=event.time_ms,
        error=_error(event.error),
    )
