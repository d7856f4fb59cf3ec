"""A worker instance's leases on the tasks it runs: its owner id, their length, renewal and release."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from services.executor.journal import RedisCalls

log = logging.getLogger(__name__)


class Leases:
    """Keeps and gives up the task leases of one worker instance (the claim takes them)."""

    def __init__(self, redis: RedisCalls, lease_seconds: float) -> None:
        self._redis = redis
        self._store = redis.store
        # This worker instance's id in task leases.
        self.owner = uuid.uuid4().hex
        self.lease_ms = max(1, int(lease_seconds * 1000))

    async def keep(self, tenant: str, task_id: str) -> None:
        """Renew the task's lease every third of its length until cancelled (or the lease is not ours)."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                if not await self._redis(self._store.renew_lease, tenant, task_id, self.owner, self.lease_ms):
                    log.warning("task lease lost", extra={"task_id": task_id, "tenant": tenant})
                    return
            except Exception as exc:  # Redis away for a moment: try again at the next tick
                log.warning("could not renew a task lease", extra={"task_id": task_id, "error": str(exc)})

    async def release(self, tenant: str, task_id: str) -> None:
        """Give up the lease at once, within a second and whatever goes wrong (the lease runs out anyway)."""
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(1.0):
                await self._redis(self._store.release_lease, tenant, task_id, self.owner)
