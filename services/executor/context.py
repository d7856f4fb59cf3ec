"""What a running step sees: the services operations may use, and the run's data for expressions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from openclaw.v1 import router_pb2
from services.common.errors import InvalidInputError, UnavailableError

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection
    from redis.asyncio import Redis

    from services.common.encryption import Sealer
    from services.executor.dsl import Workflow
    from services.executor.ops._postgres import PostgresPools
    from services.executor.ops.http import HttpClient


class ChatClient(Protocol):
    """The router as llm_call uses it (services.common.router_client.RouterClient)."""

    async def chat(
        self, request: router_pb2.ChatRequest, *, timeout_s: float | None = None
    ) -> router_pb2.ChatResponse: ...


@dataclass(frozen=True)
class OpServices:
    """Long-lived things operations use, built once by the bootstrap."""

    storage_root: Path
    credentials: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    router: ChatClient | None = None
    http: HttpClient | None = None
    router_timeout_s: float = 120.0
    # The engine refuses larger step outputs, so operations stop reading past it.
    max_output_bytes: int = 1024 * 1024
    # The executor's own Redis (kv ops, under "<namespace>:kv:<tenant>:") and AMQP connection (amqp_publish,
    # which refuses the namespace's own exchanges).
    redis: Redis | None = None
    amqp: AbstractConnection | None = None
    namespace: str = "openclaw"
    # With master keys configured: seals the files operations write (services.executor.ops.storage).
    sealer: Sealer | None = None
    # PostgreSQL connection pools per (tenant, DSN) for the sql ops (None: a connection per call).
    postgres: PostgresPools | None = None

    def credential(self, name: str) -> Mapping[str, str]:
        """A named credential set from the executor's settings."""
        try:
            return self.credentials[name]
        except KeyError:
            known = ", ".join(sorted(self.credentials)) or "none are configured"
            raise InvalidInputError(
                f"auth: unknown credential set {name!r} (configured: {known})", auth=name
            ) from None

    def require_router(self) -> ChatClient:
        if self.router is None:
            raise UnavailableError("this executor has no router client configured")
        return self.router

    def require_http(self) -> HttpClient:
        if self.http is None:
            raise UnavailableError("this executor has no HTTP client configured")
        return self.http

    def require_redis(self) -> Redis:
        if self.redis is None:
            raise UnavailableError("this executor has no Redis client configured")
        return self.redis

    def require_amqp(self) -> AbstractConnection:
        if self.amqp is None:
            raise UnavailableError("this executor has no AMQP connection configured")
        return self.amqp


@dataclass(frozen=True)
class OpContext:
    """One step's view of its task: identity, the previous step's output and the services."""

    tenant: str
    task_id: str
    step_id: str
    services: OpServices
    attempt: int = 1
    workflow_name: str = ""
    prev_output: Any = None
    has_prev: bool = False

    @property
    def tenant_root(self) -> Path:
        """storage_root/<tenant> (the tenant id is already checked to be a safe path segment)."""
        return self.services.storage_root / self.tenant


@dataclass
class RunState:
    """The data expressions read in one frame of a run: outputs so far, inputs, the workflow and the task.

    A foreach item, a catch and a called workflow each run in a child frame (``child``): its own copy of
    the outputs, its locals (``item``, ``index``, ``error``) and its checkpoint-key prefix.
    """

    workflow: Workflow
    task_id: str
    tenant: str
    attempt: int
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    # Prepended to step ids to make checkpoint keys: "each[2]." in a foreach item, "call." in a called workflow.
    key_prefix: str = ""

    def key(self, step_id: str) -> str:
        """The checkpoint key of a step in this frame."""
        return self.key_prefix + step_id

    def child(self, prefix: str = "", **locals: Any) -> RunState:
        """A frame inside this one (a foreach item, a catch): sees what this one sees, plus ``locals``."""
        return replace(
            self,
            outputs=dict(self.outputs),
            locals={**self.locals, **locals},
            key_prefix=self.key_prefix + prefix,
        )

    def called(self, workflow: Workflow, inputs: dict[str, Any], prefix: str) -> RunState:
        """The frame of a called workflow: its own inputs and outputs, nothing of the caller's."""
        return RunState(
            workflow=workflow,
            task_id=self.task_id,
            tenant=self.tenant,
            attempt=self.attempt,
            inputs=inputs,
            key_prefix=self.key_prefix + prefix,
        )

    def scope(self, prev: str | None = None) -> dict[str, Any]:
        """Names visible to expressions; ``prev`` is the id of the step before in the same sequence."""
        scope: dict[str, Any] = {
            "steps": {sid: {"output": out} for sid, out in self.outputs.items()},
            "inputs": self.inputs,
            "workflow": {"name": self.workflow.name},
            "task": {"id": self.task_id, "tenant": self.tenant, "attempt": self.attempt},
            **self.locals,
        }
        if prev is not None and prev in self.outputs:
            scope["prev"] = {"output": self.outputs[prev]}
        return scope
