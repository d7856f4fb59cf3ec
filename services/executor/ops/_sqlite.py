"""SQLite files in the tenant's storage: opened confined, time-boxed, and unable to reach other files.

A database is opened by its resolved path (see paths.resolve_path) through a ``file:`` URI whose mode is
``ro`` (queries, unless asked), ``rw`` or ``rwc``. An authorizer refuses what could touch a file outside the
tenant's storage (ATTACH, and VACUUM INTO, which attaches; temp-directory pragmas; loading extensions) and
statements that would end the transaction the operation manages. A progress handler interrupts a statement
past its deadline; strings and blobs are capped so one value cannot eat the worker's memory, and a
database's size so a step cannot fill the disk. Blocking: run it in a thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    OpenClawError,
    PayloadTooLargeError,
    PermissionDeniedError,
    TimeoutError_,
    UnavailableError,
)
from services.executor.ops._sql_rows import Bound, Result, Statement, collect, column_names

Mode = Literal["ro", "rw", "rwc"]
MAX_VALUE_BYTES = 16 * 1024 * 1024
MAX_DB_BYTES = 1024**3  # a database stops growing here ("full"), so a step cannot fill the disk
_PROGRESS_STEPS = 10_000  # VM instructions between deadline checks
_DENIED_PRAGMAS = frozenset({"temp_store_directory", "data_store_directory"})
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer"})
_FIXED_PRAGMAS = frozenset({"max_page_count", "page_size"})  # the size bound: readable, not settable


class _Guard:
    """The authorizer and progress handler of one connection."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.user = False  # True while a step's own statement runs
        self.refused = ""

    def authorize(
        self, action: int, arg1: str | None, arg2: str | None, _db: str | None, _t: str | None
    ) -> int:
        what = ""
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            what = "ATTACH/DETACH (and VACUUM, which attaches) are not allowed"
        elif action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() in _DENIED_PRAGMAS:
            what = f"PRAGMA {arg1} is not allowed"
        elif (
            action == sqlite3.SQLITE_PRAGMA
            and self.user
            and arg2 is not None
            and (arg1 or "").lower() in _FIXED_PRAGMAS
        ):
            what = f"PRAGMA {arg1} is fixed by the executor (it bounds the database's size)"
        elif action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
            what = f"the function {arg2}() is not allowed"
        elif action == sqlite3.SQLITE_TRANSACTION and self.user:
            what = "BEGIN/COMMIT/ROLLBACK are managed by the operation (use sql_transaction)"
        if what:
            self.refused = what
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def progress(self) -> int:
        return 1 if time.monotonic() > self.deadline else 0


def _bind(params: Bound) -> Sequence[Any] | dict[str, Any]:
    """JSON params as SQLite values: objects and lists become JSON text (for SQLite's JSON functions)."""

    def one(value: Any) -> Any:
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return value

    if params is None:
        return ()
    if isinstance(params, dict):
        return {k: one(v) for k, v in params.items()}
    return [one(v) for v in params]


def _connect(path: Path, mode: Mode, guard: _Guard, busy_s: float) -> sqlite3.Connection:
    if mode != "rwc" and not path.is_file():
        raise NotFoundError(f"path: no such database {path.name!r}", param="path")
    if mode == "rwc":
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(f"{path.as_uri()}?mode={mode}", uri=True, timeout=busy_s, isolation_level=None)
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.set_authorizer(guard.authorize)
    conn.set_progress_handler(guard.progress, _PROGRESS_STEPS)
    if mode == "ro":
        conn.execute("PRAGMA query_only = 1")
    else:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA max_page_count = {max(MAX_DB_BYTES // page_size, 1)}")
    return conn


def _rows(cursor: sqlite3.Cursor) -> Iterator[Sequence[Any]]:
    while batch := cursor.fetchmany(256):
        yield from batch


def _run_one(conn: sqlite3.Connection, stmt: Statement, max_bytes: int) -> Result:
    result = Result()
    if stmt.many is not None:
        cursor = conn.executemany(stmt.sql, [_bind(p) for p in stmt.many])
    else:
        cursor = conn.execute(stmt.sql, _bind(stmt.params))
    if cursor.description is not None:
        collect(
            column_names(d[0] for d in cursor.description), _rows(cursor), stmt.max_rows, max_bytes, result
        )
    result.rowcount = cursor.rowcount
    if cursor.lastrowid and cursor.rowcount > 0 and cursor.description is None:
        result.lastrowid = cursor.lastrowid
    cursor.close()
    return result


def run(
    path: Path,
    mode: Mode,
    statements: list[Statement],
    *,
    timeout_s: float,
    max_bytes: int,
    transaction: bool,
    name: str,
) -> list[Result]:
    """Run statements against the database at path (in one transaction if asked); blocking."""
    guard = _Guard(time.monotonic() + timeout_s)
    try:
        conn = _connect(path, mode, guard, min(timeout_s, 5.0))
    except sqlite3.Error as exc:
        raise error(exc, guard, name, 0) from exc
    results: list[Result] = []
    try:
        if transaction:
            conn.execute("BEGIN IMMEDIATE")
        for index, stmt in enumerate(statements):
            guard.user = True
            try:
                results.append(_run_one(conn, stmt, max_bytes))
            except sqlite3.Error as exc:
                raise error(exc, guard, name, index if len(statements) > 1 else None) from exc
            finally:
                guard.user = False
        if transaction:
            conn.execute("COMMIT")
        return results
    finally:
        conn.set_progress_handler(None, 0)  # a rollback after the deadline must not be interrupted too
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def error(exc: sqlite3.Error, guard: _Guard, name: str, index: int | None) -> OpenClawError:
    """The catalogue's error for an SQLite failure, naming the statement (in a batch) and the problem."""
    where = "sql" if index is None else f"statements[{index}].sql"
    text = str(exc)
    if guard.refused and ("not authorized" in text or "authorization denied" in text):
        return PermissionDeniedError(f"{where}: {guard.refused}", param=where)
    if text == "interrupted" and time.monotonic() > guard.deadline:
        return TimeoutError_(f"{where}: the statement ran past timeout_s and was interrupted", param=where)
    if "readonly database" in text or "query_only" in text:
        return PermissionDeniedError(
            f"{where}: {name!r} is open read-only (sql_query without read_only: false); use sql_execute to "
            "write",
            param=where,
        )
    if "database or disk is full" in text:
        return PayloadTooLargeError(
            f"path: {name!r} reached the size limit of {MAX_DB_BYTES} bytes (or the disk is full)",
            param="path",
        )
    if "database is locked" in text or "database is busy" in text:
        return UnavailableError(f"path: {name!r} is locked by another writer; retry later", param="path")
    if "file is not a database" in text or "malformed" in text:
        return InvalidInputError(f"path: {name!r} is not a usable SQLite database ({text})", param="path")
    if "unable to open database" in text:
        return NotFoundError(f"path: cannot open the database {name!r} ({text})", param="path")
    if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError) and "bind" in text.lower():
        return InvalidInputError(f"params: {text}", param="params")
    return InvalidInputError(f"{where}: {text}", param=where)
