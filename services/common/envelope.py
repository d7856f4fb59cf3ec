"""The task envelope on the wire: protobuf body, identity and trace context in AMQP properties."""

from __future__ import annotations

import time
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from google.protobuf.message import DecodeError

from openclaw.v1 import tasks_pb2
from services.common import telemetry
from services.common.errors import InvalidInputError

CONTENT_TYPE = "application/x-protobuf; proto=openclaw.v1.TaskEnvelope"
TENANT_HEADER = "x-openclaw-tenant"
ATTEMPT_HEADER = "x-openclaw-attempt"
ERROR_HEADER = "x-openclaw-error"


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
