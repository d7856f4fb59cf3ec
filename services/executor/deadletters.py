"""Dead letters: collect the dead queue into a per-tenant archive in Redis, list them, replay them.

RabbitMQ cannot show a queue's messages without taking them, so ``collect`` moves each message of
``<namespace>.tasks.dead`` into Redis (acknowledged only after the write) as one entry per task under
``<namespace>:<tenant>:dead``; listing and showing read that archive, a tenant at a time. ``replay`` resets
the task record in one script (status queued, attempt count fresh, error, result, cancel flag and lease
cleared, its keys no longer expiring, its "done" entry removed) and re-publishes the envelope as attempt 1
with a publisher confirm; only then is the entry removed. Step checkpoints are kept by default, exactly as a
redelivery keeps them (completed steps, agent turns and tool calls do not run again; failed steps run again);
``from_start`` drops them all. A task whose record expired is stored afresh from its envelope.

With a Sealer on the task store (master keys configured), the tenant's data stays encrypted at rest: each
archived error is sealed, envelopes keep their sealed workflow and inputs (one dead-lettered unsealed is sealed
on replay), a re-created record is written through the sealing store, and ``list``, ``show`` and ``replay``
open what they need. Meeting sealed data without a sealer is an InvalidInputError naming the settings to set.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from redis.asyncio import Redis

from openclaw.v1 import tasks_pb2
from services.common import envelope
from services.common.encryption import DecryptionError
from services.common.envelope import ERROR_HEADER, SEALED_PREFIX, now_ms
from services.common.errors import InvalidInputError, NotFoundError
from services.common.publisher import TaskPublisher
from services.common.taskstore import TaskRecord, TaskStore, check_task_id, check_tenant, event_json
from services.common.topology import Topology

log = logging.getLogger(__name__)
_NO_KEYS = (
    "is encrypted at rest, and this process has no master keys: set OPENCLAW_MASTER_KEYS and "
    "OPENCLAW_MASTER_KEY_ID (the executor's) to read or replay it"
)

# Resets an ended (failed) task for a replay; also goes on with a replay that set the task queued but never
# had its publish confirmed (replay_pending). Step checkpoints stay, as for a redelivery, unless ARGV[3] is
# "fresh". Values are left as stored (they may be sealed at rest), so the script reads none of them.
_RESET = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, 'missing'} end
if not (cur == 'failed' or (cur == 'queued' and redis.call('HGET', KEYS[1], 'replay_pending') == '1')) then
  return {0, cur}
end
for i = 1, 3 do redis.call('PERSIST', KEYS[i]) end
redis.call('DEL', KEYS[4])
redis.call('HDEL', KEYS[1], 'error', 'result', 'cancel', 'lease_owner', 'lease_until_ms')
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempt', '0', 'updated_ms', ARGV[1], 'deadline_ms', '0',
  'replay_pending', '1')
redis.call('HINCRBY', KEYS[1], 'replays', 1)
if ARGV[3] == 'fresh' then redis.call('DEL', KEYS[3]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'e', ARGV[2])
return {1, cur}
"""


@dataclass
class DeadLetter:
    """One dead-lettered task: its envelope, the error it died with, when and how often."""

    task_id: str
    tenant: str
    error: dict[str, Any]
    dead_ms: int
    envelope: bytes
    name: str = ""
    times: int = 1
    replayable: bool = True
    # The error as archived under the tenant's data key ("" when archived in plaintext).
    sealed_error: str = ""

    def to_json(self) -> str:
        """The archived form (the error sealed when ``sealed_error`` holds it)."""
        body = {
            "task_id": self.task_id,
            "tenant": self.tenant,
            "error": self.sealed_error or self.error,
            "dead_ms": self.dead_ms,
            "name": self.name,
            "times": self.times,
            "replayable": self.replayable,
            "envelope": base64.b64encode(self.envelope).decode(),
        }
        return json.dumps(body, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> DeadLetter:
        """Read an archived entry."""
        body = json.loads(text)
        error = body.get("error") or {}
        return cls(
            task_id=body["task_id"],
            tenant=body["tenant"],
            error={} if isinstance(error, str) else error,
            sealed_error=error if isinstance(error, str) else "",
            dead_ms=int(body.get("dead_ms", 0)),
            envelope=base64.b64decode(body.get("envelope", "")),
            name=body.get("name", ""),
            times=int(body.get("times", 1)),
            replayable=bool(body.get("replayable", True)),
        )

    def summary(self) -> dict[str, Any]:
        """What `openclaw dlq list` shows (no workflow, no inputs)."""
        return {
            "task_id": self.task_id,
            "tenant": self.tenant,
            "name": self.name,
            "dead_ms": self.dead_ms,
            "times": self.times,
            "code": self.error.get("code", ""),
            "message": self.error.get("message", ""),
        }

    def details(self, opened: tuple[str, str] | None = None) -> dict[str, Any]:
        """What `openclaw dlq show` shows: the summary, the whole error and the envelope's fields (its
        workflow and inputs as ``opened`` gives them in plaintext, when given)."""
        env = tasks_pb2.TaskEnvelope()
        env.ParseFromString(self.envelope)
        if opened is not None:
            env.workflow_json, env.inputs_json = opened
        return self.summary() | {
            "error": self.error,
            "envelope": {
                "attempt": env.attempt,
                "max_attempts": env.max_attempts,
                "deadline_unix_ms": env.deadline_unix_ms,
                "template": env.template,
                "workflow": _shown(env.workflow_json),
                "inputs": _shown(env.inputs_json),
            },
        }


@dataclass
class Collected:
    """What one ``collect`` moved: entries archived by tenant, and messages that name no task."""

    archived: dict[str, int] = field(default_factory=dict)
    undecodable: int = 0


class DeadLetters:
    """The dead-letter archive of one namespace, and replay from it."""

    def __init__(self, store: TaskStore, topology: Topology, publisher: TaskPublisher) -> None:
        self._store = store
        self._redis: Redis = store.redis
        self._ns = store.namespace
        self._topology = topology
        self._publisher = publisher
        self._reset = self._redis.register_script(_RESET)

    def _key(self, tenant: str) -> str:
        return f"{self._ns}:{check_tenant(tenant)}:dead"

    @property
    def _tenants_key(self) -> str:
        # A "." cannot appear in a tenant id, so this never collides with a tenant's keys.
        return f"{self._ns}:dlq.tenants"

    @property
    def _undecodable_key(self) -> str:
        return f"{self._ns}:dlq.undecodable"

    async def collect(self, channel: AbstractChannel, *, limit: int = 100_000) -> Collected:
        """Move the dead queue's messages (up to ``limit``) into the archive, acking each after its write."""
        await self._topology.declare(channel)  # idempotent; a namespace never used yet has no dead queue
        queue = await channel.get_queue(self._topology.dead_queue, ensure=False)
        out = Collected()
        for _ in range(limit):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            entry = _entry(message)
            if entry is not None and not await self._seal(entry):
                await message.nack(requeue=True)  # left for a process with the keys
                raise InvalidInputError(
                    f"dead letter {entry.task_id!r} of tenant {entry.tenant!r} {_NO_KEYS}"
                )
            if entry is None:
                await self._redis.hset(  # type: ignore[misc]
                    self._undecodable_key,
                    message.message_id or uuid.uuid4().hex,
                    json.dumps(_raw(message), ensure_ascii=False),
                )
                out.undecodable += 1
            else:
                await self._archive(entry)
                out.archived[entry.tenant] = out.archived.get(entry.tenant, 0) + 1
            await message.ack()
        return out

    async def _seal(self, entry: DeadLetter) -> bool:
        """Seal a new entry's error and name it from its sealed workflow (with a sealer); False if its envelope
        is sealed and there is no sealer (its error must not be archived in plaintext then)."""
        sealer = self._store.sealer
        env = tasks_pb2.TaskEnvelope.FromString(entry.envelope)
        if sealer is None:
            return not _is_sealed(env)
        if env.workflow_json.startswith(SEALED_PREFIX):
            with contextlib.suppress(DecryptionError):  # the name is a nicety: the template stands in
                workflow_json, _ = await envelope.opened(env, sealer)
                entry.name = _name(workflow_json) or entry.name
        text = json.dumps(entry.error, ensure_ascii=False)
        entry.sealed_error = await sealer.seal_text(entry.tenant, text, _error_where(entry.task_id))
        return True

    async def _opened(self, entry: DeadLetter) -> DeadLetter:
        """The entry with its archived error in plaintext."""
        if entry.sealed_error:
            sealer = self._store.sealer
            if sealer is None:
                raise InvalidInputError(
                    f"dead letter {entry.task_id!r} of tenant {entry.tenant!r} {_NO_KEYS}"
                )
            text = await sealer.open_text(entry.tenant, entry.sealed_error, _error_where(entry.task_id))
            entry.error = json.loads(text)
        return entry

    async def _envelope_text(self, entry: DeadLetter, env: tasks_pb2.TaskEnvelope) -> tuple[str, str]:
        """The envelope's workflow and inputs in plaintext; InvalidInputError naming the settings if they are
        sealed and this process has no keys, DecryptionError if its keys do not open them."""
        if self._store.sealer is None and _is_sealed(env):
            raise InvalidInputError(f"dead letter {entry.task_id!r} of tenant {entry.tenant!r} {_NO_KEYS}")
        return await envelope.opened(env, self._store.sealer)

    async def details(self, entry: DeadLetter) -> dict[str, Any]:
        """What `openclaw dlq show` shows, the envelope's workflow and inputs opened to plaintext."""
        env = tasks_pb2.TaskEnvelope.FromString(entry.envelope)
        return entry.details(await self._envelope_text(entry, env))

    async def _archive(self, entry: DeadLetter) -> None:
        previous = await self._redis.hget(self._key(entry.tenant), entry.task_id)  # type: ignore[misc]
        if previous is not None:  # dead again (a replay failed too): keep the count
            entry.times += DeadLetter.from_json(str(previous)).times
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(entry.tenant), entry.task_id, entry.to_json())
            pipe.sadd(self._tenants_key, entry.tenant)
            await pipe.execute()

    async def tenants(self) -> list[str]:
        """Tenants that have (or had) archived dead letters."""
        members = await self._redis.smembers(self._tenants_key)  # type: ignore[misc]
        return sorted(str(m) for m in members)

    async def undecodable(self) -> int:
        """How many collected messages named no task (kept apart; they cannot be replayed)."""
        return int(await self._redis.hlen(self._undecodable_key))  # type: ignore[misc]

    async def list(self, tenant: str) -> list[DeadLetter]:
        """One tenant's dead letters, oldest first."""
        raw: dict[str, str] = await self._redis.hgetall(self._key(tenant))  # type: ignore[misc]
        entries = [await self._opened(DeadLetter.from_json(str(v))) for v in raw.values()]
        return sorted(entries, key=lambda e: (e.dead_ms, e.task_id))

    async def get(self, tenant: str, task_id: str) -> DeadLetter:
        """One dead letter of this tenant; NotFoundError if it has none under this id."""
        raw = await self._redis.hget(self._key(tenant), check_task_id(task_id))  # type: ignore[misc]
        if raw is None:
            raise NotFoundError(f"tenant {tenant!r} has no dead letter {task_id!r}")
        return await self._opened(DeadLetter.from_json(str(raw)))

    async def drop(self, tenant: str, task_id: str) -> None:
        """Forget a dead letter without replaying it."""
        if not await self._redis.hdel(self._key(tenant), check_task_id(task_id)):  # type: ignore[misc]
            raise NotFoundError(f"tenant {tenant!r} has no dead letter {task_id!r}")

    async def replay(self, tenant: str, task_id: str, *, from_start: bool = False) -> None:
        """Reset the task and re-publish it as attempt 1 (confirmed); the entry goes once that is done.

        InvalidInputError if the task is not failed (it ran again, or is running, since it was dead-lettered),
        or if its envelope is sealed and this process has no master keys. The envelope goes out sealed when
        the store has a sealer.
        """
        entry = await self.get(tenant, task_id)
        if not entry.replayable:
            raise InvalidInputError(f"dead letter {task_id!r} carries no runnable envelope")
        env = tasks_pb2.TaskEnvelope()
        env.ParseFromString(entry.envelope)
        if env.tenant != tenant or env.task_id != task_id:  # the archive key and the envelope must agree
            raise InvalidInputError(f"dead letter {task_id!r}: its envelope names another task or tenant")
        # Opened before anything changes: no keys, or the wrong ones, stop the replay here.
        opened = await self._envelope_text(entry, env)
        env.attempt = 1
        env.deadline_unix_ms = 0  # the client's deadline has passed; a replay is an operator's decision
        task_key = self._store.task_key(tenant, task_id)
        if not await self._redis.exists(task_key):
            await self._recreate(entry, env, opened)
        event = event_json(task_id, "task.replayed", status="queued", data={"from_start": from_start})
        changed, previous = await self._reset(
            keys=[task_key, f"{task_key}:events", f"{task_key}:steps", f"{task_key}:done"],
            args=[str(now_ms()), event, "fresh" if from_start else "keep"],
        )
        if not int(changed):
            raise InvalidInputError(
                f"task {task_id!r} is {previous!s}, not failed: only a failed task can be replayed "
                "(it ran again since it was dead-lettered; `openclaw dlq drop` forgets the entry)"
            )
        await self._publisher.publish(await envelope.seal(env, self._store.sealer))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(task_key, "replay_pending")
            pipe.hdel(self._key(tenant), task_id)
            await pipe.execute()
        log.info(
            "dead letter replayed", extra={"task_id": task_id, "tenant": tenant, "from_start": from_start}
        )

    async def _recreate(
        self, entry: DeadLetter, env: tasks_pb2.TaskEnvelope, opened: tuple[str, str]
    ) -> None:
        """Store a task whose record expired afresh from its envelope's plaintext (``opened``), through the
        task store (which seals the tenant's data at rest when it is configured to), marked as a replay in
        progress."""
        record = TaskRecord(id=env.task_id, tenant=env.tenant, status="queued", name=entry.name)
        await self._store.create(record, workflow_json=opened[0], inputs_json=opened[1])
        await self._redis.hset(  # type: ignore[misc]
            self._store.task_key(env.tenant, env.task_id), mapping={"replay_pending": "1", "enqueued": "1"}
        )


def _entry(message: AbstractIncomingMessage) -> DeadLetter | None:
    """The archive entry of a dead-queue message, or None if it carries no valid task envelope."""
    try:
        env = envelope.from_message(message)
        check_tenant(env.tenant)
        check_task_id(env.task_id)
    except InvalidInputError:
        return None
    error = _error(message.headers or {})
    name = _name(env.workflow_json) or env.template
    return DeadLetter(
        task_id=env.task_id,
        tenant=env.tenant,
        error=error,
        dead_ms=now_ms(),
        envelope=env.SerializeToString(),
        name=name,
        replayable=env.type == "workflow.run",
    )


def _name(workflow_json: str) -> str:
    """The workflow's name ("" for none, or for sealed or broken text)."""
    try:
        parsed = json.loads(workflow_json) if workflow_json else None
    except ValueError:
        return ""
    return str(parsed.get("name", "")) if isinstance(parsed, dict) else ""


def _is_sealed(env: tasks_pb2.TaskEnvelope) -> bool:
    return env.workflow_json.startswith(SEALED_PREFIX) or env.inputs_json.startswith(SEALED_PREFIX)


def _error_where(task_id: str) -> str:
    """What an archived error is bound to (its associated data), so it opens only as this entry's error."""
    return f"dlq:{task_id}:error"


def _shown(text: str) -> Any:
    """An envelope's JSON field as `show` prints it (sealed or broken text as it is)."""
    if not text:
        return None
    if text.startswith(SEALED_PREFIX):
        return "(encrypted)"
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error(headers: dict[str, Any]) -> dict[str, Any]:
    """The worker's error header, or what RabbitMQ's own dead-lettering says (x-death)."""
    raw = headers.get(ERROR_HEADER)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
            if isinstance(value, dict):
                return value
        except ValueError:
            return {"code": "unknown", "message": raw[:1000]}
    reason = headers.get("x-first-death-reason") or "unknown"
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return {"code": "dead_lettered_by_broker", "message": f"RabbitMQ dead-lettered the message: {reason}"}


def _raw(message: AbstractIncomingMessage) -> dict[str, Any]:
    """An undecodable message as kept for inspection."""
    return {
        "message_id": message.message_id,
        "content_type": message.content_type,
        "error": _error(message.headers or {}),
        "dead_ms": now_ms(),
        "body": base64.b64encode(message.body[:65536]).decode(),
    }
