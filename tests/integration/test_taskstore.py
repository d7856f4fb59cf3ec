"""The task store against the real Redis: the worker's claim and the "done" signal long-polls block on."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.asyncio import Redis

from services.common.taskstore import TaskRecord, TaskStore

TENANT = "tenant-a"


@pytest.fixture
def store(redis: Redis, namespace: str) -> TaskStore:
    return TaskStore(redis, namespace, result_ttl_s=600)


async def _queued(store: TaskStore, tenant: str = TENANT) -> str:
    task_id = uuid.uuid4().hex
    await store.create(TaskRecord(id=task_id, tenant=tenant, status="queued", name="t"), workflow_json="{}")
    return task_id


async def _event_types(store: TaskStore, task_id: str) -> list[str]:
    return [e.type for e in await store.events(TENANT, task_id)]


# -- claim ---------------------------------------------------------------------------------------------


async def test_claim_moves_a_queued_task_to_running_in_one_step(store: TaskStore) -> None:
    task_id = await _queued(store)
    claim = await store.claim(TENANT, task_id, attempt=2, data={"attempt": 2, "max_attempts": 3})
    assert claim.claimed and claim.outcome == "claimed"
    assert claim.status == "queued"
    assert claim.steps == {}
    record = await store.get(TENANT, task_id)
    assert record is not None and record.status == "running" and record.attempt == 2
    events = await store.events(TENANT, task_id)
    assert [e.type for e in events] == ["task.queued", "task.started"]
    assert events[-1].status == "running" and events[-1].data == {"attempt": 2, "max_attempts": 3}


async def test_claim_returns_the_checkpointed_steps(store: TaskStore) -> None:
    task_id = await _queued(store)
    await store.checkpoint(TENANT, task_id, "one", {"status": "succeeded", "output": {"n": 1}})
    await store.checkpoint(TENANT, task_id, "two", {"status": "failed", "error": {"code": "x"}})
    claim = await store.claim(TENANT, task_id, attempt=1)
    assert claim.claimed
    assert claim.steps == {
        "one": {"status": "succeeded", "output": {"n": 1}},
        "two": {"status": "failed", "error": {"code": "x"}},
    }


async def test_claim_announces_the_first_step(store: TaskStore) -> None:
    task_id = await _queued(store)
    claim = await store.claim(
        TENANT, task_id, attempt=1, first_step=("one", {"type": "llm_call", "index": 0})
    )
    assert claim.claimed and claim.step_started == "one"
    events = await store.events(TENANT, task_id)
    assert [(e.type, e.step_id) for e in events] == [
        ("task.queued", ""),
        ("task.started", ""),
        ("step.started", "one"),
    ]
    assert events[-1].data == {"type": "llm_call", "index": 0}


async def test_claim_does_not_announce_a_step_already_checkpointed(store: TaskStore) -> None:
    task_id = await _queued(store)
    await store.checkpoint(TENANT, task_id, "one", {"status": "succeeded", "output": 1})
    claim = await store.claim(TENANT, task_id, attempt=2, first_step=("one", {}))
    assert claim.claimed and claim.step_started == ""
    assert "step.started" not in await _event_types(store, task_id)


async def test_a_refused_claim_announces_nothing(store: TaskStore) -> None:
    task_id = await _queued(store)
    claim = await store.claim(TENANT, task_id, attempt=1, refuse=True, first_step=("one", {}))
    assert claim.outcome == "refused" and claim.step_started == ""
    assert await _event_types(store, task_id) == ["task.queued"]


async def test_claim_takes_a_running_task_again_after_a_redelivery(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1)).claimed
    again = await store.claim(TENANT, task_id, attempt=1)
    assert again.claimed and again.status == "running"
    assert (await _event_types(store, task_id)).count("task.started") == 2


async def test_claim_refuses_an_ended_task_and_changes_nothing(store: TaskStore) -> None:
    task_id = await _queued(store)
    await store.transition(TENANT, task_id, "succeeded", "task.succeeded", fields={"result": "1"})
    claim = await store.claim(TENANT, task_id, attempt=1)
    assert (claim.outcome, claim.status, claim.claimed) == ("ended", "succeeded", False)
    record = await store.get(TENANT, task_id)
    assert record is not None and record.status == "succeeded"
    assert "task.started" not in await _event_types(store, task_id)


async def test_claim_refuses_a_cancelled_task(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert await store.request_cancel(TENANT, task_id) == "cancelled"
    claim = await store.claim(TENANT, task_id, attempt=1)
    assert (claim.outcome, claim.status) == ("ended", "cancelled")


async def test_claim_reports_a_cancel_request_without_starting_the_task(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1)).claimed
    assert await store.request_cancel(TENANT, task_id) == "running"  # flagged, still running
    claim = await store.claim(TENANT, task_id, attempt=2)
    assert (claim.outcome, claim.status) == ("cancel_requested", "running")
    record = await store.get(TENANT, task_id)
    assert record is not None and record.attempt == 1
    assert (await _event_types(store, task_id)).count("task.started") == 1


async def test_a_refused_claim_leaves_the_task_as_it_was(store: TaskStore) -> None:
    task_id = await _queued(store)
    claim = await store.claim(TENANT, task_id, attempt=1, refuse=True)
    assert (claim.outcome, claim.status) == ("refused", "queued")
    record = await store.get(TENANT, task_id)
    assert record is not None and record.status == "queued"
    assert await _event_types(store, task_id) == ["task.queued"]


async def test_claim_of_a_missing_task(store: TaskStore) -> None:
    claim = await store.claim(TENANT, "nosuchtask", attempt=1)
    assert (claim.outcome, claim.status) == ("missing", "")


async def test_claim_is_tenant_scoped(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim("tenant-b", task_id, attempt=1)).outcome == "missing"
    record = await store.get(TENANT, task_id)
    assert record is not None and record.status == "queued"


# -- the "done" signal -----------------------------------------------------------------------------------


async def test_wait_ended_answers_at_once_without_blocking(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert await store.wait_ended(TENANT, task_id) is False
    await store.transition(TENANT, task_id, "failed", "task.failed")
    assert await store.wait_ended(TENANT, task_id) is True


async def test_wait_ended_wakes_once_when_the_task_ends_not_on_its_progress(store: TaskStore) -> None:
    task_id = await _queued(store)
    waiter = asyncio.create_task(store.wait_ended(TENANT, task_id, 5000))
    await asyncio.sleep(0.05)
    assert (await store.claim(TENANT, task_id, attempt=1)).claimed
    await store.append_event(TENANT, task_id, "step.started", step_id="one")
    await store.checkpoint(TENANT, task_id, "one", {"status": "succeeded", "output": 1})
    await asyncio.sleep(0.05)
    assert not waiter.done(), "progress events must not wake a waiter"
    await store.transition(TENANT, task_id, "succeeded", "task.succeeded", fields={"result": "1"})
    assert await asyncio.wait_for(waiter, 2) is True


async def test_wait_ended_times_out_for_a_task_that_keeps_running(store: TaskStore) -> None:
    task_id = await _queued(store)
    began = time.monotonic()
    assert await store.wait_ended(TENANT, task_id, 200) is False
    assert 0.15 <= time.monotonic() - began < 2


async def test_cancelling_a_queued_task_signals_done(store: TaskStore) -> None:
    task_id = await _queued(store)
    waiter = asyncio.create_task(store.wait_ended(TENANT, task_id, 5000))
    await asyncio.sleep(0.05)
    assert await store.request_cancel(TENANT, task_id) == "cancelled"
    assert await asyncio.wait_for(waiter, 2) is True


async def test_flagging_a_running_task_for_cancellation_is_not_done(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1)).claimed
    assert await store.request_cancel(TENANT, task_id) == "running"
    assert await store.wait_ended(TENANT, task_id) is False


async def test_the_done_signal_expires_with_the_task(store: TaskStore, redis: Redis, namespace: str) -> None:
    task_id = await _queued(store)
    await store.transition(TENANT, task_id, "succeeded", "task.succeeded", fields={"result": "1"})
    base = f"{namespace}:{TENANT}:task:{task_id}"
    for key in (base, f"{base}:events", f"{base}:done"):
        assert 0 < await redis.ttl(key) <= 600, key


async def test_an_ended_task_cannot_be_moved_and_signals_done_once(
    store: TaskStore, redis: Redis, namespace: str
) -> None:
    task_id = await _queued(store)
    assert (await store.transition(TENANT, task_id, "succeeded", "task.succeeded"))[0] is True
    assert await store.transition(TENANT, task_id, "failed", "task.failed") == (False, "succeeded")
    assert await store.request_cancel(TENANT, task_id) == "succeeded"
    assert await redis.xlen(f"{namespace}:{TENANT}:task:{task_id}:done") == 1


async def test_the_done_signal_is_tenant_scoped(store: TaskStore) -> None:
    task_id = await _queued(store)
    await store.transition(TENANT, task_id, "succeeded", "task.succeeded")
    assert await store.wait_ended("tenant-b", task_id) is False


# -- the last step's checkpoint, stored with the outcome ----------------------------------------------------


async def test_a_transition_can_carry_the_last_checkpoint(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1)).claimed
    state = {"status": "succeeded", "type": "llm_call", "output": {"content": "hi"}}
    changed, _ = await store.transition(
        TENANT,
        task_id,
        "succeeded",
        "task.succeeded",
        fields={"result": '{"content": "hi"}'},
        checkpoint=("one", state),
    )
    assert changed
    record = await store.get(TENANT, task_id, with_steps=True)
    assert record is not None and record.status == "succeeded"
    assert record.steps == {"one": state}
    events = await store.events(TENANT, task_id)
    assert [(e.type, e.step_id) for e in events][-2:] == [("step.completed", "one"), ("task.succeeded", "")]
    assert events[-2].data == {"content": "hi"}


async def test_an_ended_task_takes_no_late_checkpoint(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert await store.request_cancel(TENANT, task_id) == "cancelled"
    state = {"status": "succeeded", "output": 1}
    assert await store.transition(
        TENANT, task_id, "succeeded", "task.succeeded", checkpoint=("one", state)
    ) == (False, "cancelled")
    assert await store.steps(TENANT, task_id) == {}
    assert "step.completed" not in await _event_types(store, task_id)


async def test_wait_then_get_returns_the_outcome_in_the_same_round_trip(store: TaskStore) -> None:
    task_id = await _queued(store)
    waiter = asyncio.create_task(store.wait_then_get(TENANT, task_id, 5000))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await store.transition(TENANT, task_id, "succeeded", "task.succeeded", fields={"result": '"ok"'})
    ended, record = await asyncio.wait_for(waiter, 2)
    assert ended is True
    assert record is not None and record.status == "succeeded" and record.result == "ok"


async def test_wait_then_get_after_a_timeout_returns_the_task_as_it_is(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1)).claimed
    ended, record = await store.wait_then_get(TENANT, task_id, 100)
    assert ended is False
    assert record is not None and record.status == "running"
    assert await store.wait_then_get("tenant-b", task_id, 10) == (False, None)


# -- leases: a task runs on one worker at a time ----------------------------------------------------------


async def test_claim_refuses_a_task_running_under_another_workers_live_lease(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-a", lease_ms=30_000)).claimed
    other = await store.claim(TENANT, task_id, attempt=2, owner="worker-b", lease_ms=30_000)
    assert (other.outcome, other.status, other.claimed) == ("leased", "running", False)
    record = await store.get(TENANT, task_id)
    assert record is not None and record.status == "running" and record.attempt == 1
    assert (await _event_types(store, task_id)).count("task.started") == 1
    # The owner itself may take it again (its own redelivery after the run ended unfinished).
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-a", lease_ms=30_000)).claimed


async def test_a_lease_that_ran_out_can_be_taken_over(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-a", lease_ms=100)).claimed
    await asyncio.sleep(0.2)
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-b", lease_ms=30_000)).claimed
    assert await store.renew_lease(TENANT, task_id, "worker-a", 30_000) is False
    assert await store.renew_lease(TENANT, task_id, "worker-b", 30_000) is True


async def test_renewing_keeps_the_lease(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-a", lease_ms=300)).claimed
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await store.renew_lease(TENANT, task_id, "worker-a", 300) is True
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-b")).outcome == "leased"


async def test_a_released_lease_lets_another_worker_claim_at_once(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-a", lease_ms=30_000)).claimed
    assert await store.release_lease(TENANT, task_id, "worker-b") is False
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-b")).outcome == "leased"
    assert await store.release_lease(TENANT, task_id, "worker-a") is True
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-b")).claimed


async def test_an_ended_task_keeps_no_renewable_lease(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-a", lease_ms=30_000)).claimed
    await store.transition(TENANT, task_id, "succeeded", "task.succeeded", fields={"result": "1"})
    assert await store.renew_lease(TENANT, task_id, "worker-a", 30_000) is False
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-b")).outcome == "ended"


async def test_a_retrying_task_is_not_held_by_the_lease_of_its_last_run(store: TaskStore) -> None:
    task_id = await _queued(store)
    assert (await store.claim(TENANT, task_id, attempt=1, owner="worker-a", lease_ms=30_000)).claimed
    await store.transition(TENANT, task_id, "retrying", "task.retrying")
    assert (await store.claim(TENANT, task_id, attempt=2, owner="worker-b")).claimed


async def test_cancelling_a_queued_task_expires_it_like_any_ended_task(
    store: TaskStore, redis: Redis, namespace: str
) -> None:
    task_id = await _queued(store)
    await store.checkpoint(TENANT, task_id, "one", {"status": "succeeded", "output": 1})
    assert await store.request_cancel(TENANT, task_id) == "cancelled"
    base = f"{namespace}:{TENANT}:task:{task_id}"
    for key in (base, f"{base}:events", f"{base}:steps", f"{base}:done"):
        assert 0 < await redis.ttl(key) <= 600, key
