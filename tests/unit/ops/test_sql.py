"""SQL operations on SQLite files in the tenant's storage: results, transactions, confinement and errors.

PostgreSQL runs are in tests/integration/test_infra_ops.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    TimeoutError_,
)
from services.executor.context import OpContext
from services.executor.ops import _sqlite
from services.executor.ops._sql_rows import json_value
from tests.unit.ops.harness import ctx_for, run_op

DB = "data/shop.db"


@pytest.fixture
async def ctx(tmp_path: Path) -> OpContext:
    """A tenant whose data/shop.db holds an items table with three rows."""
    ctx = ctx_for(tmp_path)
    await run_op(
        "sql_execute",
        {
            "path": DB,
            "sql": "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, price REAL, meta)",
        },
        ctx,
    )
    await run_op(
        "sql_execute",
        {
            "path": DB,
            "sql": "INSERT INTO items (name, price, meta) VALUES (?, ?, ?)",
            "many": [["apple", 1.5, {"colour": "red"}], ["pear", 2.0, None], ["fig", 3.25, [1, 2]]],
        },
        ctx,
    )
    return ctx


async def test_execute_creates_the_file_inside_the_tenant_root(ctx: OpContext) -> None:
    assert (ctx.tenant_root / DB).is_file()
    out = await run_op(
        "sql_execute",
        {"path": DB, "sql": "INSERT INTO items (name) VALUES (:n)", "params": {"n": "kiwi"}},
        ctx,
    )
    assert out == {"rowcount": 1, "lastrowid": 4}


async def test_query_returns_rows_as_objects_with_bound_params(ctx: OpContext) -> None:
    out = await run_op(
        "sql_query",
        {
            "path": DB,
            "sql": "SELECT name, price, json_extract(meta, '$.colour') AS colour FROM items WHERE price > ? ORDER BY id",
            "params": [1.0],
        },
        ctx,
    )
    assert out == {
        "columns": ["name", "price", "colour"],
        "rows": [
            {"name": "apple", "price": 1.5, "colour": "red"},
            {"name": "pear", "price": 2.0, "colour": None},
            {"name": "fig", "price": 3.25, "colour": None},
        ],
        "row_count": 3,
        "truncated": False,
    }


async def test_a_bound_value_is_data_never_sql(ctx: OpContext) -> None:
    hostile = "x'; DROP TABLE items; --"
    out = await run_op(
        "sql_query",
        {"path": DB, "sql": "SELECT count(*) AS n FROM items WHERE name = ?", "params": [hostile]},
        ctx,
    )
    assert out["rows"] == [{"n": 0}]
    still = await run_op("sql_query", {"path": DB, "sql": "SELECT count(*) AS n FROM items"}, ctx)
    assert still["rows"] == [{"n": 3}]


async def test_rows_past_max_rows_are_cut_and_flagged(ctx: OpContext) -> None:
    out = await run_op(
        "sql_query", {"path": DB, "sql": "SELECT id FROM items ORDER BY id", "max_rows": 2}, ctx
    )
    assert out["rows"] == [{"id": 1}, {"id": 2}]
    assert out["truncated"] is True


async def test_rows_past_the_output_limit_are_cut(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path, max_output_bytes=2048)
    sql = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 500) SELECT i, hex(randomblob(20)) AS h FROM n"
    await run_op("sql_execute", {"path": "x.db", "sql": "CREATE TABLE t (a)"}, ctx)
    out = await run_op("sql_query", {"path": "x.db", "sql": sql}, ctx)
    assert out["truncated"] is True
    assert 0 < out["row_count"] < 500


async def test_duplicate_column_names_keep_every_value(ctx: OpContext) -> None:
    out = await run_op("sql_query", {"path": DB, "sql": "SELECT 1 AS id, 2 AS id, x'00ff' AS raw"}, ctx)
    assert out["columns"] == ["id", "id_2", "raw"]
    assert out["rows"] == [{"id": 1, "id_2": 2, "raw": "AP8="}]


async def test_queries_are_read_only_unless_asked(ctx: OpContext) -> None:
    with pytest.raises(PermissionDeniedError, match="read-only"):
        await run_op("sql_query", {"path": DB, "sql": "DELETE FROM items"}, ctx)
    out = await run_op(
        "sql_query",
        {
            "path": DB,
            "sql": "UPDATE items SET price = price * 2 WHERE name = ? RETURNING name, price",
            "params": ["fig"],
            "read_only": False,
        },
        ctx,
    )
    assert out["rows"] == [{"name": "fig", "price": 6.5}]


async def test_execute_returns_rows_of_a_returning_clause(ctx: OpContext) -> None:
    out = await run_op(
        "sql_execute", {"path": DB, "sql": "DELETE FROM items WHERE price < 2.5 RETURNING name"}, ctx
    )
    assert out["rowcount"] == 2
    assert sorted(r["name"] for r in out["rows"]) == ["apple", "pear"]


async def test_a_transaction_is_all_or_nothing(ctx: OpContext) -> None:
    with pytest.raises(
        InvalidInputError, match=r"statements\[1\]\.sql: UNIQUE constraint failed: items.name"
    ):
        await run_op(
            "sql_transaction",
            {
                "path": DB,
                "statements": [
                    {"sql": "INSERT INTO items (name) VALUES (?)", "params": ["plum"]},
                    {"sql": "INSERT INTO items (name) VALUES (?)", "params": ["apple"]},
                ],
            },
            ctx,
        )
    out = await run_op(
        "sql_query", {"path": DB, "sql": "SELECT count(*) AS n FROM items WHERE name = 'plum'"}, ctx
    )
    assert out["rows"] == [{"n": 0}]
    done = await run_op(
        "sql_transaction",
        {
            "path": DB,
            "statements": [
                {"sql": "INSERT INTO items (name) VALUES (?)", "params": ["plum"]},
                {"sql": "SELECT count(*) AS n FROM items"},
            ],
        },
        ctx,
    )
    assert done == [
        {"rowcount": 1, "lastrowid": 4},
        {"rowcount": -1, "columns": ["n"], "rows": [{"n": 4}], "truncated": False},
    ]


async def test_a_batch_that_fails_part_way_writes_nothing(ctx: OpContext) -> None:
    with pytest.raises(InvalidInputError, match="NOT NULL constraint failed"):
        await run_op(
            "sql_execute",
            {"path": DB, "sql": "INSERT INTO items (name) VALUES (?)", "many": [["a"], [None]]},
            ctx,
        )
    out = await run_op("sql_query", {"path": DB, "sql": "SELECT count(*) AS n FROM items"}, ctx)
    assert out["rows"] == [{"n": 3}]


async def test_tables_describes_tables_views_and_columns(ctx: OpContext) -> None:
    await run_op(
        "sql_execute", {"path": DB, "sql": "CREATE VIEW cheap AS SELECT name FROM items WHERE price < 2"}, ctx
    )
    out = await run_op("sql_tables", {"path": DB}, ctx)
    assert [(t["name"], t["kind"]) for t in out] == [("cheap", "view"), ("items", "table")]
    items = out[1]["columns"]
    assert items[0] == {"name": "id", "type": "INTEGER", "nullable": True, "primary_key": True}
    assert items[1] == {"name": "name", "type": "TEXT", "nullable": False, "primary_key": False}


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("ATTACH DATABASE '{outside}' AS other", "ATTACH/DETACH"),
        ("VACUUM INTO '{outside}'", "ATTACH/DETACH"),
        ("SELECT load_extension('{outside}')", "load_extension"),
        ("PRAGMA temp_store_directory = '{outside}'", "temp_store_directory"),
        ("COMMIT", "BEGIN/COMMIT/ROLLBACK"),
    ],
)
async def test_statements_that_could_reach_other_files_or_the_transaction_are_refused(
    sql: str, message: str, ctx: OpContext, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.db"
    with pytest.raises(PermissionDeniedError, match=message):
        await run_op("sql_query", {"path": DB, "sql": sql.format(outside=outside)}, ctx)
    if not sql.startswith("VACUUM"):  # VACUUM cannot run inside sql_execute's transaction at all
        with pytest.raises(PermissionDeniedError, match=message):
            await run_op("sql_execute", {"path": DB, "sql": sql.format(outside=outside)}, ctx)
    assert not outside.exists()


async def test_a_database_stops_growing_at_its_size_limit(
    ctx: OpContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "MAX_DB_BYTES", 64 * 1024)
    with pytest.raises(PayloadTooLargeError, match=r"path: 'data/shop\.db' reached the size limit of 65536"):
        await run_op(
            "sql_execute",
            {"path": DB, "sql": "INSERT INTO items (name, meta) VALUES ('big', randomblob(200000))"},
            ctx,
        )
    with pytest.raises(PermissionDeniedError, match="PRAGMA max_page_count is fixed"):
        await run_op("sql_execute", {"path": DB, "sql": "PRAGMA max_page_count = 100000000"}, ctx)
    with pytest.raises(PermissionDeniedError, match="PRAGMA page_size is fixed"):
        await run_op("sql_query", {"path": DB, "sql": "PRAGMA page_size = 65536", "read_only": False}, ctx)
    out = await run_op("sql_query", {"path": DB, "sql": "SELECT count(*) AS n FROM items"}, ctx)
    assert out["rows"] == [{"n": 3}]


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("../other/shop.db", InvalidInputError, "contains '..'"),
        ("/etc/passwd", InvalidInputError, "is absolute"),
        ("nothing/here.db", NotFoundError, "no such database"),
    ],
)
async def test_paths_are_confined_to_the_tenant(
    path: str, error: type[Exception], message: str, ctx: OpContext
) -> None:
    with pytest.raises(error, match=message):
        await run_op("sql_query", {"path": path, "sql": "SELECT 1"}, ctx)


async def test_a_symlink_out_of_the_tenant_root_is_refused(ctx: OpContext, tmp_path: Path) -> None:
    outside = tmp_path / "outside.db"
    outside.write_bytes(b"")
    (ctx.tenant_root / "link.db").symlink_to(outside)
    with pytest.raises(PermissionDeniedError, match="outside the tenant's storage"):
        await run_op("sql_execute", {"path": "link.db", "sql": "CREATE TABLE t (a)"}, ctx)
    assert outside.read_bytes() == b""


async def test_a_file_that_is_not_a_database_is_named(ctx: OpContext) -> None:
    (ctx.tenant_root / "notes.txt").write_text("hello, not a database " * 100)
    with pytest.raises(InvalidInputError, match=r"path: 'notes\.txt' is not a usable SQLite database"):
        await run_op("sql_query", {"path": "notes.txt", "sql": "SELECT * FROM sqlite_schema"}, ctx)


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"sql": "SELEC 1"}, InvalidInputError, 'sql: near "SELEC": syntax error'),
        ({"sql": "SELECT * FROM missing"}, InvalidInputError, "sql: no such table: missing"),
        ({"sql": "SELECT ?", "params": [1, 2]}, InvalidInputError, "params: Incorrect number of bindings"),
        ({"sql": "SELECT 1; SELECT 2"}, InvalidInputError, "one statement at a time"),
    ],
)
async def test_sql_problems_name_what_is_wrong(
    params: dict[str, Any], error: type[Exception], message: str, ctx: OpContext
) -> None:
    with pytest.raises(error, match=message):
        await run_op("sql_query", {"path": DB, **params}, ctx)


async def test_a_statement_past_its_timeout_is_interrupted(ctx: OpContext) -> None:
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(TimeoutError_, match="sql: the statement ran past timeout_s"):
        await run_op("sql_query", {"path": DB, "sql": endless, "timeout_s": 0.2}, ctx)


@pytest.mark.parametrize(
    "params",
    [
        {"sql": "SELECT 1"},
        {"sql": "SELECT 1", "path": "a.db", "auth": "pg"},
        {"sql": "", "path": "a.db"},
        {"sql": "SELECT 1", "path": "a.db", "max_rows": 0},
        {"sql": "SELECT 1", "path": "a.db", "timeout_s": 301},
    ],
)
async def test_query_params_out_of_bounds_are_refused(params: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        await run_op("sql_query", params, ctx_for(tmp_path))


async def test_execute_takes_params_or_many_not_both(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="params or many"):
        await run_op(
            "sql_execute",
            {"path": "a.db", "sql": "SELECT ?", "params": [1], "many": [[1]]},
            ctx_for(tmp_path),
        )


async def test_too_many_bound_values_are_refused(ctx: OpContext) -> None:
    with pytest.raises(InvalidInputError, match="params: at most 1000 values"):
        await run_op("sql_query", {"path": DB, "sql": "SELECT 1", "params": list(range(1001))}, ctx)


async def test_postgres_needs_a_credential_set_with_a_dsn_for_this_tenant(tmp_path: Path) -> None:
    credentials = {"nodsn": {"user": "x"}, "theirs": {"dsn": "postgresql://db/x", "tenants": "globex"}}
    ctx = ctx_for(tmp_path, credentials=credentials)
    with pytest.raises(InvalidInputError, match="auth: unknown credential set 'missing'"):
        await run_op("sql_query", {"auth": "missing", "sql": "SELECT 1"}, ctx)
    with pytest.raises(InvalidInputError, match="auth: credential set 'nodsn' has no dsn"):
        await run_op("sql_query", {"auth": "nodsn", "sql": "SELECT 1"}, ctx)
    with pytest.raises(PermissionDeniedError, match="may not be used by tenant 'acme'"):
        await run_op("sql_tables", {"auth": "theirs"}, ctx)


def test_database_values_become_json() -> None:
    import datetime as dt
    import decimal
    import uuid

    assert json_value(decimal.Decimal("1.10")) == "1.10"
    assert json_value(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == "2026-01-02T03:04:05+00:00"
    assert json_value(dt.timedelta(minutes=2)) == 120.0
    assert json_value(float("nan")) == "nan"
    assert json_value(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert json_value({"a": [b"\x01", memoryview(b"\x02")]}) == {"a": ["AQ==", "Ag=="]}
