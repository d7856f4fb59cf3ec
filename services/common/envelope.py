"""The task envelope on the wire: protobuf body, identity and trace context in AMQP properties."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from google.protobuf.message import DecodeError

from openclaw.v1 import tasks_pb2
from services.common import telemetry
from services.common.errors import InvalidInputError

if TYPE_CHECKING:
    from services.common.encryption import Sealer

CONTENT_TYPE = "application/x-protobuf; proto=openclaw.v1.TaskEnvelope"
TENANT_HEADER = "x-openclaw-tenant"
ATTEMPT_HEADER = "x-openclaw-attempt"
ERROR_HEADER = "x-openclaw-error"
SEALED_PREFIX = "enc:v1:"  # services.common.encryption.TEXT_PREFIX: a field sealed with the tenant's data key
# The envelope fields that carry the tenant's data (sealed at rest in RabbitMQ when master keys are set).
_SEALED_FIELDS = ("workflow_json", "inputs_json")


def now_ms() -> int:
    """Wall-clock Unix milliseconds."""
    return int(time.time() * 1000)


def to_message(env: tasks_pb2.TaskEnvelope, headers: dict[str, Any] | None = None) -> aio_pika.Message:
    """A persistent AMQP message carrying env, with the current trace context in its headers."""
    all_headers: dict[str, Any] = telemetry.inject(headers or {})
    all_headers[TENANT_HEADER] = env.tenant
    all_headers[ATTEMPT_HEADER] = env.attempt
    return aio_pika.Message(
        body=env.SerializeToString(),
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=env.task_id,
        type=env.type,
        headers=all_headers,
    )


def from_message(message: AbstractIncomingMessage) -> tasks_pb2.TaskEnvelope:
    """Decode a delivery; InvalidInputError (never retryable) if it is not a valid envelope."""
    if message.content_type and not message.content_type.startswith("application/x-protobuf"):
        raise InvalidInputError(f"unexpected content type {message.content_type!r}")
    env = tasks_pb2.TaskEnvelope()
    try:
        env.ParseFromString(message.body)
    except DecodeError as exc:
        raise InvalidInputError(f"message body is not a TaskEnvelope: {exc}") from exc
    if not env.task_id or not env.tenant:
        raise InvalidInputError("envelope lacks task_id or tenant")
    return env


def _where(env: tasks_pb2.TaskEnvelope, name: str) -> str:
    return f"envelope:{env.task_id}:{name}"


async def seal(env: tasks_pb2.TaskEnvelope, sealer: Sealer | None) -> tasks_pb2.TaskEnvelope:
    """A copy of env with its workflow and inputs sealed under the tenant's data key (env itself if no sealer)."""
    if sealer is None:
        return env
    out = tasks_pb2.TaskEnvelope()
    out.CopyFrom(env)
    for name in _SEALED_FIELDS:
        value = getattr(env, name)
        if value and not value.startswith(SEALED_PREFIX):
            setattr(out, name, await sealer.seal_text(env.tenant, value, _where(env, name)))
    return out


async def opened(env: tasks_pb2.TaskEnvelope, sealer: Sealer | None) -> tuple[str, str]:
    """The envelope's workflow and inputs JSON in plaintext; fields written without a sealer pass as they are.

    A sealed field without a sealer (this process has no master keys) is an InvalidInputError naming it;
    one that does not decrypt (tampered, or moved to another task or tenant) is a DecryptionError.
    """
    values = []
    for name in _SEALED_FIELDS:
        value: str = getattr(env, name)
        if value.startswith(SEALED_PREFIX):
            if sealer is None:
                raise InvalidInputError(
                    f"envelope.{name}: encrypted, but this process has no master keys (OPENCLAW_MASTER_KEYS)"
                )
            value = await sealer.open_text(env.tenant, value, _where(env, name))
        values.append(value)
    return values[0], values[1]


async def encode(
    env: tasks_pb2.TaskEnvelope, sealer: Sealer | None = None, headers: dict[str, Any] | None = None
) -> aio_pika.Message:
    """``to_message`` of the envelope with its tenant data sealed (when a sealer is given)."""
    return to_message(await seal(env, sealer), headers)


async def decode(message: AbstractIncomingMessage, sealer: Sealer | None = None) -> tasks_pb2.TaskEnvelope:
    """``from_message``, with the workflow and inputs opened to plaintext."""
    env = from_message(message)
    env.workflow_json, env.inputs_json = await opened(env, sealer)
    return env


class EnvelopePublisher(Protocol):
    """Publishes an envelope, returning once the broker confirmed it (services.common.publisher.TaskPublisher)."""

    async def publish(self, env: tasks_pb2.TaskEnvelope, headers: dict[str, Any] | None = None) -> None: ...


class SealingPublisher:
    """A publisher that seals each envelope's workflow and inputs with the tenant's data key first."""

    def __init__(self, inner: EnvelopePublisher, sealer: Sealer) -> None:
        self._inner = inner
        self._sealer = sealer

    async def publish(self, env: tasks_pb2.TaskEnvelope, headers: dict[str, Any] | None = None) -> None:
        await self._inner.publish(await seal(env, self._sealer), headers)
