"""Fairness under load: a tenant flooding the batch class does not starve another tenant's interactive requests.

The simulator answers after a fixed 50 ms, the model has 4 slots, and one tenant keeps 40 batch requests going
all the time (about 36 queued). The other tenant's interactive latency is measured alone, then under that flood;
the assertions are on ratios, so the test holds on a slow machine as on a fast one. Without priority classes the
interactive request would queue behind the flood: about 36 / 4 x 50 ms = 450 ms, 9x its latency alone. With
classes but no headroom it would wait for a batch call to end, up to one more 50 ms call: its p90 near 1.8x. With
headroom it finds a slot free: its p90 stays within 1.5x and its p99 within 2x. (A CI run once saw p99 at 2.01x:
a pause of the whole process stretched the calls in flight, the adaptive limit halved on those samples and took
the headroom with it; the limit now halves only on latency that stays up, see qos/adaptive.py.)
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from openclaw.v1 import router_pb2, router_pb2_grpc
from services.router.bootstrap import RouterApp, build
from services.simulator.app import Simulator
from tests.integration.test_router import chat_request, metric, set_behaviour, settings_for, wait_for

Stub = Any
SAMPLES = 100


@pytest.fixture
async def router(sim: Simulator) -> AsyncIterator[RouterApp]:
    app = build(settings_for(sim, cache_ttl_seconds=0, metering=False), env={})
    await app.start()
    yield app
    await app.stop(0)


async def percentiles_of(stub: Stub, tenant: str) -> tuple[float, float]:
    """The p90 and p99 latencies of sequential interactive requests of one tenant."""
    latencies = []
    for _ in range(SAMPLES):
        start = time.perf_counter()
        response = await stub.Chat(chat_request("fair", tenant=tenant, priority="interactive"), timeout=30)
        latencies.append(time.perf_counter() - start)
        assert response.route.priority == "interactive"
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[89], cuts[98]


async def test_a_batch_flood_does_not_starve_interactive_requests(sim: Simulator, router: RouterApp) -> None:
    await set_behaviour(sim, "fair-m", latency_ms=50)
    async with grpc.aio.insecure_channel(router.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        model = router_pb2.Model(
            name="fair", endpoint=f"{sim.url}/v1", provider_model="fair-m", max_concurrency=4
        )
        await stub.AddModel(router_pb2.AddModelRequest(model=model), timeout=10)
        await stub.Chat(chat_request("fair"), timeout=30)  # warm the connection pool
        alone = await percentiles_of(stub, "alice")

        stop = asyncio.Event()
        flooded = 0

        async def flood() -> None:
            nonlocal flooded
            while not stop.is_set():
                try:
                    await stub.Chat(chat_request("fair", tenant="bob", priority="batch"), timeout=60)
                except grpc.aio.AioRpcError as exc:
                    # On a loaded machine a batch request may outwait the queue timeout and be shed: that is the
                    # design (bounded queues), and the flood goes on; only interactive latency is under test.
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                flooded += 1

        flooders = [asyncio.create_task(flood()) for _ in range(40)]
        group = router.router.group("fair")
        await wait_for(lambda: group.scheduler.waiting_by_priority()["batch"] >= 30, "the flood to queue")
        loaded = await percentiles_of(stub, "alice")
        depth = metric("openclaw_router_queue_depth", model="fair", priority="batch")
        queued_batch = group.scheduler.waiting_by_priority()["batch"]
        stop.set()
        await asyncio.gather(*flooders)

    assert queued_batch >= 20 and depth >= 20 and flooded > SAMPLES  # the flood really was there throughout
    shown = f"interactive p90/p99 {loaded[0] * 1000:.1f}/{loaded[1] * 1000:.1f} ms under flood"
    shown += f" vs {alone[0] * 1000:.1f}/{alone[1] * 1000:.1f} ms alone"
    assert loaded[0] <= 1.5 * alone[0], shown
    assert loaded[1] <= 2 * alone[1], shown
