"""Key-value, SQL and messaging operations against the machine's Redis, PostgreSQL, RabbitMQ and Mosquitto,
and a loopback webhook receiver that checks signatures the way docs tell receivers to."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiomqtt
import psycopg
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from redis.asyncio import Redis

from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError_,
    UnavailableError,
)
from services.common.redis_client import open_redis
from services.common.topology import Topology
from services.executor.context import OpContext
from services.executor.ops._postgres import PostgresPools
from services.executor.ops.http import HttpClient
from tests.integration.test_executor import Harness, eventually, harness  # noqa: F401
from tests.unit.ops.harness import ctx_for, run_op

pytestmark = pytest.mark.integration

PG_BASE = "postgresql://postgres@127.0.0.1:5432/test"


def other_tenant(ctx: OpContext, tenant: str = "globex") -> OpContext:
    return dataclasses.replace(ctx, tenant=tenant)


# -- key-value in Redis ---------------------------------------------------------------------------------


@pytest.fixture
def kv(tmp_path: Path, redis: Redis, namespace: str) -> OpContext:
    return ctx_for(tmp_path, redis=redis, namespace=namespace)


async def test_values_round_trip_as_json_under_the_tenants_prefix(
    kv: OpContext, redis: Redis, namespace: str
) -> None:
    doc = {"order": 7, "lines": [{"sku": "a", "qty": 2}], "note": "café", "paid": False}
    assert await run_op("kv_set", {"key": "orders:7", "value": doc}, kv) is True
    assert await run_op("kv_get", {"key": "orders:7"}, kv) == doc
    assert json.loads(await redis.get(f"{namespace}:acme:kv:orders:7")) == doc
    assert await run_op("kv_get", {"key": "missing", "default": {"none": True}}, kv) == {"none": True}
    assert await run_op("kv_exists", {"key": "orders:7"}, kv) is True
    assert await run_op("kv_delete", {"key": ["orders:7", "missing"]}, kv) == 1
    assert await run_op("kv_exists", {"key": "orders:7"}, kv) is False


async def test_set_takes_the_previous_output_and_honours_absent_and_present(kv: OpContext) -> None:
    piped = dataclasses.replace(kv, prev_output=[1, 2, 3], has_prev=True)
    assert await run_op("kv_set", {"key": "list", "when": "absent"}, piped) is True
    assert await run_op("kv_set", {"key": "list", "value": "again", "when": "absent"}, kv) is False
    assert await run_op("kv_get", {"key": "list"}, kv) == [1, 2, 3]
    assert await run_op("kv_set", {"key": "nope", "value": 1, "when": "present"}, kv) is False
    assert await run_op("kv_exists", {"key": "nope"}, kv) is False


async def test_expiry_can_be_set_read_and_removed(kv: OpContext) -> None:
    await run_op("kv_set", {"key": "session", "value": "x", "ttl_s": 600}, kv)
    assert 0 < await run_op("kv_ttl", {"key": "session"}, kv) <= 600
    assert await run_op("kv_expire", {"key": "session", "ttl_s": None}, kv) is True
    assert await run_op("kv_ttl", {"key": "session"}, kv) == -1
    assert await run_op("kv_expire", {"key": "session", "ttl_s": 30}, kv) is True
    assert 0 < await run_op("kv_ttl", {"key": "session"}, kv) <= 30
    assert await run_op("kv_ttl", {"key": "gone"}, kv) is None
    assert await run_op("kv_expire", {"key": "gone", "ttl_s": 30}, kv) is False


async def test_incr_counts_atomically_and_keeps_a_fixed_window(kv: OpContext) -> None:
    results = await asyncio.gather(*(run_op("kv_incr", {"key": "hits", "ttl_s": 60}, kv) for _ in range(20)))
    assert sorted(results) == list(range(1, 21))
    await run_op("kv_expire", {"key": "hits", "ttl_s": 5}, kv)
    await run_op("kv_incr", {"key": "hits", "by": 10, "ttl_s": 600}, kv)
    assert await run_op("kv_ttl", {"key": "hits"}, kv) <= 5  # the window is not pushed back
    assert await run_op("kv_get", {"key": "hits"}, kv) == 30
    assert await run_op("kv_incr", {"key": "ratio", "by": 0.5}, kv) == 0.5
    await run_op("kv_set", {"key": "word", "value": "ten"}, kv)
    with pytest.raises(InvalidInputError, match="key: 'word' does not hold a number"):
        await run_op("kv_incr", {"key": "word", "ttl_s": 60}, kv)
    assert await run_op("kv_ttl", {"key": "word"}, kv) == -1  # a failed increment sets no expiry


async def test_lists_push_trim_and_read_by_range(kv: OpContext) -> None:
    assert await run_op("kv_list_push", {"key": "log", "values": [{"n": 1}, {"n": 2}, {"n": 3}]}, kv) == 3
    assert await run_op("kv_list_push", {"key": "log", "values": [{"n": 0}], "side": "left"}, kv) == 4
    assert await run_op("kv_list_range", {"key": "log"}, kv) == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
    assert await run_op("kv_list_range", {"key": "log", "start": -2}, kv) == [{"n": 2}, {"n": 3}]
    assert await run_op("kv_list_range", {"key": "log", "start": 1, "limit": 2}, kv) == [{"n": 1}, {"n": 2}]
    piped = dataclasses.replace(kv, prev_output=[{"n": 4}, {"n": 5}], has_prev=True)
    assert await run_op("kv_list_push", {"key": "log", "max_length": 3}, piped) == 3
    assert await run_op("kv_list_range", {"key": "log"}, kv) == [{"n": 3}, {"n": 4}, {"n": 5}]
    assert await run_op("kv_list_range", {"key": "nothing"}, kv) == []
    with pytest.raises(InvalidInputError, match="key: 'log' holds another kind of value"):
        await run_op("kv_incr", {"key": "log"}, kv)
    await run_op("kv_set", {"key": "flat", "value": "x"}, kv)
    with pytest.raises(InvalidInputError, match="key: 'flat' holds another kind of value"):
        await run_op("kv_list_push", {"key": "flat", "values": [1], "max_length": 5, "ttl_s": 60}, kv)
    assert await run_op("kv_ttl", {"key": "flat"}, kv) == -1
    assert await run_op("kv_get", {"key": "flat"}, kv) == "x"


async def test_hashes_set_and_get_fields(kv: OpContext) -> None:
    assert await run_op("kv_hash_set", {"key": "user:1", "fields": {"name": "Ann", "tags": ["a"]}}, kv) == 2
    assert await run_op("kv_hash_set", {"key": "user:1", "fields": {"name": "Anne", "age": 31}}, kv) == 1
    assert await run_op("kv_hash_get", {"key": "user:1"}, kv) == {"name": "Anne", "tags": ["a"], "age": 31}
    assert await run_op("kv_hash_get", {"key": "user:1", "fields": ["age", "nope"]}, kv) == {"age": 31}
    assert await run_op("kv_hash_get", {"key": "nobody"}, kv) == {}
    piped = dataclasses.replace(kv, prev_output={"state": "open"}, has_prev=True)
    assert await run_op("kv_hash_set", {"key": "ticket:9", "ttl_s": 90}, piped) == 1
    assert 0 < await run_op("kv_ttl", {"key": "ticket:9"}, kv) <= 90
    assert await run_op("kv_hash_get", {"key": "ticket:9"}, kv) == {"state": "open"}


async def test_a_tenant_can_neither_read_nor_list_another_tenants_keys(kv: OpContext, namespace: str) -> None:
    await run_op("kv_set", {"key": "secret", "value": "acme's"}, kv)
    globex = other_tenant(kv)
    assert await run_op("kv_get", {"key": "secret"}, globex) is None
    assert await run_op("kv_exists", {"key": "secret"}, globex) is False
    assert await run_op("kv_delete", {"key": "secret"}, globex) == 0
    assert await all_keys({}, globex) == []
    await run_op("kv_set", {"key": "secret", "value": "globex's"}, globex)
    assert await run_op("kv_get", {"key": "secret"}, kv) == "acme's"
    assert await all_keys({"pattern": "sec*"}, kv) == ["secret"]


async def test_keys_are_listed_a_page_at_a_time(kv: OpContext) -> None:
    # More keys than one SCAN of COUNT 100 covers even in an empty Redis (a 40-key table fits in one call).
    names = {f"job:{i}" for i in range(400)}
    for name in names:
        await run_op("kv_set", {"key": name, "value": 1}, kv)
    await run_op("kv_set", {"key": "other", "value": 1}, kv)
    seen: list[str] = []
    cursor: int | None = 0
    pages = 0
    while cursor is not None:
        page = await run_op("kv_keys", {"pattern": "job:*", "limit": 10, "cursor": cursor}, kv)
        seen += page["keys"]
        cursor = page["cursor"]
        pages += 1
    assert set(seen) == names
    assert pages > 1
    assert set(await all_keys({"limit": 1000}, kv)) == names | {"other"}


async def all_keys(params: dict[str, Any], ctx: OpContext) -> list[str]:
    """Every page of kv_keys: on a busy Redis one call may hand back a cursor before it has seen them all."""
    keys: list[str] = []
    cursor: int | None = 0
    while cursor is not None:
        page = await run_op("kv_keys", {**params, "cursor": cursor}, ctx)
        keys += page["keys"]
        cursor = page["cursor"]
    return keys


async def test_values_are_sealed_at_rest_with_master_keys(
    tmp_path: Path, redis: Redis, namespace: str
) -> None:
    from services.common.encryption import Keyring, MasterKeys, Sealer

    sealer = Sealer(Keyring(redis, namespace, MasterKeys({"k": MasterKeys.generate()}, "k")))
    ctx = ctx_for(tmp_path, redis=redis, namespace=namespace, sealer=sealer)
    await run_op("kv_set", {"key": "card", "value": {"pan": "4111-1111"}}, ctx)
    await run_op("kv_list_push", {"key": "notes", "values": ["secret note"]}, ctx)
    await run_op("kv_hash_set", {"key": "profile", "fields": {"ssn": "078-05-1120"}}, ctx)
    stored = [
        await redis.get(f"{namespace}:acme:kv:card"),
        await redis.lrange(f"{namespace}:acme:kv:notes", 0, -1),
        await redis.hgetall(f"{namespace}:acme:kv:profile"),
    ]
    assert "4111" not in str(stored) and "secret note" not in str(stored) and "078-05" not in str(stored)
    assert await run_op("kv_get", {"key": "card"}, ctx) == {"pan": "4111-1111"}
    assert await run_op("kv_list_range", {"key": "notes"}, ctx) == ["secret note"]
    assert await run_op("kv_hash_get", {"key": "profile"}, ctx) == {"ssn": "078-05-1120"}
    # A sealed value copied under another key does not open: values are bound to their key.
    await redis.set(f"{namespace}:acme:kv:copy", str(await redis.get(f"{namespace}:acme:kv:card")))
    with pytest.raises(Exception, match="integrity"):
        await run_op("kv_get", {"key": "copy"}, ctx)


async def test_redis_out_of_reach_is_a_retryable_error(tmp_path: Path) -> None:
    down = open_redis("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(UnavailableError, match="Redis is unreachable") as info:
            await run_op("kv_get", {"key": "k"}, ctx_for(tmp_path, redis=down))
        assert info.value.retryable
    finally:
        await down.aclose()


# -- SQL in PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
async def pools() -> AsyncIterator[PostgresPools]:
    made = PostgresPools()
    yield made
    await made.close()


@pytest.fixture
async def pg(tmp_path: Path, namespace: str, pools: PostgresPools) -> AsyncIterator[OpContext]:
    """A schema of the test's own in database test, as the search path of credential set "reports" (whose
    connections carry the namespace as application_name), through the executor's pools."""
    schema = f"s_{namespace}"
    async with await psycopg.AsyncConnection.connect(PG_BASE, autocommit=True) as admin:
        await admin.execute(f"CREATE SCHEMA {schema}")
        credentials = {
            "reports": {
                "dsn": f"{PG_BASE}?application_name={namespace}&options=-csearch_path%3D{schema}",
                "tenants": "acme,globex",
            },
            "down": {"dsn": "postgresql://postgres@127.0.0.1:1/test"},
        }
        try:
            yield ctx_for(tmp_path, credentials=credentials, postgres=pools)
        finally:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")


async def _backends(application_name: str) -> set[int]:
    """The server's backend pids of connections with this application_name."""
    async with await psycopg.AsyncConnection.connect(PG_BASE, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        )
        return {row[0] for row in await cur.fetchall()}


async def _pid(ctx: OpContext) -> int:
    out = await run_op("sql_query", {"auth": "reports", "sql": "SELECT pg_backend_pid() AS pid"}, ctx)
    pid: int = out["rows"][0]["pid"]
    return pid


async def _orders(pg: OpContext) -> None:
    await run_op(
        "sql_transaction",
        {
            "auth": "reports",
            "statements": [
                {
                    "sql": "CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL, total numeric(10,2),"
                    " tags text[], doc jsonb, placed timestamptz DEFAULT '2026-01-02T03:04:05Z')"
                },
                {"sql": "CREATE SEQUENCE tickets"},
            ],
        },
        pg,
    )


async def test_postgres_rows_come_back_as_json_objects(pg: OpContext) -> None:
    await _orders(pg)
    out = await run_op(
        "sql_execute",
        {
            "auth": "reports",
            "sql": "INSERT INTO orders (customer, total, tags, doc) VALUES (%s, %s, %s, %s) RETURNING id",
            "params": ["ann", 12.5, ["vip", "eu"], {"source": "web", "items": [1, 2]}],
        },
        pg,
    )
    assert out == {"rowcount": 1, "columns": ["id"], "rows": [{"id": 1}], "truncated": False}
    batch = await run_op(
        "sql_execute",
        {
            "auth": "reports",
            "sql": "INSERT INTO orders (customer, total) VALUES (%(who)s, %(total)s)",
            "many": [{"who": "bob", "total": 3}, {"who": "cid", "total": 4}],
        },
        pg,
    )
    assert batch["rowcount"] == 2
    rows = await run_op(
        "sql_query",
        {"auth": "reports", "sql": "SELECT * FROM orders WHERE customer = %(who)s", "params": {"who": "ann"}},
        pg,
    )
    assert rows["rows"] == [
        {
            "id": 1,
            "customer": "ann",
            "total": "12.50",
            "tags": ["vip", "eu"],
            "doc": {"source": "web", "items": [1, 2]},
            "placed": "2026-01-02T03:04:05+00:00",
        }
    ]


async def test_postgres_queries_stream_only_max_rows(pg: OpContext) -> None:
    out = await run_op(
        "sql_query",
        {"auth": "reports", "sql": "SELECT g AS n FROM generate_series(1, 1000000) g", "max_rows": 5},
        pg,
    )
    assert out["rows"] == [{"n": i} for i in range(1, 6)]
    assert out["truncated"] is True


async def test_postgres_returning_rows_are_streamed_and_counted(pg: OpContext) -> None:
    await _orders(pg)
    out = await run_op(
        "sql_execute",
        {
            "auth": "reports",
            "sql": "INSERT INTO orders (customer) SELECT 'c' || g FROM generate_series(1, 50) g RETURNING id",
            "max_rows": 3,
        },
        pg,
    )
    assert out == {
        "rowcount": 50,
        "columns": ["id"],
        "rows": [{"id": 1}, {"id": 2}, {"id": 3}],
        "truncated": True,
    }
    steps = await run_op(
        "sql_transaction",
        {
            "auth": "reports",
            "statements": [
                {"sql": "UPDATE orders SET total = 1 WHERE id <= %s", "params": [10]},
                {"sql": "SELECT count(*) AS n FROM orders WHERE total = 1"},
                {"sql": "-- a comment first\nSELECT max(id) AS top FROM orders"},
            ],
        },
        pg,
    )
    assert steps[0] == {"rowcount": 10}
    assert steps[1]["rows"] == [{"n": 10}]
    assert steps[2]["rows"] == [{"top": 50}]


async def test_postgres_queries_run_read_only_and_one_statement_at_a_time(pg: OpContext) -> None:
    await _orders(pg)
    with pytest.raises(PermissionDeniedError, match="read-only"):
        await run_op("sql_query", {"auth": "reports", "sql": "SELECT nextval('tickets')"}, pg)
    out = await run_op(
        "sql_query", {"auth": "reports", "sql": "SELECT nextval('tickets') AS t", "read_only": False}, pg
    )
    assert out["rows"] == [{"t": 1}]
    with pytest.raises(InvalidInputError, match="one statement per call"):
        await run_op("sql_execute", {"auth": "reports", "sql": "DELETE FROM orders; DROP TABLE orders"}, pg)


async def test_postgres_transactions_are_all_or_nothing(pg: OpContext, namespace: str) -> None:
    await _orders(pg)
    with pytest.raises(InvalidInputError, match=r"statements\[1\]\.sql: null value in column \"customer\""):
        await run_op(
            "sql_transaction",
            {
                "auth": "reports",
                "statements": [
                    {"sql": "INSERT INTO orders (customer) VALUES (%s)", "params": ["dee"]},
                    {"sql": "INSERT INTO orders (customer) VALUES (%s)", "params": [None]},
                ],
            },
            pg,
        )
    out = await run_op("sql_query", {"auth": "reports", "sql": "SELECT count(*) AS n FROM orders"}, pg)
    assert out["rows"] == [{"n": 0}]
    described = await run_op("sql_tables", {"auth": "reports", "schema": f"s_{namespace}"}, pg)
    assert [t["name"] for t in described] == ["orders"]
    assert described[0]["columns"][1] == {"name": "customer", "type": "text", "nullable": False}


async def test_postgres_errors_name_the_problem(pg: OpContext) -> None:
    with pytest.raises(TimeoutError_, match="cancelled after timeout_s"):
        await run_op("sql_query", {"auth": "reports", "sql": "SELECT pg_sleep(5)", "timeout_s": 0.3}, pg)
    with pytest.raises(InvalidInputError, match='sql: relation "nowhere" does not exist'):
        await run_op("sql_query", {"auth": "reports", "sql": "SELECT * FROM nowhere"}, pg)
    with pytest.raises(InvalidInputError, match="params: the query has 1 placeholder"):
        await run_op("sql_query", {"auth": "reports", "sql": "SELECT %s", "params": [1, 2]}, pg)
    with pytest.raises(UnavailableError, match="cannot connect to PostgreSQL with credential set 'down'"):
        await run_op("sql_query", {"auth": "down", "sql": "SELECT 1"}, pg)
    with pytest.raises(PermissionDeniedError, match="may not be used by tenant 'initech'"):
        await run_op("sql_query", {"auth": "reports", "sql": "SELECT 1"}, other_tenant(pg, "initech"))


async def test_postgres_calls_reuse_one_pooled_connection_reset_between_calls(
    pg: OpContext, namespace: str
) -> None:
    changed = await run_op(
        "sql_query",
        {"auth": "reports", "sql": "SELECT set_config('search_path', 'elsewhere', false) AS v"},
        pg,
    )
    assert changed["rows"] == [{"v": "elsewhere"}]
    with pytest.raises(TimeoutError_):  # cancelled by statement_timeout: the connection is still usable
        await run_op("sql_query", {"auth": "reports", "sql": "SELECT pg_sleep(5)", "timeout_s": 0.3}, pg)
    first = await _pid(pg)
    path = await run_op(
        "sql_query", {"auth": "reports", "sql": "SELECT current_setting('search_path') AS v"}, pg
    )
    assert path["rows"] == [{"v": f"s_{namespace}"}]  # the session setting did not outlive its call
    assert await _pid(pg) == first
    assert await _backends(namespace) == {first}


async def test_postgres_pools_are_per_tenant(pg: OpContext, pools: PostgresPools, namespace: str) -> None:
    acme = await _pid(pg)
    globex = await _pid(other_tenant(pg))
    assert acme != globex
    assert await _pid(pg) == acme and await _pid(other_tenant(pg)) == globex
    assert await _backends(namespace) == {acme, globex}
    assert {tenant for tenant, _ in pools.stats()} == {"acme", "globex"}


async def test_a_pool_opens_at_most_max_size_connections(tmp_path: Path, namespace: str) -> None:
    dsn = f"{PG_BASE}?application_name={namespace}"
    pools = PostgresPools(max_size=2)
    ctx = ctx_for(tmp_path, credentials={"reports": {"dsn": dsn}}, postgres=pools)
    try:
        sql = "SELECT pg_backend_pid() AS pid, pg_sleep(0.1) AS slept"
        outs = await asyncio.gather(
            *(run_op("sql_query", {"auth": "reports", "sql": sql}, ctx) for _ in range(6))
        )
        pids = {out["rows"][0]["pid"] for out in outs}
        assert len(pids) == 2
        assert await _backends(namespace) == pids
    finally:
        await pools.close()


async def test_idle_connections_and_empty_pools_are_evicted(tmp_path: Path, namespace: str) -> None:
    dsn = f"{PG_BASE}?application_name={namespace}"
    pools = PostgresPools(max_idle_s=0.2)
    ctx = ctx_for(tmp_path, credentials={"reports": {"dsn": dsn}}, postgres=pools)
    try:
        pid = await _pid(ctx)
        assert await _backends(namespace) == {pid}

        async def gone() -> bool:
            return not await _backends(namespace) and pools.stats() == {}

        await eventually(gone, 10.0, "the idle connection to be closed by the sweep")
        assert await _pid(ctx) != pid  # a new connection, in a new pool
    finally:
        await pools.close()


async def test_the_least_recently_used_pool_is_dropped_past_max_pools(tmp_path: Path, namespace: str) -> None:
    pools = PostgresPools(max_pools=1)
    credentials = {"reports": {"dsn": f"{PG_BASE}?application_name={namespace}"}}
    ctx = ctx_for(tmp_path, credentials=credentials, postgres=pools)
    try:
        acme = await _pid(ctx)
        globex = await _pid(other_tenant(ctx))

        async def only_globex() -> bool:
            return await _backends(namespace) == {globex}

        await eventually(only_globex, 10.0, "acme's pool to be closed")
        assert acme != globex and list(pools.stats()) == [("globex", credentials["reports"]["dsn"])]
    finally:
        await pools.close()


async def test_closed_pools_close_their_connections_and_refuse_calls(
    pg: OpContext, pools: PostgresPools, namespace: str
) -> None:
    await _pid(pg)
    await _pid(other_tenant(pg))
    assert len(await _backends(namespace)) == 2
    await pools.close()

    async def none_left() -> bool:
        return not await _backends(namespace)

    await eventually(none_left, 10.0, "the pooled connections to be closed")
    with pytest.raises(UnavailableError, match="shutting down"):
        await _pid(pg)


async def test_without_pools_each_call_has_its_own_connection(pg: OpContext, namespace: str) -> None:
    unpooled = dataclasses.replace(pg, services=dataclasses.replace(pg.services, postgres=None))
    assert await _pid(unpooled) != await _pid(unpooled)

    async def none_left() -> bool:
        return not await _backends(namespace)

    await eventually(none_left, 10.0, "the per-call connections to be closed")


# -- RabbitMQ -------------------------------------------------------------------------------------------


@pytest.fixture
async def exchange(
    amqp: AbstractRobustConnection, namespace: str
) -> AsyncIterator[tuple[str, aio_pika.abc.AbstractQueue]]:
    """A tenant's topic exchange (outside OpenClaw's names) with a queue bound for orders.*."""
    channel = await amqp.channel()
    name = f"ext-{namespace}"
    ex = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, auto_delete=False)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(ex, "orders.*")
    yield name, queue
    await queue.delete(if_unused=False, if_empty=False)
    await ex.delete()
    await channel.close()


def _amqp_ctx(tmp_path: Path, amqp: AbstractRobustConnection, namespace: str, name: str) -> OpContext:
    credentials = {"events": {"exchanges": f"{name},{name}-missing"}, "anything": {"exchanges": "*"}}
    return ctx_for(tmp_path, amqp=amqp, namespace=namespace, credentials=credentials)


async def test_amqp_publish_is_confirmed_and_carries_the_tenant(
    tmp_path: Path, amqp: AbstractRobustConnection, namespace: str, exchange: tuple[str, Any]
) -> None:
    name, queue = exchange
    ctx = dataclasses.replace(
        _amqp_ctx(tmp_path, amqp, namespace, name), prev_output={"order": 7}, has_prev=True
    )
    out = await run_op(
        "amqp_publish",
        {
            "auth": "events",
            "exchange": name,
            "routing_key": "orders.paid",
            "headers": {"openclaw-tenant": "forged", "x": 1},
        },
        ctx,
    )
    message = await queue.get(no_ack=True, timeout=5)
    assert json.loads(message.body) == {"order": 7}
    assert message.content_type == "application/json"
    assert message.message_id == out["message_id"]
    assert message.headers["openclaw-tenant"] == "acme"
    assert message.headers["x"] == 1
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    await run_op(
        "amqp_publish",
        {
            "auth": "events",
            "exchange": name,
            "routing_key": "orders.note",
            "message": "plain",
            "format": "text",
        },
        ctx,
    )
    text = await queue.get(no_ack=True, timeout=5)
    assert text.body == b"plain"
    assert text.message_id != out["message_id"]
    retried = await run_op(
        "amqp_publish", {"auth": "events", "exchange": name, "routing_key": "orders.paid"}, ctx
    )
    assert retried["message_id"] == out["message_id"]  # a retry of the step: consumers can drop the copy
    assert (await queue.get(no_ack=True, timeout=5)).message_id == out["message_id"]


async def test_amqp_publish_refuses_openclaws_exchanges_and_missing_routes(
    tmp_path: Path,
    amqp: AbstractRobustConnection,
    namespace: str,
    topology: Topology,
    exchange: tuple[str, Any],
) -> None:
    name, _ = exchange
    ctx = _amqp_ctx(tmp_path, amqp, namespace, name)
    channel = await amqp.channel()
    await topology.declare(channel)
    for own in (topology.task_exchange, topology.dead_exchange):
        with pytest.raises(PermissionDeniedError, match="belongs to OpenClaw itself"):
            await run_op(
                "amqp_publish",
                {"auth": "anything", "exchange": own, "routing_key": "task", "message": 1},
                ctx,
            )
    tasks = await channel.declare_queue(topology.task_queue, passive=True)
    assert tasks.declaration_result.message_count == 0
    with pytest.raises(NotFoundError, match=f"exchange: '{name}-missing' does not exist"):
        await run_op("amqp_publish", {"auth": "events", "exchange": f"{name}-missing", "message": 1}, ctx)
    with pytest.raises(NotFoundError, match="routing_key: no queue is bound"):
        await run_op(
            "amqp_publish",
            {"auth": "events", "exchange": name, "routing_key": "nobody.home", "message": 1},
            ctx,
        )
    out = await run_op(
        "amqp_publish",
        {"auth": "events", "exchange": name, "routing_key": "nobody.home", "message": 1, "mandatory": False},
        ctx,
    )
    assert out["routing_key"] == "nobody.home"
    await channel.close()


# -- MQTT -----------------------------------------------------------------------------------------------


def _mqtt_ctx(tmp_path: Path, namespace: str) -> OpContext:
    credentials = {
        "broker": {"url": "mqtt://127.0.0.1:1883", "topics": f"{namespace}/#"},
        "closed": {"url": "mqtt://127.0.0.1:1"},
    }
    return ctx_for(tmp_path, credentials=credentials)


def _subscriber(namespace: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        1883,
        identifier=f"sub-{namespace}-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V5,
    )


async def test_mqtt_publish_sends_payload_and_mqtt5_properties(tmp_path: Path, namespace: str) -> None:
    ctx = _mqtt_ctx(tmp_path, namespace)
    topic = f"{namespace}/orders/paid"
    async with _subscriber(namespace) as sub:
        await sub.subscribe(f"{namespace}/orders/#", qos=1)
        out = await run_op(
            "mqtt_publish",
            {
                "auth": "broker",
                "topic": topic,
                "payload": {"order": 7},
                "qos": 1,
                "user_properties": {"source": "wf"},
            },
            ctx,
        )
        async with asyncio.timeout(10):
            message = await anext(aiter(sub.messages))
    assert out == {"topic": topic, "qos": 1, "retain": False, "bytes": len(b'{"order":7}')}
    assert str(message.topic) == topic
    assert message.qos == 1
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload) == {"order": 7}
    props = message.properties
    assert getattr(props, "UserProperty", None) == [("source", "wf")]
    assert getattr(props, "ContentType", None) == "application/json"


async def test_mqtt_retained_messages_reach_later_subscribers(tmp_path: Path, namespace: str) -> None:
    ctx = _mqtt_ctx(tmp_path, namespace)
    topic = f"{namespace}/state"
    await run_op(
        "mqtt_publish",
        {"auth": "broker", "topic": topic, "payload": "on", "format": "text", "retain": True},
        ctx,
    )
    try:
        async with _subscriber(namespace) as sub:
            await sub.subscribe(topic, qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(sub.messages))
        assert message.payload == b"on"
        assert message.retain is True
    finally:  # an empty retained payload clears the topic
        await run_op(
            "mqtt_publish",
            {"auth": "broker", "topic": topic, "payload": "", "format": "text", "retain": True},
            ctx,
        )


async def test_mqtt_publish_errors(tmp_path: Path, namespace: str) -> None:
    ctx = _mqtt_ctx(tmp_path, namespace)
    with pytest.raises(PermissionDeniedError, match="does not allow publishing"):
        await run_op("mqtt_publish", {"auth": "broker", "topic": "elsewhere/x", "payload": 1}, ctx)
    with pytest.raises(UnavailableError, match="MQTT publish"):
        await run_op(
            "mqtt_publish", {"auth": "closed", "topic": f"{namespace}/x", "payload": 1, "timeout_s": 5}, ctx
        )


# -- webhooks -------------------------------------------------------------------------------------------

SECRET = "whsec-test"


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on loopback that verifies signatures as docs describe; yields its URL and log."""
    seen: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        ts = request.headers["X-OpenClaw-Timestamp"]
        expected = "v1=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + raw, hashlib.sha256).hexdigest()
        valid = (
            hmac.compare_digest(expected, request.headers["X-OpenClaw-Signature"])
            and abs(time.time() - int(ts)) < 300
        )
        seen.append({"headers": dict(request.headers), "body": raw, "valid": valid})
        if not valid:
            return web.json_response({"error": "bad signature"}, status=401)
        return web.json_response({"received": json.loads(raw)})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/hook", seen
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient(allow_private_network=True) as client:
        yield client


async def test_webhook_is_signed_so_the_receiver_can_verify_it(
    tmp_path: Path, receiver: tuple[str, list[dict[str, Any]]], http: HttpClient
) -> None:
    url, seen = receiver
    credentials = {
        "hooks": {"signing_secret": SECRET, "hosts": "127.0.0.1"},
        "wrong": {"signing_secret": "nope"},
    }
    ctx = ctx_for(tmp_path, http=http, credentials=credentials, prev={"alert": "disk"}, has_prev=True)
    out = await run_op("webhook_send", {"url": url, "auth": "hooks", "event": "alert.raised"}, ctx)
    assert out["status"] == 200
    assert out["body"] == {"received": {"alert": "disk"}}
    assert seen[0]["valid"] is True
    assert seen[0]["headers"]["X-OpenClaw-Event"] == "alert.raised"
    assert seen[0]["headers"]["X-OpenClaw-Delivery"] == out["delivery_id"]
    again = await run_op("webhook_send", {"url": url, "auth": "hooks"}, ctx)  # a retry of the same step
    assert again["delivery_id"] == out["delivery_id"]
    checked = await run_op(
        "webhook_verify",
        {
            "auth": "hooks",
            "body": seen[0]["body"].decode(),
            "timestamp": seen[0]["headers"]["X-OpenClaw-Timestamp"],
            "signature": seen[0]["headers"]["X-OpenClaw-Signature"],
        },
        ctx,
    )
    assert checked == {"valid": True, "reason": None, "payload": {"alert": "disk"}}
    with pytest.raises(PermissionDeniedError, match="answered HTTP 401"):
        await run_op("webhook_send", {"url": url, "auth": "wrong", "payload": {"x": 1}}, ctx)
    assert seen[-1]["valid"] is False


async def test_webhook_goes_through_the_ssrf_guard(
    tmp_path: Path, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, seen = receiver
    async with HttpClient(allow_private_network=False) as guarded:
        ctx = ctx_for(tmp_path, http=guarded, credentials={"hooks": {"signing_secret": SECRET}})
        with pytest.raises(PermissionDeniedError, match="loopback, private or link-local"):
            await run_op("webhook_send", {"url": url, "auth": "hooks", "payload": 1}, ctx)
    assert seen == []


# -- through the executor -------------------------------------------------------------------------------


async def test_a_workflow_uses_redis_sqlite_and_rabbitmq_through_the_executor(
    harness: Harness,  # noqa: F811
    redis: Redis,
    namespace: str,
    exchange: tuple[str, Any],
) -> None:
    name, queue = exchange
    await harness.start(credentials={"events": {"exchanges": [name], "tenants": ["acme"]}})
    workflow = {
        "name": "orders",
        "steps": [
            {"id": "remember", "type": "kv_set", "params": {"key": "last", "value": {"order": 7}}},
            {"id": "count", "type": "kv_incr", "params": {"key": "orders", "by": 2}},
            {
                "id": "table",
                "type": "sql_execute",
                "params": {"path": "shop.db", "sql": "CREATE TABLE seen (n)"},
            },
            {
                "id": "insert",
                "type": "sql_execute",
                "params": {
                    "path": "shop.db",
                    "sql": "INSERT INTO seen VALUES (?)",
                    "params": ["${{ steps.count.output }}"],
                },
            },
            {"id": "read", "type": "kv_get", "params": {"key": "last"}},
            {
                "id": "notify",
                "type": "amqp_publish",
                "params": {"auth": "events", "exchange": name, "routing_key": "orders.new"},
            },
        ],
    }
    record = await harness.wait(await harness.submit(workflow))
    assert record.status == "succeeded", record.error
    assert record.result["exchange"] == name
    message = await queue.get(no_ack=True, timeout=5)
    assert json.loads(message.body) == {"order": 7}
    assert await redis.get(f"{namespace}:acme:kv:orders") == "2"
    rows = await run_op(
        "sql_query", {"path": "shop.db", "sql": "SELECT n FROM seen"}, ctx_for(harness.storage)
    )
    assert rows["rows"] == [{"n": 2}]


async def test_the_executor_pools_postgres_connections_and_closes_them_when_it_stops(
    harness: Harness,  # noqa: F811
    namespace: str,
) -> None:
    dsn = f"{PG_BASE}?application_name={namespace}"
    app = await harness.start(credentials={"reports": {"dsn": dsn, "tenants": ["acme"]}})
    workflow = {
        "name": "pids",
        "steps": [
            {
                "id": "one",
                "type": "sql_query",
                "params": {"auth": "reports", "sql": "SELECT pg_backend_pid() AS pid"},
            },
            {
                "id": "two",
                "type": "sql_query",
                "params": {
                    "auth": "reports",
                    "sql": "SELECT pg_backend_pid() AS pid, %s::int AS before",
                    "params": ["${{ steps.one.output.rows[0].pid }}"],
                },
            },
        ],
    }
    record = await harness.wait(await harness.submit(workflow))
    assert record.status == "succeeded", record.error
    [row] = record.result["rows"]
    assert row["pid"] == row["before"]  # the second step had the first step's connection
    assert await _backends(namespace) == {row["pid"]}  # and it stays open for the next task
    await app.stop()

    async def none_left() -> bool:
        return not await _backends(namespace)

    await eventually(none_left, 10.0, "the executor's pooled connections to be closed")
