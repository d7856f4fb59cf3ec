"""File-content operations on the tenant's storage: checksums, reading and appending lines, write-if-absent."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from services.common.errors import InvalidInputError, PayloadTooLargeError
from services.executor.context import OpContext
from services.executor.ops.base import Params, input_or_prev, operation
from services.executor.ops.files import FileWriteParams, encode_content
from services.executor.ops.paths import open_confined, relative_name, resolve_path
from services.executor.ops.storage import Vault, vault

_CHUNK = 1024 * 1024
_PATH = Field(min_length=1, max_length=1024, description="Path relative to the tenant's storage root.")


# -- file_checksum ------------------------------------------------------------------------------------


class FileChecksumParams(Params):
    path: str = _PATH
    algorithm: Literal["sha256", "sha512", "sha1", "md5", "blake2b", "sha3_256"] = Field(
        "sha256", description="Hash algorithm (md5 and sha1 for matching old manifests, not for security)."
    )


def _checksum(root: Path, relative: str, algorithm: str, box: Vault) -> dict[str, Any]:
    target = resolve_path(root, relative)
    digest = hashlib.new(algorithm)
    size = 0
    # The hash and size are of the plaintext: a sealed file is decrypted first.
    with box.reader(target, relative) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {
        "path": relative_name(root, target),
        "algorithm": algorithm,
        "hex": digest.hexdigest(),
        "size": size,
    }


@operation("file_checksum", category="files", params=FileChecksumParams)
async def file_checksum(p: FileChecksumParams, ctx: OpContext) -> dict[str, Any]:
    """Hash a file's bytes (sha256 by default; sha512, sha1, md5, blake2b, sha3_256); returns path,
    algorithm, hex digest and size."""
    return await asyncio.to_thread(_checksum, ctx.tenant_root, p.path, p.algorithm, vault(ctx))


# -- file_read_lines ----------------------------------------------------------------------------------


class FileReadLinesParams(Params):
    path: str = _PATH
    start: int = Field(
        1,
        ge=1,
        le=100_000_000,
        description="First line to return, counting from 1 (from the end with from_end).",
    )
    count: int = Field(100, ge=1, le=10_000, description="Most lines returned.")
    from_end: bool = Field(
        False, description="Count from the last line (start 1, count 10: the last 10 lines)."
    )


def _lines(f: Any, max_bytes: int, relative: str) -> Any:
    """The file's lines as bytes, refusing one longer than max_bytes without reading all of it."""
    number = 0
    while line := f.readline(max_bytes + 1):
        number += 1
        if len(line) > max_bytes:
            raise PayloadTooLargeError(
                f"path: line {number} of {relative!r} is longer than {max_bytes} bytes", limit=max_bytes
            )
        yield line


def _read_lines(root: Path, p: FileReadLinesParams, max_bytes: int, box: Vault) -> dict[str, Any]:
    target = resolve_path(root, p.path)
    with box.reader(target, p.path) as f:
        first, total = p.start, 0
        if p.from_end:  # a counting pass first, so memory never holds more than the lines returned
            total = sum(1 for _ in _lines(f, max_bytes, p.path))
            first = max(total - (p.start - 1) - p.count + 1, 1)
            f.seek(0)
        last = total - (p.start - 1) if p.from_end else first + p.count - 1
        chosen: list[bytes] = []
        size = 0
        for number, line in enumerate(_lines(f, max_bytes, p.path), start=1):
            if number > last:
                break
            if number < first:
                continue
            size += len(line)
            if size > max_bytes:
                raise PayloadTooLargeError(
                    f"count: lines {first}-{number} of {p.path!r} are more than a step may return "
                    f"({max_bytes} bytes)",
                    limit=max_bytes,
                )
            chosen.append(line)
            if number == last:
                break
        # Whether anything follows, without reading (or refusing) a long next line.
        more = bool(f.read(1)) if not p.from_end else first > 1
    try:
        lines = [line.decode("utf-8").rstrip("\r\n") for line in chosen]
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"path: {p.path!r} is not UTF-8 text", param="path") from exc
    return {
        "path": relative_name(root, target),
        "first": first if lines else None,
        "lines": lines,
        "more": more,
    }


@operation("file_read_lines", category="files", params=FileReadLinesParams)
async def file_read_lines(p: FileReadLinesParams, ctx: OpContext) -> dict[str, Any]:
    """Read a range of lines of a text file (from the start or, with from_end, the end); returns the lines,
    the number of the first one and whether more lines lie beyond the range."""
    return await asyncio.to_thread(_read_lines, ctx.tenant_root, p, ctx.services.max_output_bytes, vault(ctx))


# -- file_append_lines --------------------------------------------------------------------------------


class FileAppendLinesParams(Params):
    path: str = _PATH
    lines: list[str] | str | None = Field(
        None,
        max_length=100_000,
        description="Lines to append (a newline is added to each); a string is one line. Default: the "
        "previous step's output.",
    )


def _append(root: Path, relative: str, lines: list[str], box: Vault) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    target = resolve_path(root, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    target = resolve_path(root, relative)
    data = "".join(f"{line}\n" for line in lines).encode()
    if box.sealed:
        return _append_sealed(root, relative, target, data, len(lines), box)
    fd = open_confined(target, os.O_RDWR | os.O_CREAT | os.O_APPEND)
    with os.fdopen(fd, "r+b") as f:
        size = os.fstat(fd).st_size
        if size:  # a file whose last line has no newline yet: end that line first
            f.seek(size - 1)
            if f.read(1) != b"\n":
                data = b"\n" + data
        f.write(data)
        f.flush()
        size = os.fstat(fd).st_size
    return {"path": relative_name(root, target), "appended": len(lines), "size": size}


def _append_sealed(
    root: Path, relative: str, target: Path, data: bytes, count: int, box: Vault
) -> dict[str, Any]:
    """Append to a sealed file: one blob, so it is rewritten whole beside the target and moved into place."""
    old = box.read_all(target, relative) if os.path.lexists(target) else b""
    if old and not old.endswith(b"\n"):  # a last line without its newline: end that line first
        data = b"\n" + data
    whole = old + data
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with box.writer(open_confined(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)) as f:
            f.write(whole)
        os.replace(temp, resolve_path(root, relative))
    finally:
        temp.unlink(missing_ok=True)
    return {"path": relative_name(root, target), "appended": count, "size": len(whole)}


@operation("file_append_lines", category="files", params=FileAppendLinesParams)
async def file_append_lines(p: FileAppendLinesParams, ctx: OpContext) -> dict[str, Any]:
    """Append lines to a text file (created if missing), ending an unterminated last line first; returns
    path, lines appended and the new size."""
    value = input_or_prev(p, "lines", ctx)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
        raise InvalidInputError("lines: must be a string or a list of strings", param="lines")
    return await asyncio.to_thread(_append, ctx.tenant_root, p.path, value, vault(ctx))


# -- file_write_if_absent -----------------------------------------------------------------------------


class FileWriteIfAbsentParams(Params):
    path: str = _PATH
    content: Any = Field(description="Text; any JSON value with format 'json'; base64 text with 'base64'.")
    format: Literal["text", "json", "base64"] = "text"


def _write_if_absent(root: Path, relative: str, data: bytes, box: Vault) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    target = resolve_path(root, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    target = resolve_path(root, relative)
    try:
        # O_EXCL fails on any existing name, a symlink included: nothing existing is ever written through.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except FileExistsError:
        size = box.plain_size(target, target.lstat().st_size)
        return {"path": relative_name(root, target), "written": False, "size": size}
    with box.writer(fd) as f:
        f.write(data)
    return {"path": relative_name(root, target), "written": True, "size": len(data)}


@operation("file_write_if_absent", category="files", params=FileWriteIfAbsentParams)
async def file_write_if_absent(p: FileWriteIfAbsentParams, ctx: OpContext) -> dict[str, Any]:
    """Write a file only if nothing exists at its path (an idempotent create); returns path, written (false
    if it was there already) and size."""
    if p.content is None:
        raise InvalidInputError("content: required", param="content")
    data = encode_content(FileWriteParams(path=p.path, content=p.content, format=p.format, mode="create"))
    return await asyncio.to_thread(_write_if_absent, ctx.tenant_root, p.path, data, vault(ctx))


OPERATIONS = (file_checksum, file_read_lines, file_append_lines, file_write_if_absent)
