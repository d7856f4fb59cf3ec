"""Every exchange and queue name, and their declaration, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

TASK_ROUTING_KEY = "task"


@dataclass(frozen=True)
class Topology:
    """Names derived from one namespace, so tests and tenants of a broker can be isolated by prefix."""

    namespace: str
    retry_delays_ms: tuple[int, ...] = (1000, 5000, 30000)
    # Deliveries of one message before RabbitMQ itself dead-letters it (a worker crash loop).
    delivery_limit: int = 5

    @property
    def task_exchange(self) -> str:
        return f"{self.namespace}.tasks"

    @property
    def task_queue(self) -> str:
        return f"{self.namespace}.tasks"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.namespace}.tasks.dead"

    def retry_queue(self, delay_ms: int) -> str:
        return f"{self.namespace}.tasks.retry.{delay_ms}ms"

    def retry_delay_ms(self, attempt: int) -> int:
        """Backoff before attempt+1, given the attempt that just failed (1-based)."""
        return self.retry_delays_ms[min(attempt, len(self.retry_delays_ms)) - 1]

    async def declare(self, channel: AbstractChannel) -> tuple[AbstractExchange, AbstractQueue]:
        """Declare the whole topology idempotently; returns the task exchange and queue."""
        tasks = await channel.declare_exchange(self.task_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        dead = await channel.declare_exchange(self.dead_exchange, aio_pika.ExchangeType.FANOUT, durable=True)
        queue = await channel.declare_queue(
            self.task_queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": self.dead_exchange,
            },
        )
        await queue.bind(tasks, TASK_ROUTING_KEY)
        dead_queue = await channel.declare_queue(
            self.dead_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead_queue.bind(dead)
        for delay in sorted(set(self.retry_delays_ms)):
            await channel.declare_queue(
                self.retry_queue(delay),
                durable=True,
                arguments={
                    "x-message-ttl": delay,
                    "x-dead-letter-exchange": self.task_exchange,
                    "x-dead-letter-routing-key": TASK_ROUTING_KEY,
                },
            )
        return tasks, queue

    async def delete(self, channel: AbstractChannel) -> None:
        """Remove everything declare() made (tests)."""
        for name in [
            self.task_queue,
            self.dead_queue,
            *(self.retry_queue(d) for d in set(self.retry_delays_ms)),
        ]:
            await channel.queue_delete(name)
        for exchange in (self.task_exchange, self.dead_exchange):
            await channel.exchange_delete(exchange)
