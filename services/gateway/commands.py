"""Task commands as JSON documents, shared by the message transports (WebSocket frames, MQTT messages).

``submit``, ``get`` and ``cancel`` take the same fields as the HTTP API and answer the task as the HTTP API
shows it; bad fields raise InvalidInputError naming the field.
"""

from __future__ import annotations

from typing import Any

from services.common.errors import InvalidInputError, OpenClawError
from services.common.tenants import TenantPolicy
from services.gateway.http_api import task_body
from services.gateway.tasks import MAX_WAIT_S, SubmitRequest, TaskService

TASK_COMMANDS = ("submit", "get", "cancel")
# The gateway action (services/gateway/access.py ACTIONS) each command is admitted as.
COMMAND_ACTIONS = {"submit": "tasks.submit", "get": "tasks.get", "cancel": "tasks.cancel"}


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


def command_resource(command: str, doc: dict[str, Any]) -> str:
    """The task a command names, for its audit record ('' for a submit, named once it is created)."""
    task_id = doc.get("task_id")
    return f"task:{task_id}" if command != "submit" and isinstance(task_id, str) and task_id else ""


async def run_task_command(
    tasks: TaskService,
    tenant: str,
    command: str,
    doc: dict[str, Any],
    *,
    policy: TenantPolicy | None = None,
    submitted_by: str = "",
) -> dict[str, Any]:
    """Run one task command for the tenant (a submit checked against its policy); returns the task body."""
    if command == "submit":
        task = doc.get("task")
        if not isinstance(task, dict):
            raise InvalidInputError("task: required, an object like the body of POST /v1/tasks", field="task")
        key = string_field(doc, "idempotency_key", required=False)
        request = SubmitRequest.from_document(task, idempotency_key=key)
        submitted = await tasks.submit(tenant, request, policy=policy, submitted_by=submitted_by)
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
