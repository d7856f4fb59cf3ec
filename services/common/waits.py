"""Parked tasks and signals in Redis: what lets a workflow wait hours without holding a RabbitMQ delivery.

A task whose workflow reaches a ``wait`` step is *parked*: its status becomes ``waiting``, its envelope is
kept in its record, and it joins the sorted set ``{ns}:waiting`` scored by when it must wake (``+inf`` for a
signal without a timeout). The executor's waker re-publishes due tasks; a signal stored for a parked task
moves its score to now. A signal is kept in ``{task}:signals`` whether or not anything waits for it yet, so
one that arrives before its wait step is seen when the step is reached.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from services.common.encryption import TEXT_PREFIX, DecryptionError
from services.common.envelope import now_ms
from services.common.taskstore import TaskStore, event_json

SIGNAL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
MAX_SIGNALS = 64

# Parks a running task: status waiting, envelope kept, event, and its place in the waiting set; wakes it at
# once (score now) if a signal it waits for (ARGV[6..]) is already there, or if cancellation was asked for
# while it ran (the claim of the woken delivery then cancels it). Refuses an ended or missing task.
_PARK = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return cur end
local score = ARGV[3]
if redis.call('HGET', KEYS[1], 'cancel') == '1' then score = ARGV[1] end
for i = 6, #ARGV do
  if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1 then score = ARGV[1] end
end
redis.call('HSET', KEYS[1], 'status', 'waiting', 'updated_ms', ARGV[1], 'parked_envelope', ARGV[2])
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until_ms')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[4])
redis.call('ZADD', KEYS[4], score, ARGV[5])
return cur
"""

# Stores a signal for a task that has not ended, with its event; a parked task is woken (score now). A task
# keeps at most ARGV[7] signal names ("too_many" beyond).
_SIGNAL = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if cur == 'succeeded' or cur == 'failed' or cur == 'cancelled' then return cur end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 and redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[7]) then
  return 'too_many'
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[3])
redis.call('ZADD', KEYS[4], 'XX', ARGV[4], ARGV[6])
return cur
"""

# Takes up to ARGV[2] due members for one waker: each one's score moves to ARGV[3] (a lease), so a waker
# that dies before re-publishing leaves it to be taken again then, never lost.
_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[3], member) end
return due
"""

# Removes a member once re-published, unless it was parked again meanwhile (its score is no longer the lease).
_UNPARK = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


@dataclass(frozen=True)
class Parked:
    """A due task: who it is and the envelope to re-publish (None if its record is gone or ended)."""

    member: str
    tenant: str
    task_id: str
    envelope: bytes | None


class WaitStore:
    """Parking, waking and signalling tasks, beside the task store (same keys, same namespace)."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store
        redis = store.redis  # the same client and pool as the task store
        self._redis = redis
        self._set = f"{store.namespace}:waiting"
        self._park = redis.register_script(_PARK)
        self._signal = redis.register_script(_SIGNAL)
        self._due = redis.register_script(_DUE)
        self._unpark = redis.register_script(_UNPARK)

    def _keys(self, tenant: str, task_id: str) -> list[str]:
        base = self._store.task_key(tenant, task_id)
        return [base, f"{base}:events", f"{base}:signals", self._set]

    async def park(
        self,
        tenant: str,
        task_id: str,
        envelope: bytes,
        *,
        wake_at_ms: int | None,
        signals: tuple[str, ...] = (),
        data: Any = None,
    ) -> str:
        """Park a task until ``wake_at_ms`` (None: until a signal); returns its status before ("" if none)."""
        event = event_json(task_id, "task.waiting", status="waiting", data=data)
        score = "+inf" if wake_at_ms is None else str(wake_at_ms)
        text = base64.b64encode(envelope).decode("ascii")
        reply = await self._park(
            keys=self._keys(tenant, task_id),
            args=[str(now_ms()), text, score, event, _member(tenant, task_id), *signals],
        )
        return str(reply)

    async def signal(self, tenant: str, task_id: str, name: str, payload: Any) -> str:
        """Store a signal and wake the task if it is parked; returns the task's status ("" if none,
        "too_many" if the task already holds MAX_SIGNALS other names)."""
        event = event_json(task_id, "task.signal", data={"name": name})
        where = f"task:{task_id}:signal:{name}"
        body = json.dumps(payload, ensure_ascii=False)
        if (
            self._store.sealer is not None
        ):  # encryption at rest: the payload may be as sensitive as the inputs
            body = await self._store.sealer.seal_text(tenant, body, where)
        reply = await self._signal(
            keys=self._keys(tenant, task_id),
            args=[
                name,
                body,
                event,
                str(now_ms()),
                str(self._store.result_ttl_s),
                _member(tenant, task_id),
                str(MAX_SIGNALS),
            ],
        )
        return str(reply)

    async def signals(self, tenant: str, task_id: str) -> dict[str, Any]:
        """Every signal stored for a task, by name."""
        raw: dict[str, str] = await self._redis.hgetall(self._keys(tenant, task_id)[2])  # type: ignore[misc]
        out: dict[str, Any] = {}
        for name, value in raw.items():
            if value.startswith(TEXT_PREFIX):
                if self._store.sealer is None:
                    raise DecryptionError(
                        f"task:{task_id}:signal:{name}: sealed, but no master key is configured"
                    )
                value = await self._store.sealer.open_text(tenant, value, f"task:{task_id}:signal:{name}")
            out[str(name)] = json.loads(value)
        return out

    async def due(self, *, limit: int = 100, lease_ms: int = 30_000) -> list[tuple[str, str]]:
        """Members due now, leased to this caller for ``lease_ms``: (member, the lease score to unpark with)."""
        now = now_ms()
        lease = str(now + lease_ms)
        members = await self._due(keys=[self._set], args=[str(now), str(limit), lease])
        return [(str(m), lease) for m in members]

    async def parked(self, member: str) -> Parked:
        """A due member's task and its kept envelope."""
        tenant, _, task_id = member.partition("/")
        key = self._store.task_key(tenant, task_id)
        status, text = await self._redis.hmget(key, ["status", "parked_envelope"])  # type: ignore[misc]
        envelope = base64.b64decode(text) if text and status == "waiting" else None
        return Parked(member, tenant, task_id, envelope)

    async def unpark(self, member: str, lease: str) -> None:
        """Forget a member once re-published (unless parked again since)."""
        await self._unpark(keys=[self._set], args=[member, lease])


def _member(tenant: str, task_id: str) -> str:
    return f"{tenant}/{task_id}"
