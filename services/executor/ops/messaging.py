"""Messaging operations: publish to a RabbitMQ exchange, an MQTT topic or a webhook."""

from __future__ import annotations

from typing import Any

from services.executor.ops.base import Operation

OPERATIONS: tuple[Operation[Any], ...] = ()
