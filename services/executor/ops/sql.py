"""SQL operations against SQLite files in the tenant's storage and PostgreSQL through a credential set.

A step names its database with ``path`` (an SQLite file under the tenant's storage root) or ``auth`` (a
credential set with a ``dsn``, e.g. ``{"dsn": "postgresql://app@db/reports", "tenants": ["acme"]}``; the
executor pools its connections per tenant and DSN).
Parameters are always bound, never formatted into the text: SQLite takes ``?`` or ``:name`` placeholders,
PostgreSQL ``%s`` or ``%(name)s`` (a literal ``%`` is then written ``%%``). JSON objects and lists bind as
JSON text in SQLite, as jsonb and arrays in PostgreSQL. Rows come back as objects keyed by column name.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, model_validator

from services.common.errors import InvalidInputError, PermissionDeniedError
from services.executor.context import OpContext
from services.executor.ops import _postgres, _sqlite
from services.executor.ops._sql_rows import Bound, Result, Statement
from services.executor.ops.base import Params, operation, scoped_credential
from services.executor.ops.paths import resolve_path

CATEGORY = "sql"
MAX_SQL_CHARS = 100_000
MAX_PARAMS = 1000

Sql = Annotated[str, Field(min_length=1, max_length=MAX_SQL_CHARS, description="One SQL statement.")]
SqlParams = Annotated[
    list[Any] | dict[str, Any] | None,
    Field(description="Values bound to the placeholders: a list (?, %s) or an object (:name, %(name)s)."),
]


class _Target(Params):
    path: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="SQLite database file, relative to the tenant's storage.",
    )
    auth: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Credential set whose `dsn` names a PostgreSQL database.",
    )
    timeout_s: float = Field(30.0, gt=0, le=300, description="Longest the whole call may take.")

    @model_validator(mode="after")
    def _one_target(self) -> _Target:
        if (self.path is None) == (self.auth is None):
            raise ValueError("give path (an SQLite file) or auth (a PostgreSQL credential set), exactly one")
        return self


def _check_bound(params: Bound, where: str) -> None:
    size = len(params) if params is not None else 0
    if size > MAX_PARAMS:
        raise InvalidInputError(f"{where}: at most {MAX_PARAMS} values", param=where)


async def _run(
    p: _Target,
    ctx: OpContext,
    statements: list[Statement],
    *,
    query: bool,
    read_only: bool,
) -> list[Result]:
    """Run statements on the step's database, in one transaction (writes) or read-only."""
    max_bytes = ctx.services.max_output_bytes
    if p.auth is not None:
        credential = scoped_credential(ctx, p.auth)
        dsn = credential.get("dsn")
        if not dsn:
            raise InvalidInputError(f"auth: credential set {p.auth!r} has no dsn for PostgreSQL", auth=p.auth)
        return await _postgres.run(
            dsn,
            statements,
            query=query,
            read_only=read_only,
            timeout_s=p.timeout_s,
            max_bytes=max_bytes,
            name=p.auth,
            tenant=ctx.tenant,
            pools=ctx.services.postgres,
        )
    assert p.path is not None
    if ctx.services.sealer is not None:
        # SQLite needs the database as a plain file it can page through; it cannot be one sealed blob.
        raise PermissionDeniedError(
            "path: SQLite files in the tenant's storage are not available while files are encrypted at rest "
            "(master keys are configured); use a PostgreSQL credential set (auth) instead",
            param="path",
        )
    mode: _sqlite.Mode = "ro" if read_only else ("rw" if query else "rwc")
    relative = p.path

    def blocking() -> list[Result]:
        path: Path = resolve_path(ctx.tenant_root, relative, param="path")
        return _sqlite.run(
            path,
            mode,
            statements,
            timeout_s=p.timeout_s,
            max_bytes=max_bytes,
            transaction=not read_only,
            name=relative,
        )

    return await asyncio.to_thread(blocking)


# -- sql_query ------------------------------------------------------------------------------------------


class SqlQueryParams(_Target):
    sql: Sql
    params: SqlParams = None
    max_rows: int = Field(1000, ge=1, le=10_000, description="Most rows returned (`truncated` says if cut).")
    read_only: bool = Field(
        True, description="Run read-only (false: a query may also write, e.g. RETURNING)."
    )


@operation("sql_query", category=CATEGORY, params=SqlQueryParams)
async def sql_query(p: SqlQueryParams, ctx: OpContext) -> dict[str, Any]:
    """Run one SELECT against an SQLite file or PostgreSQL (read-only by default); returns columns, rows as
    objects, row_count and whether rows were cut at max_rows."""
    _check_bound(p.params, "params")
    stmt = Statement(p.sql, p.params, max_rows=p.max_rows)
    [result] = await _run(p, ctx, [stmt], query=True, read_only=p.read_only)
    return result.query_output()


# -- sql_execute ----------------------------------------------------------------------------------------


class SqlExecuteParams(_Target):
    sql: Sql
    params: SqlParams = None
    many: list[list[Any] | dict[str, Any]] | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="Run the statement once per parameter set (a batch).",
    )
    max_rows: int = Field(1000, ge=1, le=10_000, description="Most rows kept from a RETURNING clause.")

    @model_validator(mode="after")
    def _params_or_many(self) -> SqlExecuteParams:
        if self.many is not None and self.params is not None:
            raise ValueError("give params or many, not both")
        return self


@operation("sql_execute", category=CATEGORY, params=SqlExecuteParams)
async def sql_execute(p: SqlExecuteParams, ctx: OpContext) -> dict[str, Any]:
    """Run one writing statement (INSERT, UPDATE, DELETE, DDL), once or per parameter set in `many`, in one
    transaction; returns rowcount, lastrowid (SQLite) and any RETURNING rows. Creates a missing SQLite file."""
    _check_bound(p.params, "params")
    for index, bound in enumerate(p.many or ()):
        _check_bound(bound, f"many[{index}]")
    stmt = Statement(p.sql, p.params, max_rows=p.max_rows, many=list(p.many) if p.many is not None else None)
    [result] = await _run(p, ctx, [stmt], query=False, read_only=False)
    return result.execute_output()


# -- sql_transaction ------------------------------------------------------------------------------------


class SqlStatement(Params):
    sql: Sql
    params: SqlParams = None


class SqlTransactionParams(_Target):
    statements: list[SqlStatement] = Field(
        min_length=1, max_length=100, description="Statements run in order in one transaction: all or none."
    )
    max_rows: int = Field(1000, ge=1, le=10_000, description="Most rows kept from each statement.")


@operation("sql_transaction", category=CATEGORY, params=SqlTransactionParams)
async def sql_transaction(p: SqlTransactionParams, ctx: OpContext) -> list[dict[str, Any]]:
    """Run several statements in order in one transaction, all or none; returns each statement's rowcount
    and rows (if it returned any)."""
    for index, s in enumerate(p.statements):
        _check_bound(s.params, f"statements[{index}].params")
    stmts = [Statement(s.sql, s.params, max_rows=p.max_rows) for s in p.statements]
    results = await _run(p, ctx, stmts, query=False, read_only=False)
    return [r.execute_output() for r in results]


# -- sql_tables -----------------------------------------------------------------------------------------

_SQLITE_TABLES = """
SELECT m.name AS "table", m.type AS kind, c.name AS "column", c.type AS type, c."notnull" AS required, c.pk AS pk
FROM sqlite_schema AS m JOIN pragma_table_info(m.name) AS c
WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
ORDER BY m.name, c.cid
"""
_PG_TABLES = """
SELECT c.table_name AS "table", lower(t.table_type) AS kind, c.column_name AS "column", c.data_type AS type,
       c.is_nullable = 'NO' AS required, 0 AS pk
FROM information_schema.columns c
JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = %(schema)s
ORDER BY c.table_name, c.ordinal_position
"""


class SqlTablesParams(_Target):
    schema_: str = Field(
        "public", alias="schema", min_length=1, max_length=63, description="PostgreSQL schema to describe."
    )


@operation("sql_tables", category=CATEGORY, params=SqlTablesParams)
async def sql_tables(p: SqlTablesParams, ctx: OpContext) -> list[dict[str, Any]]:
    """Describe a database's tables and views: name, kind and columns (name, type, nullable, primary key in
    SQLite)."""
    if p.auth is not None:
        stmt = Statement(_PG_TABLES, {"schema": p.schema_}, max_rows=100_000)
    else:
        stmt = Statement(_SQLITE_TABLES, max_rows=100_000)
    [result] = await _run(p, ctx, [stmt], query=True, read_only=True)
    if result.truncated:
        raise InvalidInputError("the schema is too large to describe in one step output")
    tables: dict[str, dict[str, Any]] = {}
    for row in result.rows:
        kind = "view" if "view" in str(row["kind"]) else "table"
        table = tables.setdefault(row["table"], {"name": row["table"], "kind": kind, "columns": []})
        column: dict[str, Any] = {"name": row["column"], "type": row["type"], "nullable": not row["required"]}
        if p.path is not None:
            column["primary_key"] = bool(row["pk"])
        table["columns"].append(column)
    return list(tables.values())


OPERATIONS = (sql_query, sql_execute, sql_transaction, sql_tables)
