"""The waker: re-publishes parked (waiting) tasks when their time comes or a signal arrives.

Every worker runs one. A due task is leased to one waker at a time (``WaitStore.due``), so it is published
once; if the waker dies before publishing, the lease runs out and another waker takes it. A duplicate is
harmless anyway: the claim and the wait step's own check decide what a delivery does.
"""

from __future__ import annotations

import asyncio
import logging

from openclaw.v1 import tasks_pb2
from services.common.publisher import TaskPublisher
from services.common.waits import WaitStore
from services.executor.journal import RedisCalls

log = logging.getLogger(__name__)


class Waker:
    """A loop that wakes due parked tasks every ``interval_s``, between ``start()`` and ``stop()``."""

    def __init__(
        self, waits: WaitStore, redis: RedisCalls, publisher: TaskPublisher, *, interval_s: float = 1.0
    ) -> None:
        self._waits, self._redis, self._publisher = waits, redis, publisher
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def wake_due(self) -> int:
        """Re-publish every task due now; returns how many were published."""
        published = 0
        for member, lease in await self._redis(self._waits.due):
            parked = await self._redis(self._waits.parked, member)
            if parked.envelope is not None:  # else it ended (cancelled, say) while it waited
                await self._publisher.publish(tasks_pb2.TaskEnvelope.FromString(parked.envelope))
                published += 1
            await self._redis(self._waits.unpark, member, lease)
        return published

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.wake_due()
            except Exception as exc:  # Redis or RabbitMQ away: the leased entries come due again later
                log.warning("could not wake parked tasks", extra={"error": f"{type(exc).__name__}: {exc}"})
