"""A delivery's disposition (acked or handed back), settled in one place, and copies of a delivery."""

from __future__ import annotations

import enum
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

log = logging.getLogger(__name__)

# Headers the broker adds to a delivery; a put-back copy is a new message and starts without them.
BROKER_HEADERS = frozenset(
    {
        "x-delivery-count",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


class Disposition(enum.Enum):
    ACK = "ack"
    REQUEUE = "requeue"


async def settle(message: AbstractIncomingMessage, disposition: Disposition) -> None:
    """The one place a delivery is acknowledged or handed back."""
    try:
        if disposition is Disposition.ACK:
            await message.ack()
        else:
            await message.nack(requeue=True)
    except Exception:
        # After a reconnect the delivery tag belongs to a dead channel: RabbitMQ redelivers the message,
        # and the handler is idempotent (an ended task is skipped).
        log.warning("could not settle delivery", extra={"message_id": message.message_id}, exc_info=True)


def copy_delivery(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """A persistent copy of a delivery with these headers."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        message_id=message.message_id,
        type=message.type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def delivery_count(headers: dict[str, Any]) -> int:
    """How many times a quorum queue delivered this message before (its x-delivery-count header)."""
    value = headers.get("x-delivery-count")
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return int(value) if value is not None and not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        return 0
