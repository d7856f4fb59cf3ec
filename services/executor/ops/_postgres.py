"""PostgreSQL through a named credential set's ``dsn``: one statement per call, bound, time-boxed, streamed.

Each call takes a connection from the pool of its (tenant, DSN) (``PostgresPools``; without one, it opens and
closes a connection of its own) and runs everything in one transaction (``READ ONLY`` for queries unless
asked) with a local ``statement_timeout``. Statements go through the extended protocol (prepared), so a ``;``
cannot smuggle in a second statement; queries read through a server-side cursor and RETURNING rows are
streamed, so only the rows kept stay in the worker's memory.

A pool is never shared between tenants, even for the same DSN. A connection goes back to its pool only idle
and after ``DISCARD ALL``, so session settings, temporary tables, advisory locks and prepared statements of
one call never reach the next; one left mid-statement (a timeout) is closed instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from services.common.errors import (
    InvalidInputError,
    OpenClawError,
    PermissionDeniedError,
    TimeoutError_,
    UnavailableError,
)
from services.executor.ops._sql_rows import Bound, Result, Statement, collect, column_names

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
# Resetting a returned connection, or checking one that sat idle, must not hold a step for long.
RESET_TIMEOUT_S = 5.0
# A connection idle longer than this is checked with a round trip before use: the server may have dropped it.
CHECK_AFTER_S = 30.0
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


class _Pool:
    """The connections of one (tenant, DSN): at most max_size open at once, idle ones most recent last."""

    def __init__(self, dsn: str, max_size: int) -> None:
        self.dsn = dsn
        self._slots = asyncio.Semaphore(max_size)
        self.idle: list[tuple[float, psycopg.AsyncConnection[Any]]] = []  # (monotonic time returned, conn)
        self.users = 0  # calls holding or waiting for a connection
        self.closed = False

    @contextlib.asynccontextmanager
    async def connection(self, name: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        await self._slots.acquire()  # past max_size, a call waits (within its timeout) for one to come back
        try:
            conn = await self._take() or await _connect(self.dsn, name)
        except BaseException:
            self._slots.release()
            raise
        try:
            yield conn
        finally:
            # Shielded: a call cancelled by its timeout still resets or closes its connection, and frees
            # the slot only then, so no more than max_size are ever open.
            await asyncio.shield(self._give_back(conn))

    async def _take(self) -> psycopg.AsyncConnection[Any] | None:
        while self.idle:
            since, conn = self.idle.pop()
            if conn.closed:
                continue
            if time.monotonic() - since < CHECK_AFTER_S:
                return conn
            try:
                alive = await _alive(conn)
            except BaseException:  # cancelled mid-check: out of the pool already, so closed here
                await conn.close()
                raise
            if alive:
                return conn
            await conn.close()
        return None

    async def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Back to the pool if idle and reset, else closed; then the slot is free."""
        try:
            if not self.closed and not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
                try:
                    async with asyncio.timeout(RESET_TIMEOUT_S):
                        await conn.execute("DISCARD ALL")
                except (psycopg.Error, TimeoutError):
                    pass
                else:
                    if not self.closed:  # closed meanwhile: nobody would ever close it
                        self.idle.append((time.monotonic(), conn))
                        return
            await conn.close()
        finally:
            self._slots.release()

    async def evict_idle(self, older_than: float) -> None:
        """Close connections returned before ``older_than`` (a monotonic time)."""
        stale = [conn for since, conn in self.idle if since < older_than]
        self.idle = [(since, conn) for since, conn in self.idle if since >= older_than]
        for conn in stale:
            await conn.close()

    async def close(self) -> None:
        """Close idle connections now; those in use are closed when they come back."""
        self.closed = True
        await self.evict_idle(float("inf"))


async def _alive(conn: psycopg.AsyncConnection[Any]) -> bool:
    try:
        async with asyncio.timeout(RESET_TIMEOUT_S):
            await conn.execute("SELECT 1")
    except (psycopg.Error, TimeoutError):
        return False
    return True


class PostgresPools:
    """Pooled PostgreSQL connections for the sql operations: one bounded pool per (tenant, DSN).

    Keyed by tenant as well as DSN, so two tenants given the same credential set never share a connection
    (nor its session state). Connections idle for ``max_idle_s`` are closed, and pools left empty dropped,
    by a periodic sweep; past ``max_pools`` the least recently used pool is dropped. ``close()``
    (the executor's shutdown) closes every connection and refuses new calls.
    """

    def __init__(self, *, max_size: int = 4, max_idle_s: float = 300.0, max_pools: int = 128) -> None:
        if max_size < 1 or max_pools < 1 or max_idle_s <= 0:
            raise ValueError(
                f"PostgresPools needs max_size >= 1, max_pools >= 1 and max_idle_s > 0 "
                f"(got {max_size}, {max_pools}, {max_idle_s})"
            )
        self.max_size = max_size
        self.max_idle_s = max_idle_s
        self.max_pools = max_pools
        self._pools: OrderedDict[tuple[str, str], _Pool] = OrderedDict()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    @contextlib.asynccontextmanager
    async def connection(
        self, tenant: str, dsn: str, name: str
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of the tenant's pool for ``dsn``; ``name`` (the credential set) is for errors."""
        if self._closed:
            raise UnavailableError("PostgreSQL connections are closed: this executor is shutting down")
        key = (tenant, dsn)
        pool = self._pools.get(key)
        dropped: list[_Pool] = []
        if pool is None:
            _check_dsn(dsn, name)
            pool = self._pools[key] = _Pool(dsn, self.max_size)
            while len(self._pools) > self.max_pools:
                dropped.append(self._pools.popitem(last=False)[1])
        else:
            self._pools.move_to_end(key)
        # Counted before any await, so a sweep meanwhile does not drop the pool this call is about to use.
        pool.users += 1
        try:
            if self._sweeper is None or self._sweeper.done():
                # A context of its own: the sweep outlives this step and is not part of its span or tenant.
                self._sweeper = asyncio.create_task(
                    self._sweep_forever(), name="openclaw-postgres-pools", context=contextvars.Context()
                )
            for old in dropped:
                await old.close()
            async with pool.connection(name) as conn:
                yield conn
        finally:
            pool.users -= 1

    def stats(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(calls using or waiting for a connection, idle connections) per (tenant, DSN) pool; a DSN may
        hold a password, so this is not for logs."""
        return {key: (pool.users, len(pool.idle)) for key, pool in self._pools.items()}

    async def sweep(self) -> None:
        """Close connections idle past max_idle_s and drop pools left with no connection."""
        older_than = time.monotonic() - self.max_idle_s
        for key, pool in list(self._pools.items()):
            await pool.evict_idle(older_than)
            if not pool.idle and not pool.users and self._pools.get(key) is pool:
                del self._pools[key]
                pool.closed = True  # a connection still being reset is then closed, not kept

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(min(self.max_idle_s / 2, 30.0))
            try:
                await self.sweep()
            except Exception:  # a failed close must not stop later sweeps
                log.warning("sweeping idle PostgreSQL connections failed", exc_info=True)

    async def close(self) -> None:
        """Close every pool; connections still in use are closed when their call ends."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            await pool.close()


def _check_dsn(dsn: str, name: str) -> None:
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:  # its text may hold the password, so not echoed
        raise InvalidInputError(f"auth: credential set {name!r} holds a malformed dsn", auth=name) from exc


async def run(
    dsn: str,
    statements: list[Statement],
    *,
    query: bool,
    read_only: bool,
    timeout_s: float,
    max_bytes: int,
    name: str,
    tenant: str,
    pools: PostgresPools | None = None,
) -> list[Result]:
    """Run statements in one transaction on a connection of the tenant's pool (a fresh one without pools);
    errors name the statement and the problem."""
    index: int | None = None
    try:
        async with asyncio.timeout(timeout_s + CONNECT_TIMEOUT_S):
            async with _connection(pools, tenant, dsn, name) as conn:
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


@contextlib.asynccontextmanager
async def _connection(
    pools: PostgresPools | None, tenant: str, dsn: str, name: str
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    if pools is not None:
        async with pools.connection(tenant, dsn, name) as conn:
            yield conn
    else:
        async with await _connect(dsn, name) as conn:
            yield conn


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
