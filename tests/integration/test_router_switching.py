"""Zero-downtime switching: two router replicas share one model table through Redis while a client hammers both.

Changes arrive both ways (admin calls on either replica, a watched models file on one of them); each replica
swaps tables atomically, requests in flight finish on the table they started with, removed deployments drain,
and a bad file is refused whole while the old table keeps serving. The client must see zero failed requests.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from redis.asyncio import Redis

from openclaw.v1 import router_pb2, router_pb2_grpc
from services.common.redis_client import open_redis
from services.router.bootstrap import RouterApp, build
from services.simulator.app import Simulator
from tests.integration.test_router import chat_request, set_behaviour, settings_for, wait_for

Stub = Any


def table(sim: Simulator, *deployments: str, broken: bool = False) -> str:
    """A models file with one group, ``live``, served by the named deployments (provider model = name)."""
    rows = "".join(f"      - {{name: {d}, provider_model: {d}-m}}\n" for d in deployments)
    bad = "    max_concurrency: -1\n" if broken else ""
    return (
        "models:\n"
        "  - name: live\n"
        "    provider: openai\n"
        f"    endpoint: {sim.url}/v1\n"
        "    max_concurrency: 16\n"
        f"{bad}"
        "    deployments:\n"
        f"{rows}"
    )


@pytest.fixture
async def replicas(
    sim: Simulator, redis: Redis, redis_url: str, namespace: str, tmp_path: Path
) -> AsyncIterator[tuple[RouterApp, RouterApp, Path]]:
    models = tmp_path / "models.yaml"
    models.write_text(table(sim, "a"), encoding="utf-8")
    common: dict[str, Any] = {
        "namespace": namespace,
        "shared_state": True,
        "cache_ttl_seconds": 0,
        "metering": False,
        "models": str(models),
    }
    first = build(settings_for(sim, models_watch_seconds=0.05, **common), env={}, redis=redis)
    await first.start()
    other_redis = open_redis(redis_url)  # the second replica has its own connection, as in production
    second = build(settings_for(sim, models_watch_seconds=0, **common), env={}, redis=other_redis)
    await second.start()
    yield first, second, models
    await second.stop(0)
    await first.stop(0)
    await other_redis.aclose()


async def deployments_of(stub: Stub) -> list[str]:
    listed = await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)
    return [d.name for m in listed.models if m.name == "live" for d in m.deployments]


async def test_switching_models_under_load_fails_no_request(
    sim: Simulator, replicas: tuple[RouterApp, RouterApp, Path]
) -> None:
    first, second, models = replicas
    for name in ("a-m", "b-m", "c-m"):
        await set_behaviour(sim, name, latency_ms=20)  # every request is in flight across some switch
    async with (
        grpc.aio.insecure_channel(first.address) as ch1,
        grpc.aio.insecure_channel(second.address) as ch2,
    ):
        stubs = [router_pb2_grpc.RouterServiceStub(ch1), router_pb2_grpc.RouterServiceStub(ch2)]
        served: list[Counter[str]] = [Counter(), Counter()]
        failures: list[str] = []
        stop = asyncio.Event()

        async def hammer(index: int) -> None:
            replica = index % 2
            while not stop.is_set():
                try:
                    response = await stubs[replica].Chat(chat_request("live"), timeout=30)
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"replica {replica}: {exc.code().name}: {exc.details()}")
                    continue
                served[replica][response.message.content.split("]")[0].removeprefix("[simulated ")] += 1

        async def converged(expected: list[str]) -> None:
            for stub in stubs:
                await wait_for_async(stub, expected)

        clients = [asyncio.create_task(hammer(i)) for i in range(12)]
        try:
            await converged(["a"])
            # 1. an admin call on the second replica adds a canary; both replicas switch.
            await stubs[1].UpdateModel(
                router_pb2.UpdateModelRequest(
                    model=router_pb2.Model(
                        name="live",
                        deployments=[
                            router_pb2.Deployment(name="a", provider_model="a-m"),
                            router_pb2.Deployment(name="b", provider_model="b-m", weight=0.2),
                        ],
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["deployments"]),
                ),
                timeout=10,
            )
            await converged(["a", "b"])
            await wait_for(lambda: served[0]["b-m"] > 0 and served[1]["b-m"] > 0, "the canary to serve")
            # 2. the watched file promotes b and removes a: a drains on both replicas.
            models.write_text(table(sim, "b"), encoding="utf-8")
            await converged(["b"])
            # 3. a broken file is refused whole; b keeps serving everywhere.
            models.write_text(table(sim, "b", "c", broken=True), encoding="utf-8")
            watcher = first.shared.watcher
            assert watcher is not None
            await wait_for(lambda: "max_concurrency" in watcher.last_error, "the broken file to be refused")
            assert await deployments_of(stubs[0]) == ["b"] == await deployments_of(stubs[1])
            # 4. an admin call on the first replica switches to c.
            await stubs[0].UpdateModel(
                router_pb2.UpdateModelRequest(
                    model=router_pb2.Model(
                        name="live", deployments=[router_pb2.Deployment(name="c", provider_model="c-m")]
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["deployments"]),
                ),
                timeout=10,
            )
            await converged(["c"])
            await wait_for(lambda: all(s["c-m"] >= 20 for s in served), "both replicas to serve on c")
            after = [dict(s) for s in served]  # requests that were in flight on b have finished by now
            await wait_for(lambda: all(s["c-m"] >= 60 for s in served), "more requests on c")
        finally:
            stop.set()
            await asyncio.gather(*clients)

    assert failures == []
    for replica in (0, 1):
        assert {"a-m", "b-m", "c-m"} <= set(served[replica])  # every table served on every replica
        assert served[replica]["a-m"] == after[replica]["a-m"]  # nothing went to a removed deployment
        assert served[replica]["b-m"] == after[replica]["b-m"]
    for app in (first, second):
        assert list(app.router.group("live").targets) == ["c"]
        assert app.router.group("live").scheduler.in_flight == 0  # drained: every slot came back


async def wait_for_async(stub: Stub, expected: list[str], within: float = 20) -> None:
    """Until the replica behind ``stub`` lists ``expected`` as the deployments of ``live``."""
    deadline = asyncio.get_running_loop().time() + within
    while (current := await deployments_of(stub)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"table did not converge to {expected}: still {current}")
        await asyncio.sleep(0.02)


async def test_a_breaker_opened_on_one_replica_opens_on_the_other(
    sim: Simulator, replicas: tuple[RouterApp, RouterApp, Path]
) -> None:
    first, second, _ = replicas
    await set_behaviour(sim, "a-m", outage=True)
    async with grpc.aio.insecure_channel(first.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        for _ in range(3):  # breaker_fail_max
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Chat(chat_request("live"), timeout=10)
    assert first.router.breaker("live", "a").state == "open"
    theirs = second.router.breaker("live", "a")
    await wait_for(lambda: theirs.state == "open", "the other replica to adopt the open breaker")
    assert theirs.name == "router.provider.live/a" and theirs.retry_after() > 0


async def test_a_watched_file_swaps_the_table_whole_without_redis(sim: Simulator, tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(table(sim, "a"), encoding="utf-8")
    settings = settings_for(
        sim, cache_ttl_seconds=0, metering=False, models=str(models), models_watch_seconds=0.05
    )
    app = build(settings, env={})
    await app.start()
    try:
        watcher = app.shared.watcher
        assert watcher is not None and app.shared.table_sync is None
        version = app.registry.snapshot.version
        models.write_text(table(sim, "a", "b"), encoding="utf-8")
        await wait_for(lambda: watcher.reloads == 1, "the file to be reloaded")
        assert [d.name for d in app.registry.snapshot.models["live"].targets] == ["a", "b"]
        assert app.registry.snapshot.version == version + 1
        models.write_text(table(sim, "c", broken=True), encoding="utf-8")
        await wait_for(lambda: bool(watcher.last_error), "the broken file to be refused")
        assert "model 'live': max_concurrency:" in watcher.last_error
        assert [d.name for d in app.registry.snapshot.models["live"].targets] == ["a", "b"]
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            assert (await stub.Chat(chat_request("live"), timeout=10)).route.deployment in {"a", "b"}
    finally:
        await app.stop(0)


async def test_shared_admin_changes_reach_every_replica_and_bad_ones_none(
    sim: Simulator, replicas: tuple[RouterApp, RouterApp, Path]
) -> None:
    first, second, _ = replicas
    async with (
        grpc.aio.insecure_channel(first.address) as ch1,
        grpc.aio.insecure_channel(second.address) as ch2,
    ):
        one, two = router_pb2_grpc.RouterServiceStub(ch1), router_pb2_grpc.RouterServiceStub(ch2)
        secret = router_pb2.Model(name="keyed", endpoint=f"{sim.url}/v1", api_key="sk-literal")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await one.AddModel(router_pb2.AddModelRequest(model=secret), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "api_key_env" in (
            info.value.details() or ""
        )
        await one.AddModel(
            router_pb2.AddModelRequest(model=router_pb2.Model(name="extra", endpoint=f"{sim.url}/v1")),
            timeout=10,
        )
        await wait_for(lambda: "extra" in second.registry.snapshot.models, "the other replica to add it")
        assert (
            "keyed" not in first.registry.snapshot.models and "keyed" not in second.registry.snapshot.models
        )
        removed = await two.RemoveModel(router_pb2.RemoveModelRequest(name="extra"), timeout=10)
        assert removed.removed
        await wait_for(
            lambda: "extra" not in first.registry.snapshot.models, "the first replica to remove it"
        )
