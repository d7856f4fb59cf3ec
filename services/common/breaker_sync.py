"""Circuit breakers shared across replicas through Redis, without blocking the event loop.

When a breaker opens on one replica, the others open too, for the same remaining time: one replica's evidence
that a dependency is down spares the others from paying for it again. Only one replica probes a half-open
dependency at a time (a short ``SET NX`` claim); when the probe succeeds, every replica closes. Each open is
also kept as a key with the open time as its TTL, so a replica that starts later adopts breakers already open.
Redis trouble never blocks a call: the sync is best effort and each replica's breaker still works alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis

from services.common.breaker import AsyncBreaker
from services.common.subscription import Subscription

log = logging.getLogger(__name__)


class BreakerSync:
    """Publishes this replica's breaker transitions and applies the other replicas' ones."""

    def __init__(self, redis: Redis, namespace: str, *, replica: str = "", probe_ttl_s: float = 30.0) -> None:
        self._redis = redis
        self._prefix = f"{namespace}:breaker:"
        self._channel = f"{namespace}:breakers"
        self.replica = replica or uuid.uuid4().hex[:12]
        self._probe_ttl_ms = int(probe_ttl_s * 1000)
        self._breakers: dict[str, AsyncBreaker] = {}
        self._subscription = Subscription(redis, self._channel, self._on_message, name="breaker-sync")
        self._started = False
        self._pending: set[asyncio.Task[None]] = set()

    def attach(self, breaker: AsyncBreaker) -> None:
        """Share this breaker's state (by name) with the other replicas."""
        self._breakers[breaker.name] = breaker
        breaker.observe(self._on_local)
        breaker.probe_gate = self.claim_probe
        if self._started:
            self._spawn(self._adopt(breaker))

    def detach(self, name: str) -> None:
        breaker = self._breakers.pop(name, None)
        if breaker is not None:
            breaker.probe_gate = None

    async def start(self) -> None:
        await self._subscription.start()
        self._started = True
        for breaker in list(self._breakers.values()):
            await self._adopt(breaker)

    async def stop(self) -> None:
        await self._subscription.stop()
        self._started = False
        for task in list(self._pending):
            with contextlib.suppress(Exception):
                await task

    async def claim_probe(self, name: str) -> bool:
        """Whether this replica may send the half-open probe (no other replica holds the claim)."""
        return bool(
            await self._redis.set(f"{self._prefix}{name}:probe", self.replica, nx=True, px=self._probe_ttl_ms)
        )

    def _on_local(self, breaker: AsyncBreaker, state: str) -> None:
        if breaker.adopting or breaker.name not in self._breakers:
            return
        if state == "open":
            self._spawn(self._publish_open(breaker.name, breaker.open_time))
        elif state == "closed":
            self._spawn(self._publish_closed(breaker.name))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "breaker sync failed; replicas may disagree for a while",
                extra={"error": str(task.exception())},
            )

    async def _publish_open(self, name: str, open_s: float) -> None:
        until = time.time() + open_s
        message = json.dumps({"name": name, "state": "open", "until": until, "by": self.replica})
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._prefix + name, message, px=max(1, int(open_s * 1000)))
            pipe.delete(f"{self._prefix}{name}:probe")  # the probe failed: the next one may come from anyone
            pipe.publish(self._channel, message)
            await pipe.execute()

    async def _publish_closed(self, name: str) -> None:
        message = json.dumps({"name": name, "state": "closed", "by": self.replica})
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._prefix + name, f"{self._prefix}{name}:probe")
            pipe.publish(self._channel, message)
            await pipe.execute()

    async def _adopt(self, breaker: AsyncBreaker) -> None:
        raw = await self._redis.get(self._prefix + breaker.name)
        if raw:
            self._apply(json.loads(raw))

    async def _on_message(self, data: str) -> None:
        self._apply(json.loads(data))

    def _apply(self, message: dict[str, object]) -> None:
        if message.get("by") == self.replica:
            return
        breaker = self._breakers.get(str(message.get("name")))
        if breaker is None:
            return
        if message.get("state") == "open":
            breaker.adopt_open(float(message.get("until", 0)) - time.time())  # type: ignore[arg-type]
        elif message.get("state") == "closed":
            breaker.adopt_close()
