"""PostgreSQL through a named credential set's ``dsn``: one statement per call, bound, time-boxed, streamed.

Each call opens its own connection (the DSN is the tenant's), runs everything in one transaction (``READ
ONLY`` for queries unless asked) with a local ``statement_timeout``, and closes it. Statements go through the
extended protocol (prepared), so a ``;`` cannot smuggle in a second statement; queries read through a
server-side cursor and RETURNING rows are streamed, so only the rows kept stay in the worker's memory.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from services.common.errors import (
    InvalidInputError,
    OpenClawError,
    PermissionDeniedError,
    TimeoutError_,
    UnavailableError,
)
from services.executor.ops._sql_rows import Bound, Result, Statement, collect, column_names

CONNECT_TIMEOUT_S = 10
# Statements that return rows: read them as a stream, keeping only max_rows in memory.
_ROWS = re.compile(r"^\s*(select|with|values|table|show|explain)\b|\breturning\b", re.IGNORECASE)


def _bind(params: Bound) -> list[Any] | dict[str, Any] | None:
    """JSON params as PostgreSQL values: objects become jsonb, lists arrays."""

    def one(value: Any) -> Any:
        return Jsonb(value) if isinstance(value, dict) else value

    if params is None:
        return None
    if isinstance(params, dict):
        return {k: one(v) for k, v in params.items()}
    return [one(v) for v in params]


async def _run_one(
    conn: psycopg.AsyncConnection[Any],
    stmt: Statement,
    index: int,
    *,
    query: bool,
    read_only: bool,
    max_bytes: int,
) -> Result:
    result = Result()
    if query and read_only:  # DECLARE takes SELECT and VALUES; the server holds the rows not fetched
        async with conn.cursor(name=f"openclaw_{index}") as server_cursor:
            await server_cursor.execute(stmt.sql, _bind(stmt.params))
            if server_cursor.description is not None:
                rows = await server_cursor.fetchmany(stmt.max_rows + 1)
                names = column_names(c.name for c in server_cursor.description)
                collect(names, rows, stmt.max_rows, max_bytes, result)
            result.rowcount = len(result.rows)
        return result
    async with conn.cursor() as cursor:
        if stmt.many is not None:
            await cursor.executemany(stmt.sql, [_bind(p) or () for p in stmt.many])
        elif query or _ROWS.search(stmt.sql):
            return await _stream(cursor, stmt, max_bytes)
        else:
            await cursor.execute(stmt.sql, _bind(stmt.params), prepare=True)
            if cursor.description is not None:  # rows after all (a statement behind a comment, say)
                names = column_names(c.name for c in cursor.description)
                collect(names, await cursor.fetchmany(stmt.max_rows + 1), stmt.max_rows, max_bytes, result)
        result.rowcount = cursor.rowcount
    return result


async def _stream(cursor: psycopg.AsyncCursor[Any], stmt: Statement, max_bytes: int) -> Result:
    """A statement returning rows: they arrive one at a time and only the kept ones stay in memory; the
    rows are counted for rowcount (with RETURNING, every returned row is an affected row)."""
    result = Result()
    kept: list[Any] = []
    count = 0
    try:
        async for row in cursor.stream(stmt.sql, _bind(stmt.params)):
            count += 1
            if len(kept) <= stmt.max_rows:
                kept.append(row)
    except psycopg.ProgrammingError as exc:
        if exc.sqlstate is not None or "didn't produce a result" not in str(exc):
            raise
        return result  # the statement returned no rows after all ("returning" in a literal, a plain UPDATE)
    if cursor.description is not None:
        collect(column_names(c.name for c in cursor.description), kept, stmt.max_rows, max_bytes, result)
    result.rowcount = count
    return result


async def run(
    dsn: str,
    statements: list[Statement],
    *,
    query: bool,
    read_only: bool,
    timeout_s: float,
    max_bytes: int,
    name: str,
) -> list[Result]:
    """Run statements in one transaction on a fresh connection; errors name the statement and the problem."""
    index: int | None = None
    try:
        async with asyncio.timeout(timeout_s + CONNECT_TIMEOUT_S):
            conn = await _connect(dsn, name)
            async with conn:
                async with conn.transaction():
                    if read_only:
                        await conn.execute("SET TRANSACTION READ ONLY")
                    await conn.execute(
                        "SELECT set_config('statement_timeout', %s, true)", [str(int(timeout_s * 1000))]
                    )
                    results = []
                    for index, stmt in enumerate(statements):
                        results.append(
                            await _run_one(
                                conn, stmt, index, query=query, read_only=read_only, max_bytes=max_bytes
                            )
                        )
                    index = None
                return results
    except TimeoutError as exc:
        raise TimeoutError_(f"PostgreSQL ({name!r}) did not finish within timeout_s") from exc
    except psycopg.Error as exc:
        where = "sql" if index is None or len(statements) == 1 else f"statements[{index}].sql"
        raise error(exc, where, name, query=query) from exc


async def _connect(dsn: str, name: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        # libpq's message names host, port and user, never the password.
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UnavailableError(
            f"auth: cannot connect to PostgreSQL with credential set {name!r}: {reason}"
        ) from exc
    except psycopg.ProgrammingError as exc:  # a malformed DSN: its text may hold the password, so not echoed
        raise InvalidInputError(f"auth: credential set {name!r} holds a malformed dsn", auth=name) from exc


def error(exc: psycopg.Error, where: str, name: str, *, query: bool = False) -> OpenClawError:
    """The catalogue's error for a PostgreSQL failure."""
    primary = exc.diag.message_primary if exc.diag is not None else None
    text = primary or str(exc).strip().splitlines()[0]
    state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
    if isinstance(exc, pg_errors.QueryCanceled):
        return TimeoutError_(f"{where}: cancelled after timeout_s ({text})", param=where)
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return PermissionDeniedError(
            f"{where}: sql_query runs read-only unless read_only is false; use sql_execute to write ({text})",
            param=where,
        )
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return PermissionDeniedError(f"{where}: {text}{state}", param=where)
    if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected):
        return UnavailableError(f"{where}: {text}{state}; a retry may succeed", param=where)
    if exc.sqlstate is None and isinstance(exc, psycopg.OperationalError):
        return UnavailableError(f"PostgreSQL ({name!r}): {text}")
    if exc.sqlstate is None:  # raised by psycopg before the server saw it: placeholders and values
        return InvalidInputError(f"params: {text}", param="params")
    if exc.sqlstate.startswith(("08", "53", "57")):  # connection, resources, operator intervention
        return UnavailableError(f"PostgreSQL ({name!r}): {text}{state}")
    if "multiple commands" in text:
        text += "; one statement per call (sql_transaction runs several)"
    elif exc.sqlstate == "42601" and query:
        text += "; sql_query reads with SELECT, VALUES, TABLE or WITH ... SELECT (sql_execute writes)"
    return InvalidInputError(f"{where}: {text}{state}", param=where)
