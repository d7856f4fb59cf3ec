"""Tar archive operations over the tenant's storage: create (gz, bz2, xz or plain), extract and list.

Extraction refuses symlinks, hard links, devices, FIFOs, absolute and '..' names and archives over the
entry or size bounds before writing anything, then unpacks with tarfile's ``filter="data"`` as a second line.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from services.common.errors import InvalidInputError, PermissionDeniedError
from services.executor.context import OpContext
from services.executor.ops._archiving import (
    ARCHIVE,
    BASE,
    MAX_BYTES,
    MAX_ENTRIES,
    SOURCES,
    Budget,
    ExtractParams,
    extract_staged,
    gather,
    member_name,
)
from services.executor.ops.base import Params, operation
from services.executor.ops.filesystem import destination, place, temporary
from services.executor.ops.paths import relative_name, resolve_path
from services.executor.ops.storage import Vault, vault

_ERRORS = (tarfile.TarError, zlib.error, EOFError, OSError)


@contextmanager
def _open_tar(root: Path, relative: str, box: Vault) -> Iterator[tuple[Path, tarfile.TarFile]]:
    path = resolve_path(root, relative)
    with box.reader(path, relative) as f:  # tarfile leaves a given file open
        try:
            tar = tarfile.open(fileobj=f, mode="r:*")  # noqa: SIM115 (closed by the with below)
        except _ERRORS as exc:
            raise InvalidInputError(
                f"path: {relative!r} is not a readable tar archive: {exc}", param="path"
            ) from exc
        with tar:
            yield path, tar


def _kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "fifo"
    return "special file"


# -- tar_create ---------------------------------------------------------------------------------------


class TarCreateParams(Params):
    path: str = ARCHIVE
    sources: list[str] = SOURCES
    base: str | None = BASE
    compression: Literal["gz", "bz2", "xz", "none"] = Field(
        "gz", description="How the archive is compressed."
    )
    overwrite: bool = Field(False, description="Replace an existing archive.")
    max_entries: int = MAX_ENTRIES
    max_bytes: int = MAX_BYTES


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # The worker's own user and group names say nothing useful to whoever unpacks the archive.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tar_create(root: Path, p: TarCreateParams, box: Vault) -> dict[str, Any]:
    dest = destination(root, p.path, p.overwrite, param="path")
    sources = gather(root, p.sources, p.base, exclude=dest, max_entries=p.max_entries, max_bytes=p.max_bytes)
    mode = "w" if p.compression == "none" else f"w:{p.compression}"
    temp, fd = temporary(dest, param="path")
    archived = 0  # of the plaintext: sealed sources are read decrypted
    try:
        with box.writer(fd) as f:
            with tarfile.open(fileobj=f, mode=mode) as tar:  # type: ignore[call-overload]
                for source in sources:
                    info = _anonymous(tar.gettarinfo(source.path, source.name))
                    if source.is_dir:
                        tar.addfile(info)
                        continue
                    with box.reader(source.path, source.name, param="sources") as src:
                        if isinstance(src, io.BytesIO):  # decrypted: its size is not the file's on disk
                            info.size = len(src.getbuffer())
                        archived += info.size
                        tar.addfile(info, src)
            size = f.tell()  # the archive's own size, before sealing
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    place(temp, dest, p.overwrite, param="path")
    files = sum(1 for s in sources if not s.is_dir)
    return {"path": relative_name(root, dest), "files": files, "bytes": archived, "size": size}


@operation("tar_create", category="archives", params=TarCreateParams)
async def tar_create(p: TarCreateParams, ctx: OpContext) -> dict[str, Any]:
    """Create a tar archive (gz, bz2, xz or uncompressed) from files, directories and glob patterns in the
    tenant's storage (no symlinks); returns its path, file count, bytes archived and archive size."""
    return await asyncio.to_thread(_tar_create, ctx.tenant_root, p, vault(ctx))


# -- tar_list -----------------------------------------------------------------------------------------


class TarListParams(Params):
    path: str = ARCHIVE
    max_entries: int = Field(1000, ge=1, le=10_000, description="Most entries returned.")


def _tar_list(root: Path, p: TarListParams, box: Vault) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    truncated = False
    with _open_tar(root, p.path, box) as (path, tar):
        try:
            for member in tar:
                if len(entries) == p.max_entries:
                    truncated = True
                    break
                entry = {
                    "name": member.name,
                    "type": _kind(member),
                    "size": member.size if member.isreg() else None,
                    "mtime": datetime.fromtimestamp(member.mtime, UTC).isoformat(),
                }
                if member.issym() or member.islnk():
                    entry["link_target"] = member.linkname
                entries.append(entry)
        except _ERRORS as exc:
            raise InvalidInputError(
                f"path: {p.path!r} is not a readable tar archive: {exc}", param="path"
            ) from exc
    return {"path": relative_name(root, path), "entries": entries, "truncated": truncated}


@operation("tar_list", category="archives", params=TarListParams)
async def tar_list(p: TarListParams, ctx: OpContext) -> dict[str, Any]:
    """List a tar archive's members (name, type, size, mtime, link target) without extracting them."""
    return await asyncio.to_thread(_tar_list, ctx.tenant_root, p, vault(ctx))


# -- tar_extract --------------------------------------------------------------------------------------


TarExtractParams = ExtractParams


def _tar_members(tar: tarfile.TarFile, budget: Budget) -> list[tarfile.TarInfo]:
    members = []
    for member in tar:  # stops at the first refusal: a bomb is never decompressed past the bounds
        budget.add(member.size if member.isreg() else 0)
        kind = _kind(member)
        if kind not in ("file", "dir"):
            raise PermissionDeniedError(
                f"path: member {member.name!r} is a {kind}; only files and directories are extracted",
                param="path",
            )
        member_name(member.name, is_dir=kind == "dir")
        members.append(member)
    return members


def _unpack(tar: tarfile.TarFile, members: list[tarfile.TarInfo], staging: Path, box: Vault) -> None:
    """Unpack checked members into staging; sealed, each file is sealed before it touches the disk."""
    if not box.sealed:
        tar.extractall(staging, members=members, filter="data")
        return
    for member in members:  # only files and directories with checked names get here (_tar_members)
        target = staging / member_name(member.name, is_dir=member.isdir())
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tar.extractfile(member)
        if src is None:
            raise InvalidInputError(f"path: member {member.name!r} has no content", param="path")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        with src, box.writer(fd) as out:
            shutil.copyfileobj(src, out, 1024 * 1024)


def _tar_extract(root: Path, p: TarExtractParams, box: Vault) -> dict[str, Any]:
    with _open_tar(root, p.path, box) as (path, tar):
        try:
            members = _tar_members(tar, Budget(p.max_entries, p.max_bytes))
            names = [member_name(m.name) for m in members if m.isreg()]
            out = extract_staged(
                root,
                p.destination,
                names,
                p.overwrite,
                lambda staging: _unpack(tar, members, staging, box),
            )
        except _ERRORS as exc:
            raise InvalidInputError(f"path: {p.path!r} could not be extracted: {exc}", param="path") from exc
    return {"path": relative_name(root, path), **out}


@operation("tar_extract", category="archives", params=TarExtractParams)
async def tar_extract(p: TarExtractParams, ctx: OpContext) -> dict[str, Any]:
    """Extract a tar archive (any compression) into a directory of the tenant's storage, refusing unsafe
    names, links, devices and archives over max_entries/max_bytes; returns the destination and file count."""
    return await asyncio.to_thread(_tar_extract, ctx.tenant_root, p, vault(ctx))


OPERATIONS = (tar_create, tar_list, tar_extract)
