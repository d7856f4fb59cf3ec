"""Metering: tokens and cost per tenant, model and deployment.

Prometheus gets bounded labels only (model, deployment): ``openclaw_router_cost_usd_total`` here, tokens in
``openclaw_router_tokens_total`` (services.router.metrics). Tenants are unbounded, so their usage goes to Redis
instead: one hash per tenant and UTC day, ``{ns}:router:usage:{tenant}:{YYYY-MM-DD}``, with fields
``{model}|{deployment}|{requests,prompt,completion,cost_nusd}`` (cost in billionths of a dollar, so sums stay
exact). Increments are added up in memory and written every ``flush_interval_s`` in one pipelined round trip, so
the request path never waits for Redis; a crash loses at most that interval, and a failed write is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.common.errors import InvalidInputError, UnavailableError

log = logging.getLogger(__name__)

NANO = 1_000_000_000
MAX_RANGE_DAYS = 366
KINDS = ("requests", "prompt", "completion", "cost_nusd")

COST = Counter(
    "openclaw_router_cost_usd_total",
    "Cost of provider calls in USD at the catalogue's (or the model's own) prices.",
    ["model", "deployment"],
)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One tenant's usage of one model deployment on one day."""

    day: str
    model: str
    deployment: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def parse_day(value: str, field: str) -> dt.date:
    """A ``YYYY-MM-DD`` date; InvalidInputError names the field otherwise."""
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(
            f"{field}: must be a date as YYYY-MM-DD (got {value!r})", field=field
        ) from None


def day_range(start: str, end: str, today: dt.date) -> list[dt.date]:
    """The days from ``start`` to ``end`` inclusive (empty ``end``: today; empty ``start``: ``end``)."""
    last = parse_day(end, "to_day") if end else today
    first = parse_day(start, "from_day") if start else last
    if first > last:
        raise InvalidInputError(f"from_day: {first} is after to_day ({last})", field="from_day")
    span = (last - first).days + 1
    if span > MAX_RANGE_DAYS:
        raise InvalidInputError(
            f"from_day: at most {MAX_RANGE_DAYS} days per query (asked for {span})", field="from_day"
        )
    return [first + dt.timedelta(days=n) for n in range(span)]


TENANT_TOKENS = Counter(
    "openclaw_router_tenant_tokens_total",
    "Tokens by tenant and kind; tenants not defined in the tenant directory count as 'other'.",
    ["tenant", "kind"],
)
TENANT_COST = Counter(
    "openclaw_router_tenant_cost_usd_total",
    "Spend in US dollars by tenant; tenants not defined in the tenant directory count as 'other'.",
    ["tenant"],
)


class Meter:
    """Counts usage per tenant (in Redis, batched) and per model and deployment (in Prometheus)."""

    def __init__(
        self,
        redis: Redis | None,
        namespace: str,
        *,
        retention_days: int = 400,
        flush_interval_s: float = 1.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        tenant_label: Callable[[str], str] | None = None,
    ) -> None:
        self._redis = redis
        # Per-tenant Prometheus series only when labels are bounded (by the tenant directory); else none at all.
        self._tenant_label = tenant_label
        self._prefix = f"{namespace}:router:usage:"
        self._retention_s = retention_days * 86400
        self._interval = flush_interval_s
        self._clock = clock
        self._pending: defaultdict[tuple[str, str], defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )
        self._costs: dict[tuple[str, str], Counter] = {}
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    def key(self, tenant: str, day: str) -> str:
        """The Redis hash of one tenant's day (the tenant quoted, so no name reaches another's keys)."""
        return f"{self._prefix}{quote(tenant, safe='')}:{day}"

    def record(
        self, tenant: str, model: str, deployment: str, prompt: int, completion: int, cost_usd: float
    ) -> None:
        """Count one served request (no I/O: written by the next flush)."""
        child = self._costs.get((model, deployment))
        if child is None:
            child = self._costs[(model, deployment)] = COST.labels(model, deployment)
        if cost_usd > 0:
            child.inc(cost_usd)
        if self._tenant_label is not None and tenant:
            label = self._tenant_label(tenant)
            TENANT_TOKENS.labels(label, "prompt").inc(prompt)
            TENANT_TOKENS.labels(label, "completion").inc(completion)
            if cost_usd > 0:
                TENANT_COST.labels(label).inc(cost_usd)
        if self._redis is None or not tenant:  # no tenant (internal calls): Prometheus only
            return
        day = self._clock().date().isoformat()
        fields = self._pending[(tenant, day)]
        base = f"{model}|{deployment}|"
        fields[base + "requests"] += 1
        fields[base + "prompt"] += prompt
        fields[base + "completion"] += completion
        fields[base + "cost_nusd"] += round(cost_usd * NANO)

    def start(self) -> None:
        """Begin flushing in the background."""
        if self._redis is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="usage-flush")

    async def stop(self) -> None:
        """Stop the background flush and write what is pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self.flush()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("usage flush failed; will retry", extra={"error": str(exc)})

    async def flush(self) -> None:
        """Write the pending increments in one round trip; on failure they stay pending."""
        if self._redis is None:
            return
        async with self._flush_lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, defaultdict(lambda: defaultdict(int))
            try:
                pipe = self._redis.pipeline(transaction=False)
                for (tenant, day), fields in pending.items():
                    key = self.key(tenant, day)
                    for name, amount in fields.items():
                        if amount:
                            pipe.hincrby(key, name, amount)
                    pipe.expire(key, self._retention_s)
                await pipe.execute()
            except BaseException:
                for slot, fields in pending.items():  # put back for the next flush
                    for name, amount in fields.items():
                        self._pending[slot][name] += amount
                raise

    async def usage(self, tenant: str, start: str = "", end: str = "") -> list[UsageRow]:
        """The tenant's usage per day, model and deployment between two dates (UTC, inclusive)."""
        if not tenant:
            raise InvalidInputError("tenant: required", field="tenant")
        days = day_range(start, end, self._clock().date())
        if self._redis is None:
            raise UnavailableError("usage metering is off: the router has no Redis")
        try:
            await self.flush()
            pipe = self._redis.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(self.key(tenant, day.isoformat()))
            hashes: list[dict[str, str]] = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise UnavailableError(f"usage store unreachable: {exc}") from exc
        rows: list[UsageRow] = []
        for day, fields in zip(days, hashes, strict=True):
            grouped: dict[tuple[str, str], dict[str, int]] = {}
            for name, value in fields.items():
                model, _, rest = name.partition("|")
                deployment, _, kind = rest.rpartition("|")
                grouped.setdefault((model, deployment), {})[kind] = int(value)
            for (model, deployment), counts in sorted(grouped.items()):
                rows.append(
                    UsageRow(
                        day=day.isoformat(),
                        model=model,
                        deployment=deployment,
                        requests=counts.get("requests", 0),
                        prompt_tokens=counts.get("prompt", 0),
                        completion_tokens=counts.get("completion", 0),
                        cost_usd=counts.get("cost_nusd", 0) / NANO,
                    )
                )
        return rows
