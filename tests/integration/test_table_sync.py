"""One model table across router replicas: changes anywhere reach everywhere; bad changes reach nowhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from services.common.encryption import Keyring, MasterKeys, Sealer
from services.common.errors import InvalidInputError
from services.router.registry import ModelConfigError, Registry, SpecContext, build_spec
from services.router.table_sync import TableSync

pytestmark = pytest.mark.integration
CTX = SpecContext(simulator_url="http://127.0.0.1:9")


def registry() -> Registry:
    return Registry([build_spec({"name": "base", "endpoint": "http://127.0.0.1:9/v1"}, CTX)], ctx=CTX)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def replicas(
    redis: Redis, namespace: str, redis_url: str
) -> AsyncIterator[list[tuple[Registry, TableSync]]]:
    out, clients = [], []
    sealer = Sealer(Keyring(redis, namespace, MasterKeys({"m": MasterKeys.generate()}, "m")))
    for _ in range(2):
        client = Redis.from_url(redis_url, decode_responses=True)
        clients.append(client)
        reg = registry()
        sync = TableSync(reg, client, namespace, sealer=sealer)
        await sync.start()
        out.append((reg, sync))
    yield out
    for _, sync in out:
        await sync.stop()
    for client in clients:
        await client.aclose()


async def test_a_change_on_one_replica_reaches_the_other_and_old_snapshots_stay_whole(
    replicas: list[tuple[Registry, TableSync]],
) -> None:
    (_, a), (reg_b, b) = replicas
    assert a.version == b.version == 1
    held = reg_b.snapshot  # a request in flight on b holds this table
    await a.change(
        lambda r: r.add({"name": "extra", "endpoint": "http://127.0.0.1:9/v1", "max_concurrency": 3})
    )
    await wait_for(lambda: "extra" in reg_b.snapshot, "replica b to install the new table")
    assert reg_b.snapshot.require("extra").max_concurrency == 3 and b.version == 2
    assert "extra" not in held  # the in-flight request finishes on the table it started with


async def test_concurrent_changes_on_two_replicas_both_land(
    replicas: list[tuple[Registry, TableSync]],
) -> None:
    (reg_a, a), (reg_b, b) = replicas
    await asyncio.gather(
        *(a.change(lambda r, i=i: r.add({"name": f"a{i}"})) for i in range(5)),
        *(b.change(lambda r, i=i: r.add({"name": f"b{i}"})) for i in range(5)),
    )
    want = {"base", *(f"a{i}" for i in range(5)), *(f"b{i}" for i in range(5))}
    await wait_for(
        lambda: set(reg_a.snapshot.models) == want == set(reg_b.snapshot.models), "both to converge"
    )
    assert a.version == b.version == 11


async def test_a_bad_change_changes_nothing_anywhere(replicas: list[tuple[Registry, TableSync]]) -> None:
    (reg_a, a), (reg_b, _) = replicas
    with pytest.raises(ModelConfigError, match="unknown model 'ghost'"):
        await a.change(lambda r: r.add({"name": "bad", "fallback_models": ["ghost"]}))
    await asyncio.sleep(0.05)
    assert a.version == 1 and set(reg_a.snapshot.models) == {"base"} == set(reg_b.snapshot.models)


async def test_literal_keys_are_sealed_in_redis(
    replicas: list[tuple[Registry, TableSync]], redis: Redis, namespace: str
) -> None:
    (_, a), (reg_b, _) = replicas
    await a.change(lambda r: r.add({"name": "keyed", "api_key": "sk-live-very-secret"}))
    await wait_for(lambda: "keyed" in reg_b.snapshot, "b to install")
    assert reg_b.snapshot.require("keyed").credential == "sk-live-very-secret"
    assert "very-secret" not in (await redis.hget(f"{namespace}:models:table", "doc") or "")
    plain = TableSync(registry(), redis, namespace + "-plain")
    await plain.start()
    try:
        with pytest.raises(InvalidInputError, match="literal api_key cannot be shared"):
            await plain.change(lambda r: r.add({"name": "keyed", "api_key": "sk-x"}))
    finally:
        await plain.stop()


async def test_reloading_the_same_file_on_every_replica_writes_once(
    replicas: list[tuple[Registry, TableSync]],
) -> None:
    (reg_a, a), (_, b) = replicas
    specs = [*reg_a.snapshot.models.values(), build_spec({"name": "from-file"}, CTX)]
    assert await a.replace(specs) is True
    assert await b.replace(specs) is False  # b's watcher saw the same file: nothing to do
    assert a.version == 2


async def test_a_late_replica_adopts_the_shared_table(
    replicas: list[tuple[Registry, TableSync]], redis: Redis, namespace: str
) -> None:
    (_, a), _ = replicas
    await a.change(lambda r: r.add({"name": "later"}))
    reg = Registry([], ctx=CTX)
    late = TableSync(reg, redis, namespace, sealer=None)
    await late.start()
    try:
        assert "later" in reg.snapshot and late.version == 2
    finally:
        await late.stop()
