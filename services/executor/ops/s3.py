"""The one place S3 clients are built and S3 calls are made: credential scopes, client pool, hop, errors.

boto3 blocks, so calls run in the HTTP client's bounded S3 thread pool (or a worker thread when the executor
has no HTTP client, as in tools and tests) inside the endpoint's hop: breaker, metrics and a span.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    OpenClawError,
    PayloadTooLargeError,
    PermissionDeniedError,
    UnavailableError,
)
from services.executor.context import OpContext
from services.executor.ops.base import scoped_credential

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

_S3_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token", "endpoint_url", "region_name")
DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 256 * 1024


class Sink(Protocol):
    """Where get_into streams an object (services.executor.ops.files.Sink)."""

    limit: int

    def write(self, chunk: bytes) -> None: ...


@lru_cache(maxsize=32)
def _client(items: tuple[tuple[str, str], ...], timeout_s: float) -> S3Client:
    import boto3  # heavy: imported only when an S3 step runs
    from botocore.config import Config

    kwargs = {k: v for k, v in items if k in _S3_KEYS}
    config = Config(
        connect_timeout=5,
        read_timeout=timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
        signature_version="s3v4",
    )
    client: S3Client = boto3.session.Session().client("s3", config=config, **kwargs)  # type: ignore[call-overload]
    return client


def client(credential: Mapping[str, str], timeout_s: float = DEFAULT_TIMEOUT_S) -> S3Client:
    """A boto3 S3 client for a credential set, shared by every step that uses the same set and timeout."""
    return _client(tuple(sorted(credential.items())), timeout_s)


def error(exc: Any, bucket: str, key: str = "") -> OpenClawError:
    """The catalogue's error for a botocore ClientError."""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    where = f"s3://{bucket}/{key}"
    if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
        return NotFoundError(f"{where}: {code}")
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return PermissionDeniedError(f"{where}: {code}")
    if status == 429 or status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable"):
        return UnavailableError(f"{where}: {code or status}")
    return InvalidInputError(f"{where}: {code or status}")


def credential_for(
    ctx: OpContext, auth: str | None, bucket: str, key: str | None = None, *, param: str = "key"
) -> Mapping[str, str]:
    """The named credential set, checked against its tenants, buckets and (for key) prefixes scopes."""
    if not auth:
        raise InvalidInputError(
            "auth: S3 operations need a credential set (auth) from the executor's settings"
        )
    return scoped_credential(ctx, auth, bucket=bucket, key=key, param=param)


def timeout_for(ctx: OpContext, timeout_s: float | None) -> float:
    """The step's timeout, else the executor's HTTP timeout."""
    http = ctx.services.http
    return timeout_s or (http.timeout_s if http is not None else DEFAULT_TIMEOUT_S)


def guarded(fn: Callable[..., T], bucket: str, key: str) -> Callable[..., T]:
    """fn with botocore's errors turned into the catalogue's, naming the bucket and key."""

    def call(*args: Any) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args)
        except ClientError as exc:
            raise error(exc, bucket, key) from exc
        except BotoCoreError as exc:
            raise UnavailableError(f"s3://{bucket}/{key}: {exc}") from exc

    return call


async def run(
    ctx: OpContext,
    credential: Mapping[str, str],
    span: str,
    bucket: str,
    fn: Callable[..., T],
    *args: Any,
) -> T:
    """Run a blocking S3 call in the S3 pool, inside the endpoint's hop (breaker, metrics, span)."""
    endpoint = urlsplit(credential.get("endpoint_url", "")).hostname or "s3.amazonaws.com"
    http = ctx.services.http
    if http is None:  # no shared client (tools, tests): no pool or hop to protect either
        return await asyncio.to_thread(fn, *args)
    async with http.hop(endpoint).guard(span, **{"rpc.system": "aws-api", "aws.s3.bucket": bucket}):
        return await http.run_s3(fn, *args)


def get_into(credential: Mapping[str, str], bucket: str, key: str, sink: Sink, timeout_s: float) -> str:
    """Stream an object into sink (which enforces its limit); returns its content type. Blocking."""
    return stream_into(client(credential, timeout_s), bucket, key, sink)


def stream_into(s3_client: S3Client, bucket: str, key: str, sink: Sink) -> str:
    """get_into with a client already built."""
    obj = s3_client.get_object(Bucket=bucket, Key=key)
    length = int(obj.get("ContentLength") or 0)
    body = obj["Body"]
    try:
        if length > sink.limit:
            raise PayloadTooLargeError(f"s3://{bucket}/{key} is {length} bytes; the limit is {sink.limit}")
        for chunk in body.iter_chunks(_CHUNK):
            sink.write(chunk)
    finally:
        body.close()
    return str(obj.get("ContentType") or "")
