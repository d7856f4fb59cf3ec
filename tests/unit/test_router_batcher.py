"""Embeddings micro-batching over a fake provider call: one call per batch, split back, errors isolated."""

from __future__ import annotations

import asyncio

import pytest

from services.router.batcher import EmbedBatcher, _shares
from services.router.chat import EmbedRequest, EmbedResult, Route, Usage
from services.router.providers.base import ProviderError


class FakeEmbed:
    """Vectors are (len(text), index in the call); a text "bad" is refused, ``down`` fails every call."""

    def __init__(self) -> None:
        self.calls: list[EmbedRequest] = []
        self.down = False

    async def __call__(self, request: EmbedRequest, deadline: float | None) -> tuple[EmbedResult, Route]:
        self.calls.append(request)
        await asyncio.sleep(0)
        if self.down:
            raise ProviderError("server_error", 503, "provider down")
        if "bad" in request.inputs:
            raise ProviderError("client_error", 400, "input 'bad' is not allowed")
        vectors = tuple((float(len(text)), float(i)) for i, text in enumerate(request.inputs))
        words = sum(len(text.split()) for text in request.inputs)
        return EmbedResult("emb", vectors, Usage(words, 0)), Route(model=request.model, provider="openai")


def req(*texts: str, tenant: str = "t", model: str = "emb") -> EmbedRequest:
    return EmbedRequest(model=model, inputs=texts, tenant=tenant)


async def test_requests_in_one_window_go_out_as_one_call_and_are_split_back() -> None:
    fake = FakeEmbed()
    batcher = EmbedBatcher(
        fake, window_s=60, max_inputs=6
    )  # full at 6 texts: sent without waiting the window
    results = await asyncio.gather(
        batcher.embed(req("a", "bb"), None),
        batcher.embed(req("ccc"), None),
        batcher.embed(req("dddd e", "f", "g"), None),
    )
    assert len(fake.calls) == 1
    assert fake.calls[0].inputs == ("a", "bb", "ccc", "dddd e", "f", "g")
    assert [r[0].vectors for r in results] == [
        ((1.0, 0.0), (2.0, 1.0)),
        ((3.0, 2.0),),
        ((6.0, 3.0), (1.0, 4.0), (1.0, 5.0)),
    ]
    assert sum(r[0].usage.prompt_tokens for r in results) == 7  # the provider's count, shared out
    assert all(r[1].model == "emb" for r in results)


async def test_batches_are_per_tenant_and_model() -> None:
    fake = FakeEmbed()
    batcher = EmbedBatcher(fake, window_s=0.01, max_inputs=100)
    await asyncio.gather(
        batcher.embed(req("a", tenant="t1"), None),
        batcher.embed(req("b", tenant="t2"), None),
        batcher.embed(req("c", tenant="t1"), None),
        batcher.embed(req("d", tenant="t1", model="other"), None),
    )
    sent = sorted((call.tenant, call.model, call.inputs) for call in fake.calls)
    assert sent == [("t1", "emb", ("a", "c")), ("t1", "other", ("d",)), ("t2", "emb", ("b",))]


async def test_a_full_batch_goes_out_and_the_next_request_opens_another() -> None:
    fake = FakeEmbed()
    batcher = EmbedBatcher(fake, window_s=0.01, max_inputs=3)
    await asyncio.gather(batcher.embed(req("a", "b"), None), batcher.embed(req("c", "d"), None))
    assert [call.inputs for call in fake.calls] == [("a", "b"), ("c", "d")]


async def test_a_request_as_large_as_a_batch_goes_alone_at_once() -> None:
    fake = FakeEmbed()
    batcher = EmbedBatcher(fake, window_s=60, max_inputs=2)
    result, _ = await batcher.embed(req("a", "b"), None)
    assert len(result.vectors) == 2 and len(fake.calls) == 1


async def test_a_refused_batch_is_retried_one_by_one_so_only_the_bad_request_fails() -> None:
    fake = FakeEmbed()
    batcher = EmbedBatcher(fake, window_s=60, max_inputs=3)
    good, bad, other = await asyncio.gather(
        batcher.embed(req("a"), None),
        batcher.embed(req("bad"), None),
        batcher.embed(req("c"), None),
        return_exceptions=True,
    )
    assert isinstance(bad, ProviderError) and "bad" in bad.message
    assert not isinstance(good, BaseException) and good[0].vectors == ((1.0, 0.0),)
    assert not isinstance(other, BaseException) and other[0].vectors == ((1.0, 0.0),)
    assert [call.inputs for call in fake.calls] == [("a", "bad", "c"), ("a",), ("bad",), ("c",)]


async def test_an_outage_fails_every_member_once() -> None:
    fake = FakeEmbed()
    fake.down = True
    batcher = EmbedBatcher(fake, window_s=60, max_inputs=2)
    results = await asyncio.gather(
        batcher.embed(req("a"), None), batcher.embed(req("b"), None), return_exceptions=True
    )
    assert all(isinstance(r, ProviderError) and r.kind == "server_error" for r in results)
    assert len(fake.calls) == 1


async def test_a_caller_that_leaves_drops_only_its_share() -> None:
    fake = FakeEmbed()
    batcher = EmbedBatcher(fake, window_s=0.05, max_inputs=100)
    leaving = asyncio.create_task(batcher.embed(req("gone"), None))
    staying = asyncio.create_task(batcher.embed(req("here"), None))
    await asyncio.sleep(0)
    leaving.cancel()
    result, _ = await staying
    assert result.vectors == ((4.0, 0.0),)
    assert [call.inputs for call in fake.calls] == [("here",)]
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_close_sends_the_open_batches() -> None:
    fake = FakeEmbed()
    batcher = EmbedBatcher(fake, window_s=60, max_inputs=100)
    waiting = asyncio.create_task(batcher.embed(req("a"), None))
    await asyncio.sleep(0)
    await batcher.close()
    assert (await waiting)[0].vectors == ((1.0, 0.0),)


async def test_no_window_means_no_batching() -> None:
    fake = FakeEmbed()
    batcher = EmbedBatcher(fake, window_s=0, max_inputs=100)
    await asyncio.gather(batcher.embed(req("a"), None), batcher.embed(req("b"), None))
    assert len(fake.calls) == 2


@pytest.mark.parametrize(
    ("total", "weights"), [(10, [1, 1, 1]), (7, [5, 0, 2]), (0, [3, 4]), (5, [0, 0]), (1000, [1, 2, 3, 4])]
)
def test_shares_add_up_exactly(total: int, weights: list[int]) -> None:
    shares = _shares(total, weights)
    assert sum(shares) == total and all(s >= 0 for s in shares)
