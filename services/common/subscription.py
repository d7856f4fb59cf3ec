"""A Redis pub/sub subscription served by a background loop that always stops when asked.

The loop polls with ``get_message(timeout=...)`` rather than iterating ``listen()``: cancelling a task inside
redis-py's ``listen()`` can leave it waiting forever, so ``stop()`` asks the loop to end instead. A dropped
connection is retried after a pause, and ``on_resubscribed`` lets the owner catch up on what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

log = logging.getLogger(__name__)


class Subscription:
    """Calls ``on_message(data)`` for each message published on ``channel`` until stopped."""

    def __init__(
        self,
        redis: Redis,
        channel: str,
        on_message: Callable[[str], Awaitable[None]],
        *,
        name: str,
        on_resubscribed: Callable[[], Awaitable[None]] | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self._redis = redis
        self._channel = channel
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._name = name
        self._poll_s = poll_s
        self._pubsub: PubSub | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Subscribe (messages published from now on are delivered), then serve them in the background."""
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._channel)
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10 * self._poll_s)
            self._task = None
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None

    async def _loop(self) -> None:
        assert self._pubsub is not None
        while not self._stopping:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=self._poll_s)
                if message is not None and message.get("type") == "message":
                    await self._on_message(str(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped connection: resubscribe after a pause
                log.warning(
                    "subscription lost; retrying", extra={"subscription": self._name, "error": str(exc)}
                )
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    await self._pubsub.subscribe(self._channel)
                    if self._on_resubscribed is not None:
                        await self._on_resubscribed()
