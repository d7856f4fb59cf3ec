"""Schedules: workflows started on a cron expression or an interval, exactly once per slot.

Every gateway replica runs the same schedules; each slot is claimed in Redis with a lease before its task is
submitted and marked done after, so two replicas never both start it, a replica that dies between claim and submit
leaves the slot to another one after the lease, and the submit carries an idempotency key made of the schedule and
the slot, so even that retry cannot start the task twice. Slots missed while everything was down follow the
schedule's explicit policy: ``skip`` them (only a slot within ``grace_s`` of now still fires) or ``catch_up`` (each
missed slot fires, oldest first, at most ``max_catch_up``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from redis.asyncio import Redis

from services.common.errors import InvalidInputError
from services.common.taskstore import check_tenant

log = logging.getLogger(__name__)

Submit = Callable[["Schedule", float, str], Awaitable[str]]
"""submit(schedule, slot_epoch_s, idempotency_key) -> task id."""

# Claim a slot unless it is done or leased: KEYS[1] the slot key; ARGV: owner, lease ms.
# Returns 'claimed', or the slot's state: 'done:<task id>' or 'claimed:<owner>' (another replica holds it).
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], 'claimed:' .. ARGV[1], 'PX', ARGV[2])
return 'claimed'
"""

# Move the mark forward only: KEYS[1] the mark; ARGV[1] a slot time.
_ADVANCE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


@dataclass(frozen=True)
class Schedule:
    """When (``cron`` in ``timezone``, or ``every_s``) to run what (a template or workflow) for which tenant."""

    id: str
    tenant: str
    cron: str | None = None
    every_s: float | None = None
    timezone: str = "UTC"
    template: str | None = None
    workflow: dict[str, Any] | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    missed: Literal["skip", "catch_up"] = "skip"
    grace_s: float = 60.0
    max_catch_up: int = 10
    # Where to post the task's result when it ends: {"channel": <configured channel>, "conversation": <id>}.
    deliver_to: dict[str, str] | None = None

    def __post_init__(self) -> None:
        check_tenant(self.tenant)
        if (self.cron is None) == (self.every_s is None):
            raise InvalidInputError(
                f"schedule {self.id!r}: give exactly one of cron and every_s", schedule=self.id
            )
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise InvalidInputError(f"schedule {self.id!r}: cron: {self.cron!r} is not a cron expression")
        if self.every_s is not None and not 1 <= self.every_s <= 366 * 86400:
            raise InvalidInputError(f"schedule {self.id!r}: every_s: between 1 s and a year")
        if (self.template is None) == (self.workflow is None):
            raise InvalidInputError(f"schedule {self.id!r}: give exactly one of template and workflow")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInputError(
                f"schedule {self.id!r}: timezone: unknown zone {self.timezone!r}"
            ) from None
        if self.missed not in ("skip", "catch_up") or not 1 <= self.max_catch_up <= 1000 or self.grace_s < 0:
            raise InvalidInputError(f"schedule {self.id!r}: missed is skip or catch_up; max_catch_up 1-1000")
        if self.deliver_to is not None and (
            set(self.deliver_to) != {"channel", "conversation"}
            or not all(isinstance(v, str) and v for v in self.deliver_to.values())
        ):
            raise InvalidInputError(
                f"schedule {self.id!r}: deliver_to: {{channel, conversation}}, both strings"
            )

    def slots(self, after: float, until: float, limit: int) -> list[float]:
        """Slot times (epoch seconds) in (after, until], oldest first, at most ``limit``."""
        out: list[float] = []
        if self.every_s is not None:
            # Interval slots are aligned to the epoch, so every replica computes the same ones.
            k = int(after // self.every_s) + 1
            while k * self.every_s <= until and len(out) < limit:
                out.append(k * self.every_s)
                k += 1
            return out
        assert self.cron is not None
        zone = ZoneInfo(self.timezone)
        it = croniter(self.cron, datetime.fromtimestamp(after, UTC).astimezone(zone))
        while len(out) < limit:
            nxt = it.get_next(datetime).timestamp()
            if nxt > until:
                break
            out.append(nxt)
        return out


class ScheduleRunner:
    """Fires due slots of every schedule; run one per gateway replica."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        schedules: Sequence[Schedule],
        submit: Submit,
        *,
        owner: str,
        tick_s: float = 1.0,
        lease_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        ids = [s.id for s in schedules]
        if len(set(ids)) != len(ids):
            raise InvalidInputError("schedule ids must be unique")
        self._redis = redis
        self._prefix = f"{namespace}:schedule:"
        self._schedules = list(schedules)
        self._submit = submit
        self._owner = owner
        self._tick_s = tick_s
        self._lease_ms = int(lease_s * 1000)
        self._clock = clock
        self._claim = redis.register_script(_CLAIM)
        self._advance_script = redis.register_script(_ADVANCE)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="schedules")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def tick(self) -> list[tuple[str, float, str]]:
        """Fire what is due now: (schedule id, slot, task id) for each slot this replica started."""
        fired = []
        now = self._clock()
        for schedule in self._schedules:
            try:
                fired += await self._due(schedule, now)
            except Exception:
                log.exception("schedule tick failed", extra={"schedule": schedule.id})
        return fired

    async def _due(self, schedule: Schedule, now: float) -> list[tuple[str, float, str]]:
        mark = f"{self._prefix}{schedule.id}:mark"
        # The mark is the last slot handled by anyone; a new schedule starts from now (no historical slots).
        await self._redis.set(mark, repr(now), nx=True)
        after = float(await self._redis.get(mark) or now)
        limit = schedule.max_catch_up if schedule.missed == "catch_up" else 1000
        slots = schedule.slots(after, now, limit)
        if not slots:
            return []
        if schedule.missed == "skip":
            latest = slots[-1]
            live = now - latest <= schedule.grace_s
            skipped = slots[:-1] if live else slots
            if skipped:
                log.info("schedule slots skipped", extra={"schedule": schedule.id, "skipped": len(skipped)})
                await self._advance(mark, skipped[-1])
            slots = [latest] if live else []
        fired = []
        for slot in slots:
            state, task_id = await self._fire(schedule, slot)
            if state == "busy":
                break  # another replica is starting this slot: the mark waits for it, so no slot is lost
            if state == "fired":
                fired.append((schedule.id, slot, task_id))
            await self._advance(mark, slot)
        return fired

    async def _fire(self, schedule: Schedule, slot: float) -> tuple[str, str]:
        """('fired', task id), ('done', task id) when another replica started it, or ('busy', '')."""
        key = f"{self._prefix}{schedule.id}:slot:{int(slot)}"
        state = str(await self._claim(keys=[key], args=[self._owner, self._lease_ms]))
        if state.startswith("done:"):
            return "done", state.removeprefix("done:")
        if state != "claimed":
            return "busy", ""
        idempotency_key = f"schedule-{schedule.id}-{int(slot)}"
        try:
            task_id = await self._submit(schedule, slot, idempotency_key)
        except Exception:
            await self._redis.delete(key)  # let this or another replica try the slot again
            raise
        await self._redis.set(key, f"done:{task_id}", ex=7 * 86400)
        log.info("schedule fired", extra={"schedule": schedule.id, "slot": slot, "task_id": task_id})
        return "fired", task_id

    async def _advance(self, mark: str, slot: float) -> None:
        await self._advance_script(
            keys=[mark], args=[repr(slot)]
        )  # only forward: a slow replica never moves it back

    async def _loop(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self._tick_s)
