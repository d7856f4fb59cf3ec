"""Publishing envelopes with publisher confirms, under a timeout (a broken robust connection can hang)."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from openclaw.v1 import tasks_pb2
from services.common import envelope
from services.common.errors import UnavailableError
from services.common.topology import TASK_ROUTING_KEY, Topology


class TaskPublisher:
    """Publishes task envelopes; returns only once RabbitMQ has confirmed the persistent message."""

    def __init__(
        self, connection: AbstractRobustConnection, topology: Topology, *, timeout_s: float = 5.0
    ) -> None:
        self._connection = connection
        self._topology = topology
        self._timeout = timeout_s
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> AbstractExchange:
        if self._exchange is not None and self._channel is not None and not self._channel.is_closed:
            return self._exchange
        async with self._lock:
            if self._exchange is None or self._channel is None or self._channel.is_closed:
                # on_return_raises: an unroutable (returned) message must fail the publish, not count as confirmed.
                self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                self._exchange, _ = await self._topology.declare(self._channel)
        return self._exchange

    async def publish(self, env: tasks_pb2.TaskEnvelope, headers: dict[str, Any] | None = None) -> None:
        """Publish to the task exchange and wait for the broker's confirm."""
        await self._confirmed(
            self._topology.task_exchange, TASK_ROUTING_KEY, envelope.to_message(env, headers)
        )

    async def publish_to_queue(self, queue: str, message: aio_pika.Message) -> None:
        """Publish straight to a queue through the default exchange (delay and dead-letter queues)."""
        await self._confirmed("", queue, message)

    async def _confirmed(self, exchange_name: str, routing_key: str, message: aio_pika.Message) -> None:
        exchange = await self._ready()
        if exchange_name == "":
            assert self._channel is not None
            exchange = self._channel.default_exchange
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for wraps every publish in a task of its own.
            async with asyncio.timeout(self._timeout):
                await exchange.publish(message, routing_key, mandatory=True)
        except TimeoutError as exc:
            self._channel = None
            raise UnavailableError(f"RabbitMQ did not confirm the publish within {self._timeout}s") from exc
        except (aio_pika.exceptions.AMQPError, ConnectionError) as exc:
            self._channel = None
            raise UnavailableError(f"RabbitMQ refused the publish: {exc}") from exc

    async def close(self) -> None:
        """Close the publishing channel."""
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        self._channel = None
