"""S3-style object storage operations: get, put, list, head, exists, copy, delete, presign.

Every operation names a credential set (``auth``) from the executor's settings; its ``tenants``, ``buckets``
and ``prefixes`` scopes are checked before any call (services.executor.ops.s3, which also builds the clients
and runs the calls in the bounded S3 pool inside the endpoint's hop).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from services.common.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from services.executor.context import OpContext
from services.executor.expressions import OPEN
from services.executor.ops import s3
from services.executor.ops.base import Params, input_or_prev, operation
from services.executor.ops.files import DEFAULT_MAX_BYTES, Sink
from services.executor.ops.paths import open_confined, resolve_path
from services.executor.ops.storage import vault

# S3's own limit for one PUT or CopyObject; larger objects need multipart uploads.
SINGLE_PUT_LIMIT = 5 * 1024**3
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def _check_bucket(value: str) -> str:
    if OPEN not in value and not _BUCKET.match(value):
        raise ValueError("must be 3-63 lowercase letters, digits, dots and hyphens")
    return value


class _ObjectParams(Params):
    bucket: str = Field(min_length=3, max_length=63, description="Bucket name.")
    auth: str = Field(min_length=1, max_length=64, description="Credential set from the executor's settings.")
    timeout_s: float | None = Field(None, gt=0, le=600, description="Timeout of each S3 call.")

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        return _check_bucket(value)


_KEY = Field(min_length=1, max_length=1024, description="Object key.")


def _key(key: str, param: str = "key") -> str:
    if "\x00" in key or len(key.encode()) > 1024:
        raise InvalidInputError(f"{param}: must be at most 1024 bytes of UTF-8 without NUL", param=param)
    return key


async def _call(ctx: OpContext, p: _ObjectParams, span: str, key: str, fn: Any, *args: Any) -> Any:
    credential = s3.credential_for(ctx, p.auth, p.bucket, _key(key))
    timeout = s3.timeout_for(ctx, p.timeout_s)
    client = await asyncio.to_thread(s3.client, credential, timeout)
    return await s3.run(ctx, credential, span, p.bucket, s3.guarded(fn, p.bucket, key), client, *args)


def _stamp(value: Any) -> str | None:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else None


# -- s3_get -------------------------------------------------------------------------------------------


class S3GetParams(_ObjectParams):
    key: str = _KEY
    path: str | None = Field(
        None, max_length=1024, description="Save the object to this path in the tenant's storage."
    )
    format: Literal["text", "json", "base64"] = Field(
        "text", description="How the object is returned inline (when path is not given)."
    )
    max_bytes: int | None = Field(
        None, gt=0, description="Largest object accepted; inline, at most the executor's output limit."
    )


def _get_inline(client: Any, bucket: str, key: str, limit: int) -> tuple[bytes, dict[str, Any]]:
    obj = client.get_object(Bucket=bucket, Key=key)
    body = obj["Body"]
    try:
        length = int(obj.get("ContentLength") or 0)
        if length > limit:
            raise PayloadTooLargeError(
                f"key: s3://{bucket}/{key} is {length} bytes; the limit is {limit}", limit=limit
            )
        data = body.read(limit + 1)
    finally:
        body.close()
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"key: s3://{bucket}/{key} is over the limit of {limit} bytes", limit=limit
        )
    return data, obj


def _decode(data: bytes, fmt: str, where: str) -> Any:
    if fmt == "base64":
        return base64.b64encode(data).decode()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"key: {where} is not UTF-8 text; use format 'base64'", param="key") from exc
    if fmt == "json":
        try:
            return json.loads(text)
        except ValueError as exc:
            raise InvalidInputError(f"key: {where} is not valid JSON: {exc}", param="key") from exc
    return text


@operation("s3_get", category="objects", params=S3GetParams)
async def s3_get(p: S3GetParams, ctx: OpContext) -> dict[str, Any]:
    """Get an S3 object, inline (text, parsed JSON or base64, bounded by the output limit) or saved to a path
    in the tenant's storage; returns bucket, key, size, content_type and content or path."""
    where = f"s3://{p.bucket}/{p.key}"
    if p.path is None:
        ceiling = ctx.services.max_output_bytes
        limit = min(p.max_bytes or ceiling, ceiling)
        data, obj = await _call(ctx, p, "S3 GetObject", p.key, _get_inline, p.bucket, p.key, limit)
        content = await asyncio.to_thread(_decode, data, p.format, where)
        return {
            "bucket": p.bucket,
            "key": p.key,
            "size": len(data),
            "content_type": obj.get("ContentType"),
            "content": content,
        }
    http = ctx.services.http
    cap = http.max_bytes if http is not None else DEFAULT_MAX_BYTES
    sink = await asyncio.to_thread(Sink, ctx.tenant_root, p.path, min(p.max_bytes or cap, cap), vault(ctx))
    try:
        content_type = await _call(ctx, p, "S3 GetObject", p.key, s3.stream_into, p.bucket, p.key, sink)
        rel = await asyncio.to_thread(sink.commit)
    except BaseException:
        await asyncio.to_thread(sink.abort)
        raise
    return {
        "bucket": p.bucket,
        "key": p.key,
        "size": sink.size,
        "sha256": sink.sha.hexdigest(),
        "content_type": content_type,
        "path": rel,
    }


# -- s3_put -------------------------------------------------------------------------------------------


class S3PutParams(_ObjectParams):
    key: str = _KEY
    path: str | None = Field(None, max_length=1024, description="Upload this file from the tenant's storage.")
    content: Any = Field(
        None,
        description="Inline content instead of path: text; any JSON value with format 'json'; base64 text with "
        "'base64'. Default: the previous step's output.",
    )
    format: Literal["text", "json", "base64"] = Field("text", description="How inline content is encoded.")
    content_type: str | None = Field(None, max_length=256, description="The object's Content-Type.")
    metadata: dict[str, str] | None = Field(
        None, max_length=32, description="User metadata (x-amz-meta-*), at most 2 KiB in all."
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and sum(len(k) + len(v) for k, v in value.items()) > 2048:
            raise ValueError("more than 2 KiB in all")
        return value


def _inline_bytes(value: Any, fmt: str, limit: int) -> bytes:
    if fmt == "json":
        data = json.dumps(value, ensure_ascii=False).encode()
    elif not isinstance(value, str):
        raise InvalidInputError(
            f"content: format {fmt!r} needs a string; use format 'json' for values", param="content"
        )
    elif fmt == "base64":
        try:
            data = base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise InvalidInputError(f"content: not valid base64: {exc}", param="content") from exc
    else:
        data = value.encode()
    if len(data) > limit:
        raise PayloadTooLargeError(f"content: {len(data)} bytes is over the limit of {limit}", limit=limit)
    return data


def _put(client: Any, kwargs: dict[str, Any], body: bytes | tuple[Path, str]) -> tuple[dict[str, Any], int]:
    if isinstance(body, bytes):
        return dict(client.put_object(Body=body, ContentLength=len(body), **kwargs)), len(body)
    path, relative = body
    with os.fdopen(open_confined(path, os.O_RDONLY), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > SINGLE_PUT_LIMIT:
            raise PayloadTooLargeError(
                f"path: {relative!r} is over S3's single PUT limit of 5 GiB", param="path"
            )
        return dict(client.put_object(Body=f, ContentLength=size, **kwargs)), size


@operation("s3_put", category="objects", params=S3PutParams)
async def s3_put(p: S3PutParams, ctx: OpContext) -> dict[str, Any]:
    """Put an object into S3 from a file in the tenant's storage or from inline content; returns bucket,
    key, size and etag."""
    kwargs: dict[str, Any] = {"Bucket": p.bucket, "Key": p.key}
    if p.content_type:
        kwargs["ContentType"] = p.content_type
    if p.metadata:
        kwargs["Metadata"] = p.metadata
    body: bytes | tuple[Path, str]
    if p.path is not None:
        if "content" in p.model_fields_set:
            raise InvalidInputError("content: give either path or content, not both", param="content")
        path = await asyncio.to_thread(resolve_path, ctx.tenant_root, p.path)
        body = (path, p.path)
        box = vault(ctx)
        if await asyncio.to_thread(box.is_sealed_file, path):  # the object gets the plaintext
            body = await asyncio.to_thread(box.read_all, path, p.path)
    else:
        value = input_or_prev(p, "content", ctx)
        if value is None:
            raise InvalidInputError("content: required (or give path)", param="content")
        limit = ctx.services.http.max_bytes if ctx.services.http is not None else DEFAULT_MAX_BYTES
        body = await asyncio.to_thread(_inline_bytes, value, p.format, limit)
    out, size = await _call(ctx, p, "S3 PutObject", p.key, _put, kwargs, body)
    return {"bucket": p.bucket, "key": p.key, "size": size, "etag": str(out.get("ETag", "")).strip('"')}


# -- s3_list ------------------------------------------------------------------------------------------


class S3ListParams(_ObjectParams):
    prefix: str = Field("", max_length=1024, description="Only keys that start with this.")
    delimiter: str | None = Field(
        None,
        max_length=8,
        description="Group keys by this (usually '/'): common prefixes are returned apart.",
    )
    max_keys: int = Field(1000, ge=1, le=1000, description="Most keys returned in one page.")
    continuation_token: str | None = Field(
        None, max_length=2048, description="next_token of the previous page, to continue a listing."
    )


def _list(client: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(client.list_objects_v2(**kwargs))


@operation("s3_list", category="objects", params=S3ListParams)
async def s3_list(p: S3ListParams, ctx: OpContext) -> dict[str, Any]:
    """List objects in a bucket under a prefix, one page of at most max_keys; returns objects (key, size,
    etag, last_modified), common prefixes, truncated and next_token for the next page."""
    kwargs: dict[str, Any] = {"Bucket": p.bucket, "Prefix": p.prefix, "MaxKeys": p.max_keys}
    if p.delimiter:
        kwargs["Delimiter"] = p.delimiter
    if p.continuation_token:
        kwargs["ContinuationToken"] = p.continuation_token
    # The prefix is checked like a key: a set scoped to 'reports/' may list 'reports/2024/' but not ''.
    credential = s3.credential_for(ctx, p.auth, p.bucket, p.prefix, param="prefix")
    timeout = s3.timeout_for(ctx, p.timeout_s)
    client = await asyncio.to_thread(s3.client, credential, timeout)
    page = await s3.run(
        ctx, credential, "S3 ListObjectsV2", p.bucket, s3.guarded(_list, p.bucket, p.prefix), client, kwargs
    )
    return {
        "bucket": p.bucket,
        "prefix": p.prefix,
        "objects": [
            {
                "key": o["Key"],
                "size": o.get("Size"),
                "etag": str(o.get("ETag", "")).strip('"'),
                "last_modified": _stamp(o.get("LastModified")),
            }
            for o in page.get("Contents", [])
        ],
        "prefixes": [c["Prefix"] for c in page.get("CommonPrefixes", [])],
        "truncated": bool(page.get("IsTruncated")),
        "next_token": page.get("NextContinuationToken"),
    }


# -- s3_head, s3_exists -------------------------------------------------------------------------------


class S3HeadParams(_ObjectParams):
    key: str = _KEY


def _head(client: Any, bucket: str, key: str) -> dict[str, Any]:
    return dict(client.head_object(Bucket=bucket, Key=key))


def _described(p: S3HeadParams, head: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "bucket": p.bucket,
        "key": p.key,
        "size": head.get("ContentLength"),
        "content_type": head.get("ContentType"),
        "etag": str(head.get("ETag", "")).strip('"'),
        "last_modified": _stamp(head.get("LastModified")),
        "metadata": head.get("Metadata", {}),
    }


@operation("s3_head", category="objects", params=S3HeadParams)
async def s3_head(p: S3HeadParams, ctx: OpContext) -> dict[str, Any]:
    """Describe an S3 object without fetching it: size, content_type, etag, last_modified and user metadata
    (not_found if it does not exist)."""
    return _described(p, await _call(ctx, p, "S3 HeadObject", p.key, _head, p.bucket, p.key))


@operation("s3_exists", category="objects", params=S3HeadParams)
async def s3_exists(p: S3HeadParams, ctx: OpContext) -> dict[str, Any]:
    """Whether an S3 object exists; returns bucket, key, exists and (if it does) its size."""
    try:
        head = await _call(ctx, p, "S3 HeadObject", p.key, _head, p.bucket, p.key)
    except NotFoundError:
        return {"bucket": p.bucket, "key": p.key, "exists": False, "size": None}
    return {"bucket": p.bucket, "key": p.key, "exists": True, "size": head.get("ContentLength")}


# -- s3_copy ------------------------------------------------------------------------------------------


class S3CopyParams(_ObjectParams):
    key: str = Field(min_length=1, max_length=1024, description="Key of the copy.")
    source_bucket: str | None = Field(None, min_length=3, max_length=63, description="Default: bucket.")
    source_key: str = Field(min_length=1, max_length=1024, description="Key of the object to copy.")

    @field_validator("source_bucket")
    @classmethod
    def _source_bucket_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_bucket(value)


def _copy(client: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(client.copy_object(**kwargs))


@operation("s3_copy", category="objects", params=S3CopyParams)
async def s3_copy(p: S3CopyParams, ctx: OpContext) -> dict[str, Any]:
    """Copy an S3 object (up to 5 GiB) server-side, within a bucket or between buckets the credential set may
    use; returns the new bucket, key and etag."""
    source_bucket = p.source_bucket or p.bucket
    s3.credential_for(ctx, p.auth, source_bucket, _key(p.source_key, "source_key"), param="source_key")
    kwargs = {"Bucket": p.bucket, "Key": p.key, "CopySource": {"Bucket": source_bucket, "Key": p.source_key}}
    out = await _call(ctx, p, "S3 CopyObject", p.key, _copy, kwargs)
    etag = str(out.get("CopyObjectResult", {}).get("ETag", "")).strip('"')
    return {"bucket": p.bucket, "key": p.key, "source": f"s3://{source_bucket}/{p.source_key}", "etag": etag}


# -- s3_delete ----------------------------------------------------------------------------------------


class S3DeleteParams(_ObjectParams):
    keys: list[str] = Field(min_length=1, max_length=1000, description="Keys to delete (at most 1000).")


def _delete(client: Any, bucket: str, keys: list[str]) -> dict[str, Any]:
    objects = [{"Key": k} for k in keys]
    return dict(client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": False}))


@operation("s3_delete", category="objects", params=S3DeleteParams)
async def s3_delete(p: S3DeleteParams, ctx: OpContext) -> dict[str, Any]:
    """Delete up to 1000 S3 objects in one request (a missing key counts as deleted, as in S3); returns the
    deleted keys and per-key errors."""
    for i, key in enumerate(p.keys):
        s3.credential_for(ctx, p.auth, p.bucket, _key(key, f"keys[{i}]"), param=f"keys[{i}]")
    out = await _call(ctx, p, "S3 DeleteObjects", p.keys[0], _delete, p.bucket, p.keys)
    return {
        "bucket": p.bucket,
        "deleted": [d["Key"] for d in out.get("Deleted", [])],
        "errors": [{"key": e.get("Key"), "code": e.get("Code")} for e in out.get("Errors", [])],
    }


# -- s3_presign ---------------------------------------------------------------------------------------


class S3PresignParams(_ObjectParams):
    key: str = _KEY
    method: Literal["GET", "PUT"] = Field("GET", description="What the URL lets its holder do.")
    expires_s: int = Field(
        900, ge=1, le=7 * 24 * 3600, description="Seconds the URL stays valid (at most 7 days)."
    )
    content_type: str | None = Field(
        None, max_length=256, description="For PUT: the Content-Type the upload must use."
    )


def _presign(client: Any, method: str, params: dict[str, Any], expires_s: int) -> str:
    return str(client.generate_presigned_url(method, Params=params, ExpiresIn=expires_s))


@operation("s3_presign", category="objects", params=S3PresignParams)
async def s3_presign(p: S3PresignParams, ctx: OpContext) -> dict[str, Any]:
    """Make a presigned URL that lets its holder GET or PUT one S3 object until it expires (at most 7 days);
    returns url, method and expires_at."""
    params: dict[str, Any] = {"Bucket": p.bucket, "Key": p.key}
    if p.method == "PUT" and p.content_type:
        params["ContentType"] = p.content_type
    method = "get_object" if p.method == "GET" else "put_object"
    credential = s3.credential_for(ctx, p.auth, p.bucket, _key(p.key))
    client = await asyncio.to_thread(s3.client, credential, s3.timeout_for(ctx, p.timeout_s))
    url = await asyncio.to_thread(_presign, client, method, params, p.expires_s)  # signing is local: no call
    expires_at = datetime.now(UTC) + timedelta(seconds=p.expires_s)
    return {
        "url": url,
        "method": p.method,
        "bucket": p.bucket,
        "key": p.key,
        "expires_at": expires_at.isoformat(),
    }


OPERATIONS = (s3_get, s3_put, s3_list, s3_head, s3_exists, s3_copy, s3_delete, s3_presign)
