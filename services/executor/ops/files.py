"""File operations on the tenant's storage: read, write, and download from http(s) or S3.

Paths are confined to ``storage_root/<tenant>/`` by services.executor.ops.paths; S3 calls go through
services.executor.ops.s3.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import mimetypes
import os
import posixpath
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator

from services.common.errors import (
    InvalidInputError,
    PayloadTooLargeError,
)
from services.executor.context import OpContext
from services.executor.expressions import OPEN
from services.executor.ops import s3
from services.executor.ops.base import Params, operation, scoped_credential
from services.executor.ops.http import auth_headers, is_textual, status_error
from services.executor.ops.paths import open_confined, relative_name, resolve_path
from services.executor.ops.storage import Vault, vault

TEXT_PREVIEW_BYTES = 64 * 1024
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
_CHUNK = 256 * 1024
_TEXT_SUFFIXES = {".csv", ".tsv", ".txt", ".md", ".json", ".jsonl", ".yaml", ".yml", ".xml", ".html", ".log"}


def text_preview(data: bytes, content_type: str = "", name: str = "") -> tuple[str | None, bool]:
    """The first 64 KiB as text when the content looks textual, and whether it was cut."""
    looks_text = is_textual(content_type) or PurePosixPath(name).suffix.lower() in _TEXT_SUFFIXES
    head = data[:TEXT_PREVIEW_BYTES]
    truncated = len(data) > TEXT_PREVIEW_BYTES
    # A cut may split a multi-byte character: drop at most three trailing bytes.
    for trim in range(4 if truncated else 1):
        try:
            text = head[: len(head) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if looks_text or "\x00" not in text:
            return text, truncated
        return None, truncated
    return None, truncated


# -- file_read ----------------------------------------------------------------------------------------


class FileReadParams(Params):
    path: str = Field(description="Path relative to the tenant's storage root.")
    format: Literal["text", "json", "base64"] = Field("text", description="How to return the content.")
    max_bytes: int | None = Field(
        None, gt=0, description="Largest file accepted; default and ceiling: the executor's output limit."
    )


def _read(root: Path, relative: str, max_bytes: int, fmt: str, box: Vault) -> dict[str, Any]:
    """The whole of file_read, off the event loop: read, hash, decode, parse."""
    target = resolve_path(root, relative)
    with box.reader(target, relative) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"path: {relative!r} is larger than {max_bytes} bytes, the most file_read returns "
            "(a step's output limit, OPENCLAW_EXECUTOR_MAX_OUTPUT_BYTES)",
            limit=max_bytes,
        )
    rel = relative_name(root, target)
    content: Any
    if fmt == "base64":
        content = base64.b64encode(data).decode()
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"path: {rel!r} is not UTF-8 text; use format 'base64'") from exc
        if fmt == "json":
            try:
                content = json.loads(text)
            except ValueError as exc:
                raise InvalidInputError(f"path: {rel!r} is not valid JSON: {exc}") from exc
        else:
            content = text
    return {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "content": content}


@operation("file_read", category="files", params=FileReadParams)
async def file_read(p: FileReadParams, ctx: OpContext) -> dict[str, Any]:
    """Read a file from the tenant's storage; returns path, size, sha256 and content (text, parsed JSON or
    base64)."""
    # A step's output is checkpointed only up to the engine's max_output_bytes; reading more than that could
    # only end in payload_too_large, after the work and memory are spent.
    ceiling = ctx.services.max_output_bytes
    limit = min(p.max_bytes or ceiling, ceiling)
    return await asyncio.to_thread(_read, ctx.tenant_root, p.path, limit, p.format, vault(ctx))


# -- file_write ---------------------------------------------------------------------------------------


class FileWriteParams(Params):
    path: str = Field(description="Path relative to the tenant's storage root; parent folders are created.")
    content: Any = Field(description="Text; any JSON value with format 'json'; base64 text with 'base64'.")
    format: Literal["text", "json", "base64"] = "text"
    mode: Literal["overwrite", "append", "create"] = Field(
        "overwrite", description="'create' fails if the file exists."
    )

    @field_validator("content")
    @classmethod
    def _present(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("required")
        return value


def encode_content(p: FileWriteParams) -> bytes:
    """The bytes file_write writes: JSON text, base64-decoded bytes or UTF-8 text."""
    if p.format == "json":
        return json.dumps(p.content, ensure_ascii=False, indent=2).encode()
    if not isinstance(p.content, str):
        raise InvalidInputError(f"content: format {p.format!r} needs a string; use format 'json' for values")
    if p.format == "base64":
        try:
            return base64.b64decode(p.content, validate=True)
        except binascii.Error as exc:
            raise InvalidInputError(f"content: not valid base64: {exc}") from exc
    return p.content.encode()


def _write(root: Path, relative: str, data: bytes, mode: str, box: Vault) -> str:
    root.mkdir(parents=True, exist_ok=True)
    target = resolve_path(root, relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The parents were created inside the root; check again in case one was a symlink planted meanwhile.
    target = resolve_path(root, relative)
    if box.sealed and mode == "append" and os.path.lexists(target):
        # A sealed file is one blob: appending rewrites it whole, beside the target and moved into place.
        data = box.read_all(target, relative) + data
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with box.writer(open_confined(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)) as f:
                f.write(data)
            os.replace(temp, resolve_path(root, relative))
        finally:
            temp.unlink(missing_ok=True)
        return relative_name(root, target)
    flags = os.O_WRONLY | os.O_CREAT
    flags |= {"overwrite": os.O_TRUNC, "append": os.O_APPEND, "create": os.O_EXCL}[mode]
    with box.writer(open_confined(target, flags)) as f:
        f.write(data)
    return relative_name(root, target)


@operation("file_write", category="files", params=FileWriteParams)
async def file_write(p: FileWriteParams, ctx: OpContext) -> dict[str, Any]:
    """Write text, JSON or base64-decoded bytes to a file in the tenant's storage; returns path, size and
    sha256 of what was written."""
    data = encode_content(p)
    rel = await asyncio.to_thread(_write, ctx.tenant_root, p.path, data, p.mode, vault(ctx))
    return {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# -- file_download ------------------------------------------------------------------------------------


class FileDownloadParams(Params):
    url: str = Field(description="http://, https:// or s3://bucket/key.")
    path: str | None = Field(None, description="Where to save it; default: the URL's file name.")
    auth: str | None = Field(
        None, description="Credential set from the executor's settings (required for s3://)."
    )
    timeout_s: float | None = Field(None, gt=0, le=3600)
    max_bytes: int | None = Field(None, gt=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if OPEN not in value and urlsplit(value).scheme.lower() not in ("http", "https", "s3"):
            raise ValueError("must be an http://, https:// or s3:// URL")
        return value


def default_name(url: str) -> str:
    """The URL's last path segment, if it makes a safe file name."""
    name = posixpath.basename(unquote(urlsplit(url).path))
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return "download"
    return name


class Sink:
    """A temporary file beside the target, renamed into place when complete; hashes as it goes."""

    def __init__(self, root: Path, relative: str, limit: int, box: Vault) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.relative, self.limit, self.box = root, relative, limit, box
        # Sealed downloads are kept in memory (at most limit bytes) and sealed whole at commit.
        self.buffer = bytearray()
        self.target = resolve_path(root, relative)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.temp = self.target.with_name(f".{self.target.name}.{uuid.uuid4().hex[:8]}.part")
        self._fd = open_confined(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self.size = 0
        self.sha = hashlib.sha256()
        self.head = bytearray()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise PayloadTooLargeError(f"download is over the limit of {self.limit} bytes")
        self.sha.update(chunk)
        if len(self.head) <= TEXT_PREVIEW_BYTES:
            self.head += chunk[: TEXT_PREVIEW_BYTES + 1 - len(self.head)]
        if self.box.sealed:
            self.buffer += chunk
        else:
            os.write(self._fd, chunk)

    def commit(self) -> str:
        if self.box.sealed:
            blob = memoryview(self.box.seal(bytes(self.buffer)))
            while blob:
                blob = blob[os.write(self._fd, blob) :]
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        target = resolve_path(self.root, self.relative)
        os.replace(self.temp, target)  # replaces a symlink itself, never its target
        return relative_name(self.root, target)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.temp.unlink(missing_ok=True)


@operation("file_download", category="files", params=FileDownloadParams)
async def file_download(p: FileDownloadParams, ctx: OpContext) -> dict[str, Any]:
    """Download an http(s) URL or an s3://bucket/key object into the tenant's storage; returns path, size,
    sha256, content_type and text (the first 64 KiB when the content is text, for the next step)."""
    relative = p.path or default_name(p.url)
    scheme = urlsplit(p.url).scheme.lower()
    http = ctx.services.require_http() if scheme != "s3" else ctx.services.http
    cap = http.max_bytes if http is not None else DEFAULT_MAX_BYTES
    limit = min(p.max_bytes or cap, cap)
    sink = await asyncio.to_thread(Sink, ctx.tenant_root, relative, limit, vault(ctx))
    try:
        if scheme == "s3":
            content_type = await _s3_download(p, ctx, sink)
        else:
            content_type = await _http_download(p, ctx, sink)
        rel = await asyncio.to_thread(sink.commit)
    except BaseException:
        await asyncio.to_thread(sink.abort)
        raise
    head = bytes(sink.head)
    if not content_type or content_type == "application/octet-stream":
        content_type = mimetypes.guess_type(rel)[0] or content_type or "application/octet-stream"
    text, truncated = text_preview(head, content_type, rel)
    out: dict[str, Any] = {
        "path": rel,
        "size": sink.size,
        "sha256": sink.sha.hexdigest(),
        "content_type": content_type,
        "url": p.url,
        "text": text,
    }
    if text is not None:
        out["text_truncated"] = truncated or sink.size > TEXT_PREVIEW_BYTES
    return out


async def _http_download(p: FileDownloadParams, ctx: OpContext, sink: Sink) -> str:
    client = ctx.services.require_http()
    credential = scoped_credential(ctx, p.auth, host=urlsplit(p.url).hostname) if p.auth else None
    headers = auth_headers(credential) if credential is not None else {}
    async with client.open("GET", p.url, credential_headers=headers, timeout_s=p.timeout_s) as response:
        if response.status >= 400:
            raise status_error(response.status, str(response.url))
        if response.content_length is not None and response.content_length > sink.limit:
            raise PayloadTooLargeError(
                f"download is {response.content_length} bytes; the limit is {sink.limit}"
            )
        async for chunk in response.content.iter_chunked(_CHUNK):
            await asyncio.to_thread(sink.write, chunk)
        return response.headers.get("Content-Type", "")


# -- S3 -----------------------------------------------------------------------------------------------


def _s3_get(credential: Mapping[str, str], bucket: str, key: str, sink: Sink, timeout_s: float) -> str:
    return s3.get_into(credential, bucket, key, sink, timeout_s)


async def _s3_download(p: FileDownloadParams, ctx: OpContext, sink: Sink) -> str:
    parts = urlsplit(p.url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise InvalidInputError(f"url: {p.url!r} must be s3://bucket/key")
    if not p.auth:
        raise InvalidInputError(
            "auth: s3:// downloads need a credential set (auth) from the executor's settings"
        )
    credential = s3.credential_for(ctx, p.auth, bucket, key, param="url")
    timeout = s3.timeout_for(ctx, p.timeout_s)
    get = s3.guarded(_s3_get, bucket, key)
    return await s3.run(ctx, credential, "S3 GetObject", bucket, get, credential, bucket, key, sink, timeout)


OPERATIONS = (file_read, file_write, file_download)
