"""Schedules across replicas and restarts: every slot fires exactly once; missed slots follow their policy."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from services.common.errors import InvalidInputError
from services.gateway.schedules import Schedule, ScheduleRunner

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, 9, 0, 30, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Tasks:
    """The submit side: records (schedule, slot, idempotency key); optionally fails once."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, float, str]] = []
        self.fail_next = False

    async def __call__(self, schedule: Schedule, slot: float, key: str) -> str:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("RabbitMQ unreachable")
        self.submitted.append((schedule.id, slot, key))
        return f"task-{len(self.submitted)}"


def every_minute(**kw: object) -> Schedule:
    return Schedule(id="digest", tenant="acme", cron="* * * * *", template="daily-digest", **kw)  # type: ignore[arg-type]


async def test_two_replicas_fire_each_slot_once(redis: Redis, namespace: str, redis_url: str) -> None:
    clock, tasks = Clock(), Tasks()
    other = Redis.from_url(redis_url, decode_responses=True)
    try:
        a = ScheduleRunner(redis, namespace, [every_minute()], tasks, owner="a", clock=clock)
        b = ScheduleRunner(other, namespace, [every_minute()], tasks, owner="b", clock=clock)
        await a.tick()  # registers the schedule at T0: no historical slots
        for _ in range(5):
            clock.now += 60
            await asyncio.gather(a.tick(), b.tick(), a.tick())
        slots = [slot for _, slot, _ in tasks.submitted]
        assert len(slots) == 5 and len(set(slots)) == 5
        assert [datetime.fromtimestamp(s, UTC).strftime("%H:%M") for s in slots] == [
            "09:01",
            "09:02",
            "09:03",
            "09:04",
            "09:05",
        ]
        assert len({key for _, _, key in tasks.submitted}) == 5  # one idempotency key per slot
    finally:
        await other.aclose()


async def test_a_restart_does_not_fire_a_slot_again(redis: Redis, namespace: str) -> None:
    clock, tasks = Clock(), Tasks()
    first = ScheduleRunner(redis, namespace, [every_minute()], tasks, owner="a", clock=clock)
    await first.tick()
    clock.now += 60
    await first.tick()
    restarted = ScheduleRunner(redis, namespace, [every_minute()], tasks, owner="a2", clock=clock)
    await restarted.tick()
    assert len(tasks.submitted) == 1


async def test_missed_slots_are_skipped_or_caught_up_by_policy(redis: Redis, namespace: str) -> None:
    clock = Clock()
    skip_tasks, catch_tasks = Tasks(), Tasks()
    skip = ScheduleRunner(redis, namespace, [every_minute(missed="skip")], skip_tasks, owner="s", clock=clock)
    catch = ScheduleRunner(
        redis,
        namespace + "-c",
        [every_minute(missed="catch_up", max_catch_up=100)],
        catch_tasks,
        owner="c",
        clock=clock,
    )
    await skip.tick()
    await catch.tick()
    clock.now += 10 * 60 + 5  # everything was down for ten minutes
    await skip.tick()
    await catch.tick()
    assert len(catch_tasks.submitted) == 10  # every missed slot, oldest first
    assert [s for _, s, _ in catch_tasks.submitted] == sorted(s for _, s, _ in catch_tasks.submitted)
    assert len(skip_tasks.submitted) == 1  # only the latest slot, which is within the grace period
    assert skip_tasks.submitted[0][1] == max(s for _, s, _ in catch_tasks.submitted)


async def test_a_failed_submit_leaves_the_slot_to_the_next_tick(redis: Redis, namespace: str) -> None:
    clock, tasks = Clock(), Tasks()
    runner = ScheduleRunner(redis, namespace, [every_minute()], tasks, owner="a", clock=clock)
    await runner.tick()
    clock.now += 60
    tasks.fail_next = True
    assert await runner.tick() == []  # the submit failed: logged, slot released
    clock.now += 1
    fired = await runner.tick()
    assert len(fired) == 1 and len(tasks.submitted) == 1


async def test_intervals_are_aligned_so_replicas_agree(redis: Redis, namespace: str) -> None:
    schedule = Schedule(id="poll", tenant="acme", every_s=300, workflow={"name": "w", "steps": []})
    assert schedule.slots(1000.0, 2000.0, 10) == [1200.0, 1500.0, 1800.0]
    clock, tasks = Clock(), Tasks()
    runner = ScheduleRunner(redis, namespace, [schedule], tasks, owner="a", clock=clock)
    await runner.tick()
    clock.now += 3600
    await runner.tick()
    assert Counter(sid for sid, _, _ in tasks.submitted) == {"poll": 1}  # skip policy: the latest only


def test_cron_respects_the_schedule_time_zone() -> None:
    paris = Schedule(id="p", tenant="acme", cron="0 9 * * *", timezone="Europe/Paris", template="t")
    (slot,) = paris.slots(T0 - 86400, T0 + 86400, 5)[:1]
    assert datetime.fromtimestamp(slot, UTC).hour == 8  # 09:00 in Paris is 08:00 UTC in March (CET)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"cron": "nonsense"}, "not a cron expression"),
        ({"cron": None}, "exactly one of cron and every_s"),
        ({"timezone": "Mars/Olympus"}, "unknown zone"),
        ({"template": None}, "exactly one of template and workflow"),
        ({"every_s": 0.1, "cron": None}, "every_s"),
    ],
)
def test_bad_schedules_are_refused(kwargs: dict[str, object], fragment: str) -> None:
    base: dict[str, object] = {"id": "x", "tenant": "acme", "cron": "* * * * *", "template": "t"}
    with pytest.raises(InvalidInputError, match=fragment):
        Schedule(**{**base, **kwargs})  # type: ignore[arg-type]
