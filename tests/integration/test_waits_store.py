"""The wait store against the real Redis: parking, signals that wake, the waker's leases, and refusals."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from services.common.envelope import now_ms
from services.common.taskstore import TaskRecord, TaskStore
from services.common.waits import MAX_SIGNALS, WaitStore

pytestmark = pytest.mark.integration

TENANT = "acme"


@pytest.fixture
def store(redis: Redis, namespace: str) -> TaskStore:
    return TaskStore(redis, namespace, result_ttl_s=600)


async def running_task(store: TaskStore, task_id: str) -> None:
    await store.create(TaskRecord(id=task_id, tenant=TENANT, status="queued"), workflow_json="{}")
    claim = await store.claim(TENANT, task_id, attempt=1, owner="w1")
    assert claim.outcome == "claimed"


async def test_a_parked_task_is_due_at_its_time_and_leased_to_one_waker(store: TaskStore) -> None:
    waits = WaitStore(store)
    await running_task(store, "t1")
    await running_task(store, "t2")
    assert await waits.park(TENANT, "t1", b"envelope-1", wake_at_ms=now_ms() - 1) == "running"
    assert await waits.park(TENANT, "t2", b"envelope-2", wake_at_ms=now_ms() + 60_000) == "running"
    record = await store.get(TENANT, "t1")
    assert record is not None and record.status == "waiting"

    due = await waits.due(lease_ms=60_000)
    assert [m for m, _ in due] == ["acme/t1"]
    assert await waits.due() == []  # leased: a second waker does not take it
    parked = await waits.parked("acme/t1")
    assert (parked.tenant, parked.task_id, parked.envelope) == (TENANT, "t1", b"envelope-1")

    member, lease = due[0]
    await waits.unpark(member, lease)
    assert await store.redis.zscore(f"{store.namespace}:waiting", member) is None


async def test_a_signal_wakes_a_parked_task_and_is_kept_for_one_not_yet_waiting(store: TaskStore) -> None:
    waits = WaitStore(store)
    await running_task(store, "t1")
    await waits.park(TENANT, "t1", b"e", wake_at_ms=None, signals=("go",))
    assert await waits.due() == []  # waits for a signal only
    assert await waits.signal(TENANT, "t1", "go", {"ok": True}) == "waiting"
    assert [m for m, _ in await waits.due()] == ["acme/t1"]
    assert await waits.signals(TENANT, "t1") == {"go": {"ok": True}}

    # A signal stored first: parking for it makes the task due at once.
    await running_task(store, "t2")
    await waits.signal(TENANT, "t2", "go", 1)
    await waits.park(TENANT, "t2", b"e", wake_at_ms=now_ms() + 60_000, signals=("go",))
    assert [m for m, _ in await waits.due()] == ["acme/t2"]


async def test_a_task_parked_again_before_unpark_stays_parked(store: TaskStore) -> None:
    waits = WaitStore(store)
    await running_task(store, "t1")
    await waits.park(TENANT, "t1", b"e", wake_at_ms=now_ms() - 1)
    [(member, lease)] = await waits.due()
    await waits.park(TENANT, "t1", b"e", wake_at_ms=now_ms() + 60_000)  # resumed and parked again
    await waits.unpark(member, lease)
    assert await store.redis.zscore(f"{store.namespace}:waiting", member) is not None


async def test_ended_and_unknown_tasks_are_refused(store: TaskStore) -> None:
    waits = WaitStore(store)
    assert await waits.signal(TENANT, "nope", "go", 1) == ""
    assert await waits.park(TENANT, "nope", b"e", wake_at_ms=None) == ""
    await running_task(store, "t1")
    await waits.park(TENANT, "t1", b"e", wake_at_ms=None)
    assert await store.request_cancel(TENANT, "t1") == "cancelled"
    assert await waits.signal(TENANT, "t1", "go", 1) == "cancelled"
    parked = await waits.parked("acme/t1")
    assert parked.envelope is None  # the waker drops it instead of re-publishing


async def test_a_task_holds_a_bounded_number_of_signal_names(store: TaskStore) -> None:
    waits = WaitStore(store)
    await running_task(store, "t1")
    for i in range(MAX_SIGNALS):
        assert await waits.signal(TENANT, "t1", f"s{i}", i) == "running"
    assert await waits.signal(TENANT, "t1", "one_more", 1) == "too_many"
    assert await waits.signal(TENANT, "t1", "s0", "again") == "running"  # a known name is replaced
    assert (await waits.signals(TENANT, "t1"))["s0"] == "again"


async def test_a_task_flagged_for_cancellation_while_running_is_due_at_once_when_parked(
    store: TaskStore,
) -> None:
    waits = WaitStore(store)
    await running_task(store, "t1")
    assert await store.request_cancel(TENANT, "t1") == "running"  # flagged only: it is running
    await waits.park(TENANT, "t1", b"e", wake_at_ms=now_ms() + 3_600_000)
    assert [m for m, _ in await waits.due()] == ["acme/t1"]
    claim = await store.claim(TENANT, "t1", attempt=1, owner="w2")
    assert claim.outcome == "cancel_requested"


async def test_signal_payloads_are_sealed_at_rest_with_master_keys(redis: Redis, namespace: str) -> None:
    from services.common.encryption import Keyring, MasterKeys, Sealer

    sealer = Sealer(Keyring(redis, namespace, MasterKeys({"k": MasterKeys.generate()}, "k")))
    sealed_store = TaskStore(redis, namespace, result_ttl_s=600, sealer=sealer)
    await running_task(sealed_store, "t-sealed")
    waits = WaitStore(sealed_store)
    await waits.signal("acme", "t-sealed", "approval", {"approved_by": "Grace Hopper", "budget": 1200})
    raw = await redis.hgetall(f"{sealed_store.task_key('acme', 't-sealed')}:signals")
    assert raw and "Grace Hopper" not in str(raw) and str(raw["approval"]).startswith("enc:v1:")
    assert await waits.signals("acme", "t-sealed") == {
        "approval": {"approved_by": "Grace Hopper", "budget": 1200}
    }
