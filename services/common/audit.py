"""The audit trail: an append-only, hash-chained log per tenant that shows any deleted, reordered or altered record.

Each record carries its sequence number, the MAC of the record before it, and its own MAC: HMAC-SHA256 under the
audit key over the record's canonical JSON. Deleting or reordering breaks the ``prev`` links or the sequence,
altering breaks the MAC, truncating the tail disagrees with the chain head kept beside the stream; and without the
audit key nobody can rewrite a consistent chain. Appends are batched and go through one compare-and-append
script, so replicas writing the same tenant's chain interleave without forking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from redis.asyncio import Redis

from services.common.envelope import now_ms
from services.common.telemetry import current_trace_id

log = logging.getLogger(__name__)

# KEYS: stream, head, tenant index; ARGV[1]: expected head ('' when the chain is new), ARGV[2]: tenant,
# ARGV[3..n-1]: records, ARGV[n]: new head. {1} when appended, {0, current head} when another writer was first.
_APPEND = """
local head = redis.call('GET', KEYS[2]) or ''
if head ~= ARGV[1] then return {0, head} end
for i = 3, #ARGV - 1 do redis.call('XADD', KEYS[1], '*', 'r', ARGV[i]) end
redis.call('SET', KEYS[2], ARGV[#ARGV])
redis.call('SADD', KEYS[3], ARGV[2])
return {1}
"""

GENESIS = "0" * 64
# Key words that mark a secret: matched against the words of a key ("access_token", "X-Api-Key"), so counts like
# "prompt_tokens" are kept.
SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "authorization",
        "credential",
        "credentials",
        "private",
    }
)


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Who did what to which resource, and how it went; ``details`` must hold no secrets (they are dropped)."""

    tenant: str
    actor: str
    action: str
    resource: str = ""
    outcome: str = "ok"
    service: str = ""
    cost_usd: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    ts_ms: int = field(default_factory=now_ms)
    trace_id: str = field(default_factory=lambda: current_trace_id() or "")

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts_ms": self.ts_ms,
            "tenant": self.tenant,
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "outcome": self.outcome,
            "service": self.service,
            "trace_id": self.trace_id,
            "details": scrub(self.details),
        }
        if self.cost_usd is not None:
            out["cost_usd"] = self.cost_usd
        return out


@dataclass(frozen=True, slots=True)
class Verification:
    """The result of walking one tenant's chain: how many records, and the first problem if any."""

    tenant: str
    records: int
    ok: bool
    problem: str = ""


def scrub(details: Mapping[str, Any]) -> dict[str, Any]:
    """Details with any secret-looking key replaced, recursively (a last line of defence, not the only one)."""
    out: dict[str, Any] = {}
    for key, value in details.items():  # keys are few and repeat: _secret_key is cached
        if _secret_key(key):
            out[key] = "[redacted]"
        elif isinstance(value, Mapping):
            out[key] = scrub(value)
        else:
            out[key] = value
    return out


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", key.lower()) if w]
    return (
        bool(SECRET_WORDS.intersection(words)) or "".join(words) in SECRET_WORDS or "apikey" in "".join(words)
    )


def canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _with_mac(body: bytes, mac: str) -> bytes:
    """``canonical({**record, "mac": mac})`` from ``body = canonical(record)`` without encoding it again.

    Sorted, "mac" falls between "details" and "outcome", which every record has. The last ``,"outcome":`` in
    the text is the top-level key: an earlier one can only sit inside details, and no later value can hold
    one (a JSON string cannot contain an unescaped quote).
    """
    at = body.rindex(b',"outcome":')
    return body[:at] + b',"mac":"' + mac.encode() + b'"' + body[at:]


class AuditLog:
    """Appends events to per-tenant chains (batched in the background), verifies and exports them."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        key: bytes,
        *,
        service: str = "",
        flush_interval_s: float = 0.05,
        max_batch: int = 200,
        max_pending: int = 10_000,
    ) -> None:
        if len(key) < 32:
            raise ValueError("the audit key must be at least 32 bytes")
        self._redis = redis
        self._ns = namespace
        self._key = key
        self._service = service
        self._interval = flush_interval_s
        self._max_batch = max_batch
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(max_pending)
        self._heads: dict[str, str] = {}
        self._script = redis.register_script(_APPEND)
        self._task: asyncio.Task[None] | None = None

    def _stream(self, tenant: str) -> str:
        return f"{self._ns}:audit:{tenant}"

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flusher(), name="audit-flush")

    async def stop(self) -> None:
        """Write everything still queued, then stop (if Redis is gone, say how many records are lost)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception as exc:
            log.error(
                "audit records could not be written at shutdown",
                extra={"pending": self._queue.qsize(), "error": str(exc)},
            )

    async def record(self, event: AuditEvent) -> None:
        """Queue an event; waits (never drops) when the writer is behind by ``max_pending`` events."""
        if self._service and not event.service:
            event = replace(event, service=self._service)
        await self._queue.put(event)

    def record_nowait(self, event: AuditEvent) -> bool:
        """Queue an event without waiting (from code that cannot await, e.g. a stream being closed)."""
        if self._service and not event.service:
            event = replace(event, service=self._service)
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            log.error("audit writer far behind: a record was dropped", extra={"tenant": event.tenant})
            return False
        return True

    async def flush(self) -> None:
        """Append every queued event now (readers, tests and shutdown), in order with the background writer."""
        if self._task is not None and not self._task.done():
            await self._queue.join()  # the writer appends them; writing here too could reorder a chain
            return
        while not self._queue.empty():
            batch: dict[str, list[AuditEvent]] = {}
            for _ in range(min(self._max_batch, self._queue.qsize())):
                event = self._queue.get_nowait()
                batch.setdefault(event.tenant, []).append(event)
            for tenant, events in batch.items():
                await self._append(tenant, events)
                for _ in events:
                    self._queue.task_done()

    async def _flusher(self) -> None:
        while True:
            first = await self._queue.get()
            batch = {first.tenant: [first]}
            await asyncio.sleep(self._interval)
            for _ in range(min(self._max_batch - 1, self._queue.qsize())):
                event = self._queue.get_nowait()
                batch.setdefault(event.tenant, []).append(event)
            for tenant, events in batch.items():
                try:
                    await self._append(tenant, events)
                except Exception:
                    log.exception("audit append failed; retrying", extra={"tenant": tenant})
                    for event in events:
                        await self._queue.put(event)
                    await asyncio.sleep(1.0)
                finally:
                    for _ in events:
                        self._queue.task_done()

    async def _append(self, tenant: str, events: list[AuditEvent]) -> None:
        head = self._heads.get(tenant)
        if head is None:
            head = await self._redis.get(self._stream(tenant) + ":head") or ""
        for _ in range(100):  # each retry means another writer appended first: rebuild on its head
            records, new_head = self._chain(head, events)
            result = await self._script(
                keys=[self._stream(tenant), self._stream(tenant) + ":head", f"{self._ns}:audit:tenants"],
                args=[head, tenant, *records, new_head],
            )
            if int(result[0]) == 1:
                self._heads[tenant] = new_head
                return
            head = str(result[1])
        raise RuntimeError(f"audit chain for {tenant!r}: too much contention")

    def _chain(self, head: str, events: list[AuditEvent]) -> tuple[list[str], str]:
        seq, prev = _parse_head(head)
        out = []
        for event in events:
            seq += 1
            body = canonical({**event.body(), "seq": seq, "prev": prev})
            prev = hmac.new(self._key, body, hashlib.sha256).hexdigest()
            out.append(_with_mac(body, prev).decode())
        return out, f"{seq} {prev}"

    def _mac(self, record: Mapping[str, Any]) -> str:
        return hmac.new(self._key, canonical(record), hashlib.sha256).hexdigest()

    async def records(self, tenant: str, *, page: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """The tenant's records in order (for export and queries by the tenant's admins)."""
        start = "-"
        while True:
            entries = await self._redis.xrange(self._stream(tenant), min=start, count=page)
            for _, fields in entries:
                yield json.loads(fields["r"])
            if len(entries) < page:
                return
            start = "(" + entries[-1][0]

    async def page(
        self, tenant: str, *, after: str = "", limit: int = 100
    ) -> tuple[list[dict[str, Any]], str]:
        """Up to ``limit`` of the tenant's records after the cursor ``after`` ('' from the start), and the
        cursor of the last one returned ('' when none was)."""
        start = f"({after}" if after else "-"
        entries = await self._redis.xrange(self._stream(tenant), min=start, count=limit)
        records = [json.loads(fields["r"]) for _, fields in entries]
        return records, str(entries[-1][0]) if entries else ""

    async def tenants(self) -> list[str]:
        return sorted(await self._redis.smembers(f"{self._ns}:audit:tenants"))  # type: ignore[misc]

    async def verify(self, tenant: str) -> Verification:
        """Walk the chain: sequence, links and MACs, and the head; the first problem found, by sequence number."""
        expected_seq, prev, count = 1, GENESIS, 0
        async for record in self.records(tenant):
            count += 1
            mac = record.pop("mac", "")
            if record.get("seq") != expected_seq:
                return Verification(
                    tenant,
                    count,
                    False,
                    f"record {count}: seq {record.get('seq')}, expected {expected_seq} (deleted or reordered)",
                )
            if record.get("prev") != prev:
                return Verification(
                    tenant,
                    count,
                    False,
                    f"seq {expected_seq}: does not follow the previous record (deleted or reordered)",
                )
            if not hmac.compare_digest(mac, self._mac(record)):
                return Verification(
                    tenant, count, False, f"seq {expected_seq}: altered (its MAC does not match)"
                )
            expected_seq, prev = expected_seq + 1, mac
        head = await self._redis.get(self._stream(tenant) + ":head") or ""
        if head != ("" if count == 0 else f"{count} {prev}"):
            return Verification(
                tenant,
                count,
                False,
                f"the chain head ({head or 'none'}) does not match the last record (records removed from the end?)",
            )
        return Verification(tenant, count, True)


def _parse_head(head: str) -> tuple[int, str]:
    if not head:
        return 0, GENESIS
    seq, _, mac = head.partition(" ")
    return int(seq), mac
