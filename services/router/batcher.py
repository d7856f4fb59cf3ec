"""Embeddings micro-batching: Embed calls for the same model within a short window become one provider call.

Requests join the open batch of their key (tenant, model, dimensions, user, priority: so quotas, fairness and
the provider's view of the end user stay per tenant); the batch goes out when its window (a few ms) ends or it
holds ``max_inputs`` texts, and the vectors are split back in order. The provider's token count is shared out
by text length. If the batched call is refused as a bad request, each request is retried alone, so one bad text
fails only its own request; an outage fails them all, as it would have anyway. A caller that goes away only
drops its share.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from services.common.errors import InvalidInputError
from services.router.chat import EmbedRequest, EmbedResult, Route, Usage
from services.router.providers.base import ProviderRejectedError

log = logging.getLogger(__name__)

EmbedCall = Callable[[EmbedRequest, float | None], Awaitable[tuple[EmbedResult, Route]]]
BatchKey = tuple[str, str, int | None, str, str]

BATCHES = Counter(
    "openclaw_router_embed_batches_total", "Provider calls made for micro-batched Embed requests.", ["model"]
)
BATCHED = Counter(
    "openclaw_router_embed_batched_requests_total",
    "Embed requests served through micro-batches (÷ batches = mean batch size).",
    ["model"],
)


@dataclass(slots=True)
class _Item:
    request: EmbedRequest
    deadline: float | None
    future: asyncio.Future[tuple[EmbedResult, Route]]


@dataclass(slots=True)
class _Batch:
    items: list[_Item] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class EmbedBatcher:
    """Collects Embed requests per key for ``window_s`` (or ``max_inputs`` texts) and sends each batch once."""

    def __init__(self, call: EmbedCall, *, window_s: float = 0.005, max_inputs: int = 256) -> None:
        self._call = call
        self.window_s = window_s
        self.max_inputs = max_inputs
        self._open: dict[BatchKey, _Batch] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def embed(self, request: EmbedRequest, deadline: float | None) -> tuple[EmbedResult, Route]:
        """The request's vectors, usage and route, served within a batch when others come along."""
        if self.window_s <= 0 or len(request.inputs) >= self.max_inputs:
            return await self._call(request, deadline)
        loop = asyncio.get_running_loop()
        key: BatchKey = (request.tenant, request.model, request.dimensions, request.user, request.priority)
        batch = self._open.get(key)
        if batch is not None and batch.size + len(request.inputs) > self.max_inputs:
            self._flush(key, batch)  # full: send it now and open a new one
            batch = None
        if batch is None:
            batch = self._open[key] = _Batch()
            batch.timer = loop.call_later(self.window_s, self._flush, key, batch)
        item = _Item(request, deadline, loop.create_future())
        batch.items.append(item)
        batch.size += len(request.inputs)
        if batch.size >= self.max_inputs:
            self._flush(key, batch)
        return await item.future  # cancelling this waiter cancels only its own future

    def _flush(self, key: BatchKey, batch: _Batch) -> None:
        if self._open.get(key) is batch:
            del self._open[key]
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _send(self, batch: _Batch) -> None:
        items = [item for item in batch.items if not item.future.done()]  # drop callers that left
        if not items:
            return
        if len(items) == 1:
            await self._alone(items[0])
            return
        first = items[0].request
        deadlines = [item.deadline for item in items]
        combined = dataclasses.replace(first, inputs=tuple(t for item in items for t in item.request.inputs))
        # The batch lives as long as its most patient member; the others stop waiting at their own deadline.
        deadline = None if any(d is None for d in deadlines) else max(d for d in deadlines if d is not None)
        BATCHES.labels(first.model).inc()
        BATCHED.labels(first.model).inc(len(items))
        try:
            result, route = await self._call(combined, deadline)
        except (ProviderRejectedError, InvalidInputError):
            # Perhaps one bad text: retry each alone so only its own request fails.
            await asyncio.gather(*(self._alone(item) for item in items))
            return
        except Exception as exc:  # an outage, a deadline: every member sees the same error
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        if len(result.vectors) != len(combined.inputs):
            error = InvalidInputError(
                f"model {first.model!r} returned {len(result.vectors)} vectors for {len(combined.inputs)} texts"
            )
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        shares = _shares(result.usage.prompt_tokens, [_chars(item.request) for item in items])
        offset = 0
        for item, tokens in zip(items, shares, strict=True):
            n = len(item.request.inputs)
            part = EmbedResult(result.model, result.vectors[offset : offset + n], Usage(tokens, 0))
            offset += n
            if not item.future.done():
                item.future.set_result((part, dataclasses.replace(route, attempts=list(route.attempts))))

    async def _alone(self, item: _Item) -> None:
        try:
            answer = await self._call(item.request, item.deadline)
        except Exception as exc:
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(answer)

    async def close(self) -> None:
        """Send every open batch now and wait for the batches in flight."""
        for key, batch in list(self._open.items()):
            self._flush(key, batch)
        if self._running:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._running, return_exceptions=True)


def _chars(request: EmbedRequest) -> int:
    return sum(len(text) for text in request.inputs)


def _shares(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainders), summing exactly to ``total``."""
    whole = sum(weights)
    if whole <= 0:
        weights, whole = [1] * len(weights), len(weights)
    exact = [total * w / whole for w in weights]
    shares = [math.floor(x) for x in exact]
    rest = total - sum(shares)
    for index in sorted(range(len(exact)), key=lambda i: exact[i] - shares[i], reverse=True)[:rest]:
        shares[index] += 1
    return shares
