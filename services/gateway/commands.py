"""Task commands as JSON documents, shared by the message transports (WebSocket frames, MQTT messages).

``submit``, ``get`` and ``cancel`` take the same fields as the HTTP API and answer the task as the HTTP API
shows it; bad fields raise InvalidInputError naming the field.
"""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidInputError, OpenClawError
from services.gateway.http_api import task_body
from services.gateway.tasks import MAX_WAIT_S, SubmitRequest, TaskService

TASK_COMMANDS = ("submit", "get", "cancel")


def error_body(err: OpenClawError) -> dict[str, Any]:
    """An error as the message transports send it: code, message, retryable and details."""
    body: dict[str, Any] = {"code": err.code, "message": err.message, "retryable": err.retryable}
    details = {k: v for k, v in err.details.items() if k != "reason"}
    if details:
        body["details"] = details
    return body


def string_field(doc: dict[str, Any], name: str, *, required: bool = True) -> str:
    """A string field of a command; InvalidInputError naming it if missing or of the wrong type."""
    value = doc.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise InvalidInputError(f"{name}: required, a non-empty string", field=name)
    return value


async def run_task_command(
    tasks: TaskService, tenant: str, command: str, doc: dict[str, Any]
) -> dict[str, Any]:
    """Run one task command for the tenant; returns the task body."""
    if command == "submit":
        task = doc.get("task")
        if not isinstance(task, dict):
            raise InvalidInputError("task: required, an object like the body of POST /v1/tasks", field="task")
        key = string_field(doc, "idempotency_key", required=False)
        submitted = await tasks.submit(tenant, SubmitRequest.from_document(task, idempotency_key=key))
        return task_body(submitted.task)
    task_id = string_field(doc, "task_id")
    if command == "get":
        wait = doc.get("wait", 0)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT_S:
            raise InvalidInputError(
                f"wait: must be a number of seconds from 0 to {MAX_WAIT_S:g}", field="wait"
            )
        steps = doc.get("steps", False)
        if not isinstance(steps, bool):
            raise InvalidInputError("steps: must be a boolean", field="steps")
        return task_body(await tasks.get(tenant, task_id, steps=steps, wait_s=float(wait)))
    if command == "cancel":
        return task_body(await tasks.cancel(tenant, task_id))
    raise InvalidInputError(f"unknown command {command!r}; known: {', '.join(TASK_COMMANDS)}", field="type")
