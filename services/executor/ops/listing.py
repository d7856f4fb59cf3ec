"""Read-only filesystem operations on the tenant's storage: list, glob, stat, exists and tree size.

Paths are confined by services.executor.ops.paths. Walks never follow symlinks, and a symlink that leads
outside the root is left out of results; stat and exists describe a symlink itself and refuse one that leads
outside.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import cache, lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import Field

from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from services.executor.context import OpContext
from services.executor.ops.base import Params, operation
from services.executor.ops.paths import (
    Entry,
    inside,
    relative_name,
    resolve_dir,
    resolve_entry,
    resolve_path,
    walk,
)
from services.executor.ops.storage import plain_size

MAX_SCANNED = 200_000
_MAGIC = frozenset("*?[")
_PATH = Field(min_length=1, max_length=1024, description="Path relative to the tenant's storage root.")


def size_of(entry: Entry, sealed: bool) -> int:
    """A file's size as operations see it: of the plaintext, from a sealed file's header (no decryption)."""
    return plain_size(entry.path, entry.st.st_size) if sealed else entry.st.st_size


def describe(root: Path, entry: Entry, sealed: bool = False) -> dict[str, Any]:
    """An entry as JSON: path, type, size (files, of the plaintext) and mtime (ISO 8601, UTC)."""
    return {
        "path": relative_name(root, entry.path),
        "type": entry.kind,
        "size": size_of(entry, sealed) if entry.kind == "file" else None,
        "mtime": datetime.fromtimestamp(entry.st.st_mtime, UTC).isoformat(),
    }


def lookup(root: Path, relative: str, *, param: str = "path") -> Entry | None:
    """The entry named by relative (a symlink itself, not its target), or None if there is none."""
    path = resolve_entry(root, relative, param=param)
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    entry = Entry(path, st)
    if entry.kind == "symlink" and not inside(root.resolve(), path):
        raise PermissionDeniedError(
            f"{param}: {relative!r} is a symlink that leads outside the tenant's storage", param=param
        )
    return entry


def require(root: Path, relative: str, param: str = "path") -> Entry:
    entry = lookup(root, relative, param=param)
    if entry is None:
        raise NotFoundError(f"{param}: no such file or directory {relative!r}", param=param)
    return entry


def _scan_limit(count: int) -> None:
    if count > MAX_SCANNED:
        raise PayloadTooLargeError(
            f"path: the tree has more than {MAX_SCANNED} entries; narrow the path or pattern",
            limit=MAX_SCANNED,
        )


# -- file_list ----------------------------------------------------------------------------------------


class FileListParams(Params):
    path: str | None = Field(
        None, max_length=1024, description="Directory relative to the tenant's root; default: the root."
    )
    recursive: bool = Field(False, description="Also list everything below subdirectories.")
    max_entries: int = Field(1000, ge=1, le=10_000, description="Most entries returned.")


def _list(root: Path, p: FileListParams, sealed: bool) -> dict[str, Any]:
    start = resolve_dir(root, p.path)
    if not start.is_dir():
        if not start.exists():
            raise NotFoundError(f"path: no such directory {p.path!r}", param="path")
        raise InvalidInputError(f"path: {p.path!r} is not a directory", param="path")
    real_root = root.resolve()
    entries: list[dict[str, Any]] = []
    truncated = False
    for entry in walk(real_root, start, recursive=p.recursive):
        if len(entries) == p.max_entries:
            truncated = True
            break
        entries.append(describe(root, entry, sealed))
    return {"path": relative_name(root, start), "entries": entries, "truncated": truncated}


@operation("file_list", category="files", params=FileListParams)
async def file_list(p: FileListParams, ctx: OpContext) -> dict[str, Any]:
    """List a directory (optionally recursively, at most max_entries) with each entry's path, type, size and
    mtime; symlinks are listed as such and never followed."""
    return await asyncio.to_thread(_list, ctx.tenant_root, p, ctx.services.sealer is not None)


# -- file_glob ----------------------------------------------------------------------------------------


class FileGlobParams(Params):
    pattern: str = Field(
        min_length=1,
        max_length=512,
        description="Glob relative to the tenant's root: '*' and '?' within a name, '[abc]', '**' for any "
        "number of directories (e.g. 'reports/**/*.csv').",
    )
    max_results: int = Field(1000, ge=1, le=10_000, description="Most matches returned.")
    files_only: bool = Field(False, description="Leave directories and symlinks out of the matches.")


@lru_cache(maxsize=256)
def _segment(pattern: str) -> Any:
    import fnmatch
    import re

    return re.compile(fnmatch.translate(pattern))


def _matches(segments: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether path parts match the pattern's segments ('**' matches zero or more parts)."""

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(segments):
            return j == len(parts)
        if segments[i] == "**":
            return match(i + 1, j) or (j < len(parts) and match(i, j + 1))
        return j < len(parts) and bool(_segment(segments[i]).match(parts[j])) and match(i + 1, j + 1)

    return match(0, 0)


def glob_entries(
    root: Path, pattern: str, *, max_results: int, files_only: bool = False, param: str = "pattern"
) -> tuple[list[Entry], bool]:
    """Entries matching a glob pattern relative to root, in walk order, and whether there were more."""
    if "\\" in pattern:
        raise InvalidInputError(f"{param}: use '/' to separate directories; '\\' is not allowed", param=param)
    resolve_path(root, pattern, param=param, allow_root=True)  # the lexical checks: absolute, '..'
    segments = tuple(s for s in PurePosixPath(pattern).parts if s != ".")
    fixed = 0
    while fixed < len(segments) - 1 and not _MAGIC & set(segments[fixed]):
        fixed += 1
    base = resolve_dir(root, "/".join(segments[:fixed]) or None, param=param)
    rest = segments[fixed:]
    depth = None if "**" in rest else len(rest)
    matches: list[Entry] = []
    if base.is_dir():
        for scanned, entry in enumerate(walk(root.resolve(), base, max_depth=depth), start=1):
            _scan_limit(scanned)
            if files_only and entry.kind != "file":
                continue
            if not _matches(rest, entry.path.relative_to(base).parts):
                continue
            if len(matches) == max_results:
                return matches, True
            matches.append(entry)
    return matches, False


def _glob(root: Path, p: FileGlobParams, sealed: bool) -> dict[str, Any]:
    matches, truncated = glob_entries(root, p.pattern, max_results=p.max_results, files_only=p.files_only)
    described = [describe(root, e, sealed) for e in matches]
    return {"pattern": p.pattern, "matches": described, "truncated": truncated}


@operation("file_glob", category="files", params=FileGlobParams)
async def file_glob(p: FileGlobParams, ctx: OpContext) -> dict[str, Any]:
    """Find files by a glob pattern inside the tenant's storage ('**' spans directories); returns the matches
    with path, type, size and mtime, never following symlinks."""
    return await asyncio.to_thread(_glob, ctx.tenant_root, p, ctx.services.sealer is not None)


# -- file_stat, file_exists ---------------------------------------------------------------------------


class FileStatParams(Params):
    path: str = _PATH


def _stat(root: Path, relative: str, sealed: bool) -> dict[str, Any]:
    entry = require(root, relative)
    out = describe(root, entry, sealed)
    out["mode"] = oct(entry.st.st_mode & 0o7777)
    if entry.kind == "symlink":
        out["target"] = relative_name(root, entry.path.resolve())
    return out


@operation("file_stat", category="files", params=FileStatParams)
async def file_stat(p: FileStatParams, ctx: OpContext) -> dict[str, Any]:
    """Describe one file, directory or symlink: path, type, size, mtime, mode (and a symlink's target)."""
    return await asyncio.to_thread(_stat, ctx.tenant_root, p.path, ctx.services.sealer is not None)


def _exists(root: Path, relative: str) -> dict[str, Any]:
    entry = lookup(root, relative)
    return {"path": relative, "exists": entry is not None, "type": entry.kind if entry else None}


@operation("file_exists", category="files", params=FileStatParams)
async def file_exists(p: FileStatParams, ctx: OpContext) -> dict[str, Any]:
    """Whether a path exists in the tenant's storage; returns exists and type (file, dir, symlink or null)."""
    return await asyncio.to_thread(_exists, ctx.tenant_root, p.path)


# -- file_tree_size -----------------------------------------------------------------------------------


class FileTreeSizeParams(Params):
    path: str | None = Field(
        None, max_length=1024, description="File or directory relative to the root; default: the root."
    )


def _tree_size(root: Path, relative: str | None, sealed: bool) -> dict[str, Any]:
    start = resolve_dir(root, relative)
    if not start.exists():
        raise NotFoundError(f"path: no such file or directory {relative!r}", param="path")
    if start.is_file():
        size = start.stat().st_size
        size = plain_size(start, size) if sealed else size
        return {"path": relative_name(root, start), "bytes": size, "files": 1, "dirs": 0}
    size = files = dirs = 0
    for scanned, entry in enumerate(walk(root.resolve(), start), start=1):
        _scan_limit(scanned)
        if entry.kind == "file":
            files += 1
            size += size_of(entry, sealed)
        elif entry.kind == "dir":
            dirs += 1
    return {"path": relative_name(root, start), "bytes": size, "files": files, "dirs": dirs}


@operation("file_tree_size", category="files", params=FileTreeSizeParams)
async def file_tree_size(p: FileTreeSizeParams, ctx: OpContext) -> dict[str, Any]:
    """Total size in bytes of the regular files under a directory (symlinks not followed), with file and
    directory counts."""
    return await asyncio.to_thread(_tree_size, ctx.tenant_root, p.path, ctx.services.sealer is not None)


OPERATIONS = (file_list, file_glob, file_stat, file_exists, file_tree_size)
