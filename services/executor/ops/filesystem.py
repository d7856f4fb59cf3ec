"""Filesystem operations that change the tenant's storage: mkdir, touch, copy, move and delete.

Paths are confined by services.executor.ops.paths. Move and delete act on a symlink itself, never on what it
points to (move refuses one that leads outside the root; delete may remove it); copy refuses a tree that holds
any symlink. New files are written beside their destination and moved into place, so a symlink planted at the
destination is replaced, never written through.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field

from services.common.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from services.executor.context import OpContext
from services.executor.ops.base import Params, operation
from services.executor.ops.listing import require
from services.executor.ops.paths import (
    kind,
    open_confined,
    refuse_links,
    relative_name,
    resolve_entry,
    resolve_path,
    walk,
)
from services.executor.ops.storage import plain_size

_PATH = Field(min_length=1, max_length=1024, description="Path relative to the tenant's storage root.")


# -- file_mkdir, file_touch ---------------------------------------------------------------------------


class FileMkdirParams(Params):
    path: str = _PATH
    exist_ok: bool = Field(True, description="Succeed if the directory already exists.")


def _mkdir(root: Path, relative: str, exist_ok: bool) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    target = resolve_path(root, relative)
    existed = target.is_dir()
    if existed and not exist_ok:
        raise AlreadyExistsError(f"path: {relative!r} already exists", param="path")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise InvalidInputError(f"path: {relative!r} exists and is not a directory", param="path") from exc
    except NotADirectoryError as exc:
        raise InvalidInputError(f"path: a parent of {relative!r} is a file", param="path") from exc
    resolve_path(root, relative)  # a parent swapped for a symlink meanwhile would show here
    return {"path": relative_name(root, target), "created": not existed}


@operation("file_mkdir", category="files", params=FileMkdirParams)
async def file_mkdir(p: FileMkdirParams, ctx: OpContext) -> dict[str, Any]:
    """Create a directory and any missing parents; returns its path and whether it was created."""
    return await asyncio.to_thread(_mkdir, ctx.tenant_root, p.path, p.exist_ok)


class FileTouchParams(Params):
    path: str = _PATH


def _touch(root: Path, relative: str, sealed: bool) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    target = resolve_path(root, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    target = resolve_path(root, relative)
    existed = target.exists()
    fd = open_confined(target, os.O_WRONLY | os.O_CREAT)
    try:
        os.utime(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    size = plain_size(target, size) if sealed else size  # of the plaintext, like file_stat
    return {"path": relative_name(root, target), "created": not existed, "size": size}


@operation("file_touch", category="files", params=FileTouchParams)
async def file_touch(p: FileTouchParams, ctx: OpContext) -> dict[str, Any]:
    """Create an empty file (and its parents) or set an existing file's mtime to now; returns path, created
    and size."""
    return await asyncio.to_thread(_touch, ctx.tenant_root, p.path, ctx.services.sealer is not None)


# -- file_copy, file_move -----------------------------------------------------------------------------


class FileCopyParams(Params):
    source: str = Field(min_length=1, max_length=1024, description="File or directory to copy.")
    destination: str = Field(
        min_length=1, max_length=1024, description="The new path (not a folder to copy into)."
    )
    overwrite: bool = Field(False, description="Replace an existing destination file.")
    recursive: bool = Field(False, description="Required to copy a directory (with everything below it).")


def destination(root: Path, relative: str, overwrite: bool, param: str = "destination") -> Path:
    """Where a new file goes (parents created); refuses an existing one unless overwrite, and a directory."""
    root.mkdir(parents=True, exist_ok=True)
    dest = resolve_entry(root, relative, param=param)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest = resolve_entry(root, relative, param=param)
    if os.path.lexists(dest):
        if not overwrite:
            raise AlreadyExistsError(f"{param}: {relative!r} already exists", param=param)
        if dest.is_dir() and not dest.is_symlink():
            raise InvalidInputError(f"{param}: {relative!r} is a directory", param=param)
    return dest


def temporary(dest: Path, param: str = "destination") -> tuple[Path, int]:
    """A new temporary file beside dest (path and open descriptor), for place() to move into dest."""
    temp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    return temp, open_confined(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, param=param)


def place(temp: Path, dest: Path, overwrite: bool, param: str = "destination") -> None:
    """Move a finished temporary file to dest: replacing (a symlink itself, never its target) or refusing."""
    try:
        if overwrite:
            os.replace(temp, dest)
        else:
            os.link(temp, dest)  # fails if the name was taken meanwhile: no silent overwrite
    except FileExistsError as exc:
        raise AlreadyExistsError(f"{param}: {dest.name!r} already exists", param=param) from exc
    finally:
        temp.unlink(missing_ok=True)


def _copy_file(source: Path, dest: Path, overwrite: bool) -> None:
    src_fd = open_confined(source, os.O_RDONLY, param="source")
    with os.fdopen(src_fd, "rb") as src:
        temp, fd = temporary(dest)
        try:
            with os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    place(temp, dest, overwrite)


def _copy(root: Path, p: FileCopyParams) -> dict[str, Any]:
    source = resolve_path(root, p.source, param="source")
    if not source.exists():
        raise NotFoundError(f"source: no such file or directory {p.source!r}", param="source")
    real_root = root.resolve()
    if source.is_dir():
        if not p.recursive:
            raise InvalidInputError(
                f"source: {p.source!r} is a directory; set recursive to copy it", param="source"
            )
        dest = destination(root, p.destination, overwrite=False)
        if dest.is_relative_to(source):
            raise InvalidInputError("destination: cannot copy a directory into itself", param="destination")
        refuse_links(real_root, source, "source")
        try:
            shutil.copytree(source, dest, symlinks=True)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        copied = sum(1 for e in walk(real_root, dest) if e.kind == "file")
    else:
        dest = destination(root, p.destination, p.overwrite)
        _copy_file(source, dest, p.overwrite)
        copied = 1
    return {"source": relative_name(root, source), "destination": relative_name(root, dest), "files": copied}


@operation("file_copy", category="files", params=FileCopyParams)
async def file_copy(p: FileCopyParams, ctx: OpContext) -> dict[str, Any]:
    """Copy a file (or, with recursive, a directory tree without symlinks) to a new path in the tenant's
    storage; returns source, destination and the number of files copied."""
    return await asyncio.to_thread(_copy, ctx.tenant_root, p)


class FileMoveParams(Params):
    source: str = Field(min_length=1, max_length=1024, description="File, directory or symlink to move.")
    destination: str = Field(min_length=1, max_length=1024, description="The new path (also a rename).")
    overwrite: bool = Field(False, description="Replace an existing destination file.")


def _move(root: Path, p: FileMoveParams) -> dict[str, Any]:
    entry = require(root, p.source, "source")
    dest = destination(root, p.destination, p.overwrite)
    if entry.kind == "dir" and dest.is_relative_to(entry.path):
        raise InvalidInputError("destination: cannot move a directory into itself", param="destination")
    try:
        os.replace(entry.path, dest)
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EINVAL, errno.EEXIST):
            raise InvalidInputError(
                f"destination: cannot move {p.source!r} to {p.destination!r}: {exc.strerror}",
                param="destination",
            ) from exc
        raise
    return {"source": p.source, "destination": relative_name(root, dest), "type": entry.kind}


@operation("file_move", category="files", params=FileMoveParams)
async def file_move(p: FileMoveParams, ctx: OpContext) -> dict[str, Any]:
    """Move or rename a file, directory or symlink within the tenant's storage; returns source, destination
    and type."""
    return await asyncio.to_thread(_move, ctx.tenant_root, p)


# -- file_delete --------------------------------------------------------------------------------------


class FileDeleteParams(Params):
    path: str = _PATH
    recursive: bool = Field(False, description="Required to delete a directory and everything below it.")
    missing_ok: bool = Field(False, description="Succeed (deleted: false) if nothing is there.")


def _delete(root: Path, p: FileDeleteParams) -> dict[str, Any]:
    path = resolve_entry(root, p.path)
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        if p.missing_ok:
            return {"path": p.path, "deleted": False, "type": None}
        raise NotFoundError(f"path: no such file or directory {p.path!r}", param="path") from None
    what = kind(mode)
    if what == "dir":
        if not p.recursive:
            raise InvalidInputError(
                f"path: {p.path!r} is a directory; set recursive to delete it", param="path"
            )
        shutil.rmtree(path)  # fd-based on Linux: does not follow symlinks inside the tree
    else:
        path.unlink()  # a symlink itself, never its target
    return {"path": p.path, "deleted": True, "type": what}


@operation("file_delete", category="files", params=FileDeleteParams)
async def file_delete(p: FileDeleteParams, ctx: OpContext) -> dict[str, Any]:
    """Delete a file or symlink (a directory only with recursive); returns path, deleted and type."""
    return await asyncio.to_thread(_delete, ctx.tenant_root, p)


OPERATIONS = (file_mkdir, file_touch, file_copy, file_move, file_delete)
