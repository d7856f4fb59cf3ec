"""Archive operations over the tenant's storage: zip create, extract and list; gzip compress and decompress.

Tar archives are in services.executor.ops.tarballs; what both share (bounds, member-name checks, staged
extraction) is in services.executor.ops._archiving.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from services.common.errors import InvalidInputError, PayloadTooLargeError, PermissionDeniedError
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

_CHUNK = 1024 * 1024
_COMPRESSION = {
    "deflated": zipfile.ZIP_DEFLATED,
    "stored": zipfile.ZIP_STORED,
    "bzip2": zipfile.ZIP_BZIP2,
    "lzma": zipfile.ZIP_LZMA,
}


@contextmanager
def _open_zip(root: Path, relative: str, box: Vault) -> Iterator[tuple[Path, zipfile.ZipFile]]:
    path = resolve_path(root, relative)
    with box.reader(path, relative) as f:  # ZipFile leaves a given file open
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidInputError(
                f"path: {relative!r} is not a readable zip archive: {exc}", param="path"
            ) from exc
        with zf:
            yield path, zf


# -- zip_create ---------------------------------------------------------------------------------------


class ZipCreateParams(Params):
    path: str = ARCHIVE
    sources: list[str] = SOURCES
    base: str | None = BASE
    compression: Literal["deflated", "stored", "bzip2", "lzma"] = Field(
        "deflated", description="How members are compressed."
    )
    overwrite: bool = Field(False, description="Replace an existing archive.")
    max_entries: int = MAX_ENTRIES
    max_bytes: int = MAX_BYTES


def _zip_create(root: Path, p: ZipCreateParams, box: Vault) -> dict[str, Any]:
    dest = destination(root, p.path, p.overwrite, param="path")
    sources = gather(root, p.sources, p.base, exclude=dest, max_entries=p.max_entries, max_bytes=p.max_bytes)
    temp, fd = temporary(dest, param="path")
    archived = 0  # of the plaintext: sealed sources are read decrypted
    try:
        with box.writer(fd) as f:
            with zipfile.ZipFile(f, "w", compression=_COMPRESSION[p.compression]) as zf:
                for source in sources:
                    if source.is_dir:
                        zf.write(source.path, source.name + "/")
                        continue
                    with box.reader(source.path, source.name, param="sources") as src:
                        info = zipfile.ZipInfo.from_file(source.path, source.name)
                        info.compress_type = _COMPRESSION[p.compression]
                        with zf.open(info, "w", force_zip64=source.size > 2**31) as out:
                            while chunk := src.read(_CHUNK):
                                archived += len(chunk)
                                out.write(chunk)
            size = f.tell()  # the archive's own size, before sealing
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    place(temp, dest, p.overwrite, param="path")
    files = sum(1 for s in sources if not s.is_dir)
    return {"path": relative_name(root, dest), "files": files, "bytes": archived, "size": size}


@operation("zip_create", category="archives", params=ZipCreateParams)
async def zip_create(p: ZipCreateParams, ctx: OpContext) -> dict[str, Any]:
    """Create a zip archive from files, directories and glob patterns in the tenant's storage (no symlinks);
    returns its path, file count, bytes archived and archive size."""
    return await asyncio.to_thread(_zip_create, ctx.tenant_root, p, vault(ctx))


# -- zip_list -----------------------------------------------------------------------------------------


class ZipListParams(Params):
    path: str = ARCHIVE
    max_entries: int = Field(1000, ge=1, le=10_000, description="Most entries returned.")


def _zip_kind(info: zipfile.ZipInfo) -> str:
    # Unix file type bits, when the archiver recorded them (zip tools on other systems leave them 0).
    fmt = stat.S_IFMT(info.external_attr >> 16)
    if fmt == stat.S_IFLNK:
        return "symlink"
    if info.is_dir() or fmt == stat.S_IFDIR:
        return "dir"
    if fmt not in (0, stat.S_IFREG):
        return "special file"
    return "file"


def _zip_list(root: Path, p: ZipListParams, box: Vault) -> dict[str, Any]:
    with _open_zip(root, p.path, box) as (path, zf):
        infos = zf.infolist()
        entries = [
            {
                "name": info.filename,
                "type": _zip_kind(info),
                "size": info.file_size,
                "compressed_size": info.compress_size,
                "mtime": datetime(*info.date_time).isoformat(),
            }
            for info in infos[: p.max_entries]
        ]
    return {
        "path": relative_name(root, path),
        "entries": entries,
        "total_entries": len(infos),
        "total_bytes": sum(i.file_size for i in infos),
        "truncated": len(infos) > p.max_entries,
    }


@operation("zip_list", category="archives", params=ZipListParams)
async def zip_list(p: ZipListParams, ctx: OpContext) -> dict[str, Any]:
    """List a zip archive's members (name, type, size, compressed size, mtime) without extracting them."""
    return await asyncio.to_thread(_zip_list, ctx.tenant_root, p, vault(ctx))


# -- zip_extract --------------------------------------------------------------------------------------


ZipExtractParams = ExtractParams


def _zip_members(zf: zipfile.ZipFile, budget: Budget) -> list[tuple[zipfile.ZipInfo, str]]:
    members = []
    for info in zf.infolist():
        budget.add(info.file_size)
        kind = _zip_kind(info)
        if kind not in ("file", "dir"):
            raise PermissionDeniedError(
                f"path: member {info.filename!r} is a {kind}; only files and directories are extracted",
                param="path",
            )
        if info.flag_bits & 0x1:
            raise InvalidInputError(f"path: member {info.filename!r} is encrypted", param="path")
        members.append((info, member_name(info.filename, is_dir=kind == "dir")))
    return members


def _zip_unpack(
    zf: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, str]], limit: int, staging: Path, box: Vault
) -> None:
    written = 0
    for info, name in members:
        target = staging / name
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        with zf.open(info) as src, box.writer(fd) as out:  # sealed before it touches the disk
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > limit:  # declared sizes were checked; this guards against ones that lie
                    raise PayloadTooLargeError(
                        f"path: the archive unpacks to more than {limit} bytes", limit=limit
                    )
                out.write(chunk)


def _zip_extract(root: Path, p: ZipExtractParams, box: Vault) -> dict[str, Any]:
    with _open_zip(root, p.path, box) as (path, zf):
        members = _zip_members(zf, Budget(p.max_entries, p.max_bytes))
        names = [name for info, name in members if not info.is_dir()]
        try:
            out = extract_staged(
                root,
                p.destination,
                names,
                p.overwrite,
                lambda staging: _zip_unpack(zf, members, p.max_bytes, staging, box),
            )
        except (zipfile.BadZipFile, zlib.error, EOFError, NotADirectoryError, FileExistsError) as exc:
            raise InvalidInputError(f"path: {p.path!r} could not be extracted: {exc}", param="path") from exc
    return {"path": relative_name(root, path), **out}


@operation("zip_extract", category="archives", params=ZipExtractParams)
async def zip_extract(p: ZipExtractParams, ctx: OpContext) -> dict[str, Any]:
    """Extract a zip archive into a directory of the tenant's storage, refusing unsafe names, symlinks and
    archives over max_entries/max_bytes; returns the destination and number of files."""
    return await asyncio.to_thread(_zip_extract, ctx.tenant_root, p, vault(ctx))


# -- gzip_compress, gzip_decompress -------------------------------------------------------------------


class GzipCompressParams(Params):
    path: str = Field(min_length=1, max_length=1024, description="The file to compress.")
    destination: str | None = Field(
        None, max_length=1024, description="Where to write it; default: path + '.gz'."
    )
    level: int = Field(6, ge=1, le=9, description="Compression level: 1 fastest, 9 smallest.")
    overwrite: bool = Field(False, description="Replace an existing destination.")


def _gzip(root: Path, p: GzipCompressParams, box: Vault) -> dict[str, Any]:
    source = resolve_path(root, p.path)
    dest = destination(root, p.destination or f"{p.path}.gz", p.overwrite)
    original = 0
    temp, fd = temporary(dest)
    try:
        with (
            box.reader(source, p.path) as src,
            box.writer(fd) as raw,
        ):
            with gzip.GzipFile(filename=source.name, mode="wb", fileobj=raw, compresslevel=p.level) as out:
                while chunk := src.read(_CHUNK):
                    original += len(chunk)
                    out.write(chunk)
            size = raw.tell()  # the compressed size, before sealing
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    place(temp, dest, p.overwrite)
    return {"path": relative_name(root, dest), "size": size, "original_size": original}


@operation("gzip_compress", category="archives", params=GzipCompressParams)
async def gzip_compress(p: GzipCompressParams, ctx: OpContext) -> dict[str, Any]:
    """Gzip a file of the tenant's storage (to path + '.gz' by default); returns the new path, its size and
    the original size."""
    return await asyncio.to_thread(_gzip, ctx.tenant_root, p, vault(ctx))


class GzipDecompressParams(Params):
    path: str = Field(min_length=1, max_length=1024, description="The .gz file to decompress.")
    destination: str | None = Field(
        None, max_length=1024, description="Where to write it; default: path without its '.gz'."
    )
    overwrite: bool = Field(False, description="Replace an existing destination.")
    max_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1,
        le=16 * 1024**3,
        description="Most bytes the output may have (gzip-bomb guard).",
    )


def _gunzip(root: Path, p: GzipDecompressParams, box: Vault) -> dict[str, Any]:
    if p.destination is None and not p.path.endswith(".gz"):
        raise InvalidInputError(
            f"destination: required, as {p.path!r} does not end in '.gz'", param="destination"
        )
    source = resolve_path(root, p.path)
    dest = destination(root, p.destination or p.path[: -len(".gz")], p.overwrite)
    written = 0
    temp, fd = temporary(dest)
    try:
        with (
            box.reader(source, p.path) as raw,
            box.writer(fd) as out,
            gzip.GzipFile(fileobj=raw, mode="rb") as src,
        ):
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > p.max_bytes:
                    raise PayloadTooLargeError(
                        f"path: {p.path!r} decompresses to more than max_bytes ({p.max_bytes})",
                        limit=p.max_bytes,
                    )
                out.write(chunk)
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        temp.unlink(missing_ok=True)
        raise InvalidInputError(f"path: {p.path!r} is not valid gzip data: {exc}", param="path") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    place(temp, dest, p.overwrite)
    compressed = box.plain_size(source, source.stat().st_size)
    return {"path": relative_name(root, dest), "size": written, "compressed_size": compressed}


@operation("gzip_decompress", category="archives", params=GzipDecompressParams)
async def gzip_decompress(p: GzipDecompressParams, ctx: OpContext) -> dict[str, Any]:
    """Decompress a .gz file of the tenant's storage, refusing output over max_bytes; returns the new path,
    its size and the compressed size."""
    return await asyncio.to_thread(_gunzip, ctx.tenant_root, p, vault(ctx))


OPERATIONS = (zip_create, zip_list, zip_extract, gzip_compress, gzip_decompress)
