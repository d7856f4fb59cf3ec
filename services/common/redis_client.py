"""The one way services open Redis: text replies, bounded timeouts, health checks, and auto-pipelining."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

# Commands that may wait on purpose must not hold up the commands batched with them.
_BLOCKING = frozenset(
    {
        "BLPOP",
        "BRPOP",
        "BRPOPLPUSH",
        "BLMOVE",
        "BLMPOP",
        "BZPOPMIN",
        "BZPOPMAX",
        "BZMPOP",
        "WAIT",
        "WAITAOF",
    }
)
_MAYBE_BLOCKING = frozenset({"XREAD", "XREADGROUP"})  # blocking only with a BLOCK argument


def _blocks(args: tuple[Any, ...]) -> bool:
    name = _word(args[0])
    if name in _BLOCKING:
        return True
    return name in _MAYBE_BLOCKING and any(_word(a) == "BLOCK" for a in args[1:])


def _word(arg: Any) -> str:
    """A command word as redis-py passes it (str or bytes: XREAD's BLOCK is b"BLOCK"), upper-cased."""
    if isinstance(arg, bytes):
        return arg.decode("latin-1").upper()
    return arg.upper() if isinstance(arg, str) else ""


class AutoPipelinedRedis(Redis):
    """A client that sends the commands issued during one turn of the event loop as one pipeline, the way
    ioredis's ``enableAutoPipelining`` does: under load, many concurrent requests' commands go out in one
    write and come back in one read instead of a round trip each, which is most of what a command costs a
    Python client. Each command still gets its own reply or error; a lone command goes out as before.

    Blocking commands bypass the batch. Scripts work unchanged (a NOSCRIPT reply reaches the ``Script``,
    which loads it and retries). Ordering is per issuing order, as on one connection.
    """

    _pending: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] | None = None
    _pending_loop: asyncio.AbstractEventLoop | None = None
    _flushes: set[asyncio.Task[None]] | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if _blocks(args):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # A batch left by a loop that stopped before its flush ran (asyncio.run called again with one client,
        # as a CLI does) would never be sent: start a fresh one on this loop.
        if self._pending is None or self._pending_loop is not loop:
            self._pending, self._pending_loop = [], loop
            loop.call_soon(self._flush)
        self._pending.append((args, options, future))
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending or [], None
        if self._flushes is None:
            self._flushes = set()
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._flushes.add(task)  # held so it is not collected mid-flight
        task.add_done_callback(self._flushes.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]]) -> None:
        live = [entry for entry in batch if not entry[2].done()]  # callers that gave up are not sent
        if not live:
            return
        if len(live) == 1:
            args, options, future = live[0]
            try:
                result = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
            except BaseException as exc:  # the caller's error, whatever it is
                if not future.done():
                    future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            if not future.done():
                future.set_result(result)
            return
        try:
            async with self.pipeline(transaction=False) as pipe:
                for args, options, _ in live:
                    pipe.execute_command(*args, **options)
                results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every command in the batch failed with it
            for _, _, future in live:
                if not future.done():
                    future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, _, future), result in zip(live, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def open_redis(url: str, *, auto_pipeline: bool = True) -> Redis:
    """A pooled client; decode_responses is required by TaskStore and friends."""
    kind = AutoPipelinedRedis if auto_pipeline else Redis
    client: Redis = kind.from_url(
        url,
        decode_responses=True,
        socket_timeout=5.0,
        socket_connect_timeout=3.0,
        health_check_interval=15,
        retry_on_timeout=True,
    )
    return client
