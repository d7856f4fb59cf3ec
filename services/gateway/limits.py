"""Service governance beside the rate limits: concurrent streams and connections per tenant (across replicas),
concurrency per route class and load shedding when the task queue is deep (per replica).

Streams and WebSocket connections are leases in a Redis sorted set per tenant (member: a lease id, score: its
expiry on Redis' clock), renewed while held, so every replica counts the same set and a crashed replica's
leases lapse by themselves instead of leaking slots forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Literal

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.errors import ResourceExhaustedError, UnavailableError
from services.gateway.metrics import SHED

_log = logging.getLogger(__name__)

SlotKind = Literal["streams", "websockets"]
RouteClass = Literal["submit", "read", "chat", "admin"]

# KEYS[1]: the tenant's lease set; ARGV: lease ms, lease id, limit. 1 when taken, 0 when the tenant is at its limit.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""
# KEYS[1]: a lease set; ARGV: lease ms, lease ids. Pushes the expiry of the leases still held.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""


class Slot:
    """One held lease; ``release`` is idempotent."""

    def __init__(self, pool: SlotPool, key: str, lease: str) -> None:
        self._pool = pool
        self._key = key
        self._lease = lease
        self._released = False

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self._pool.release(self._key, self._lease)


class SlotPool:
    """Concurrent streams and WebSocket connections per tenant, counted in Redis across replicas."""

    def __init__(self, redis: Redis, namespace: str, *, lease_s: float = 60.0) -> None:
        self._redis = redis
        self._prefix = f"{namespace}:slots:"
        self._lease_ms = int(lease_s * 1000)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._held: dict[str, set[str]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._renewer(), name="slot-renew")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def acquire(self, kind: SlotKind, tenant: str, limit: int) -> Slot:
        """A lease, or ResourceExhaustedError when the tenant already holds ``limit`` of this kind."""
        key = f"{self._prefix}{kind}:{tenant}"
        lease = uuid.uuid4().hex
        try:
            taken = await self._acquire(keys=[key], args=[self._lease_ms, lease, limit])
        except RedisError as exc:
            # As the rate limiter: an outage of the counter must not refuse every stream.
            _log.warning("stream slots unavailable; letting the request through", extra={"error": str(exc)})
            return Slot(self, key, lease)
        if not int(taken):
            what = "streams" if kind == "streams" else "WebSocket connections"
            raise ResourceExhaustedError(
                f"this tenant already has {limit} concurrent {what} open (quota); close one and retry",
                limit=limit,
                retry_after=1,
            )
        self._held.setdefault(key, set()).add(lease)
        return Slot(self, key, lease)

    async def release(self, key: str, lease: str) -> None:
        leases = self._held.get(key)
        if leases is not None:
            leases.discard(lease)
            if not leases:
                del self._held[key]
        try:
            await self._redis.zrem(key, lease)
        except RedisError as exc:  # the lease lapses on its own
            _log.warning("could not release a stream slot", extra={"error": str(exc)})

    async def _renewer(self) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            for key, leases in list(self._held.items()):
                if leases:
                    try:
                        await self._renew(keys=[key], args=[self._lease_ms, *leases])
                    except RedisError as exc:
                        _log.warning("could not renew stream slots", extra={"error": str(exc)})


class RouteLimits:
    """Requests in progress per route class on this replica; past the limit a request is refused at once (503)."""

    def __init__(self, limits: dict[RouteClass, int]) -> None:
        self._limits = limits
        self._active: dict[RouteClass, int] = dict.fromkeys(limits, 0)

    def active(self, route: RouteClass) -> int:
        return self._active.get(route, 0)

    @contextlib.contextmanager
    def hold(self, route: RouteClass) -> Iterator[None]:
        self.enter(route)
        try:
            yield
        finally:
            self.leave(route)

    def enter(self, route: RouteClass) -> None:
        limit = self._limits.get(route)
        if limit is not None and self._active[route] >= limit:
            SHED.labels(f"route_{route}").inc()
            raise UnavailableError(
                f"the gateway is at its limit of {limit} concurrent {route} requests; retry shortly",
                retry_after=1,
            )
        if limit is not None:
            self._active[route] += 1

    def leave(self, route: RouteClass) -> None:
        if route in self._active:
            self._active[route] -= 1


class QueueShedder:
    """Refuses new submits (503 + Retry-After) while the task queue holds more than ``max_depth`` ready messages.

    The depth comes from a passive queue declaration (its ``message_count``), re-read at most every
    ``interval_s`` whatever the request rate; if it cannot be read, submits pass (the publish will tell).
    """

    def __init__(
        self, amqp: AbstractRobustConnection, queue: str, *, max_depth: int, interval_s: float = 1.0
    ) -> None:
        self._amqp = amqp
        self._queue = queue
        self._max_depth = max_depth
        self._interval_s = interval_s
        self._depth = 0
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()
        self._channel: AbstractChannel | None = None

    async def check(self) -> None:
        if self._max_depth <= 0:
            return
        depth = await self.depth()
        if depth >= self._max_depth:
            SHED.labels("queue_depth").inc()
            raise UnavailableError(
                f"the task queue is {depth} deep (shedding above {self._max_depth}); retry later",
                retry_after=max(1, round(self._interval_s * 2)),
            )

    async def depth(self) -> int:
        """The ready messages in the task queue, as last read (re-read when older than interval_s)."""
        if time.monotonic() - self._read_at < self._interval_s:
            return self._depth
        async with self._lock:
            if time.monotonic() - self._read_at < self._interval_s:
                return self._depth
            try:
                if self._channel is None or self._channel.is_closed:
                    self._channel = await self._amqp.channel()
                # The raw AMQP call: aio-pika's declare_queue reuses the first declaration's result.
                underlay = await self._channel.get_underlay_channel()
                declared = await underlay.queue_declare(self._queue, passive=True)
                self._depth = int(declared.message_count or 0)
            except Exception as exc:
                _log.warning("could not read the task queue depth", extra={"error": str(exc)})
                self._channel = None
            self._read_at = time.monotonic()
        return self._depth

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()
        self._channel = None
