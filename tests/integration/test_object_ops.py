"""S3 object operations against moto's real S3 HTTP server on loopback: behaviour, scopes and bounds."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from services.executor.context import OpContext
from services.executor.ops.http import HttpClient
from services.executor.settings import ExecutorSettings
from tests.unit.ops.harness import TENANT, ctx_for, run_op


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for this module's tests."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket() -> str:
    """A bucket name unique to the test."""
    return f"b-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(s3_max_threads=2)
    yield client
    await client.close()


def credentials(endpoint: str, bucket: str) -> dict[str, dict[str, str]]:
    """Credential sets as the executor's settings hold them: open, scoped to a prefix, to another tenant."""
    keys = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
    }
    settings = ExecutorSettings.model_validate(
        {
            "credentials": {
                "s3": keys,
                "reports_only": {**keys, "buckets": [bucket], "prefixes": ["reports/"]},
                "beta_only": {**keys, "tenants": ["beta"]},
                "other_bucket": {**keys, "buckets": ["elsewhere"]},
            }
        }
    )
    return settings.credentials


@pytest.fixture
async def ctx(tmp_path: Path, endpoint: str, bucket: str, http: HttpClient) -> OpContext:
    context = ctx_for(
        tmp_path, credentials=credentials(endpoint, bucket), http=http, max_output_bytes=64 * 1024
    )
    await create_bucket(endpoint, bucket)
    return context


async def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    def create() -> None:
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=bucket)

    await asyncio.to_thread(create)


async def test_put_get_head_exists_in_every_format(ctx: OpContext, bucket: str, tmp_path: Path) -> None:
    common = {"bucket": bucket, "auth": "s3"}
    put = await run_op(
        "s3_put", {**common, "key": "notes/a.txt", "content": "héllo", "content_type": "text/plain"}, ctx
    )
    assert put["size"] == len("héllo".encode()) and re.fullmatch(r"[0-9a-f]{32}", put["etag"])
    got = await run_op("s3_get", {**common, "key": "notes/a.txt"}, ctx)
    assert got == {
        "bucket": bucket,
        "key": "notes/a.txt",
        "size": 6,
        "content_type": "text/plain",
        "content": "héllo",
    }

    await run_op("s3_put", {**common, "key": "d.json", "content": {"a": [1, 2]}, "format": "json"}, ctx)
    assert (await run_op("s3_get", {**common, "key": "d.json", "format": "json"}, ctx))["content"] == {
        "a": [1, 2]
    }
    raw = base64.b64encode(b"\x00\x01\xff").decode()
    await run_op("s3_put", {**common, "key": "b.bin", "content": raw, "format": "base64"}, ctx)
    assert (await run_op("s3_get", {**common, "key": "b.bin", "format": "base64"}, ctx))["content"] == raw
    with pytest.raises(InvalidInputError, match="is not UTF-8 text"):
        await run_op("s3_get", {**common, "key": "b.bin"}, ctx)

    # The previous step's output is the content when none is given.
    piped = ctx_for(tmp_path, prev="from the last step", has_prev=True, credentials=ctx.services.credentials)
    await run_op("s3_put", {**common, "key": "piped.txt"}, piped)
    assert (await run_op("s3_get", {**common, "key": "piped.txt"}, ctx))["content"] == "from the last step"

    head = await run_op(
        "s3_head",
        {**common, "key": "notes/a.txt"},
        ctx,
    )
    assert head["size"] == 6 and head["content_type"] == "text/plain" and head["etag"] == put["etag"]
    assert head["last_modified"].endswith("+00:00")
    assert (await run_op("s3_exists", {**common, "key": "notes/a.txt"}, ctx))["exists"] is True
    assert await run_op("s3_exists", {**common, "key": "nope"}, ctx) == {
        "bucket": bucket,
        "key": "nope",
        "exists": False,
        "size": None,
    }
    with pytest.raises(NotFoundError, match=f"s3://{bucket}/nope"):
        await run_op("s3_get", {**common, "key": "nope"}, ctx)
    with pytest.raises(NotFoundError):
        await run_op("s3_head", {**common, "key": "nope"}, ctx)


async def test_files_go_up_and_come_back_through_the_tenants_storage(
    ctx: OpContext, bucket: str, tmp_path: Path
) -> None:
    common = {"bucket": bucket, "auth": "s3"}
    root = tmp_path / TENANT
    root.mkdir()
    (root / "data.csv").write_bytes(b"a,b\n" * 1000)
    up = await run_op(
        "s3_put", {**common, "key": "up/data.csv", "path": "data.csv", "metadata": {"run": "7"}}, ctx
    )
    assert up["size"] == 4000
    assert (await run_op("s3_head", {**common, "key": "up/data.csv"}, ctx))["metadata"] == {"run": "7"}
    down = await run_op("s3_get", {**common, "key": "up/data.csv", "path": "back/data.csv"}, ctx)
    assert down["path"] == "back/data.csv" and down["size"] == 4000
    assert (root / "back" / "data.csv").read_bytes() == (root / "data.csv").read_bytes()
    with pytest.raises(NotFoundError):
        await run_op("s3_put", {**common, "key": "x", "path": "missing.csv"}, ctx)
    with pytest.raises(InvalidInputError, match=re.escape("contains '..'")):
        await run_op("s3_get", {**common, "key": "up/data.csv", "path": "../escape.csv"}, ctx)
    with pytest.raises(InvalidInputError, match="give either path or content"):
        await run_op("s3_put", {**common, "key": "x", "path": "data.csv", "content": "y"}, ctx)
    assert not (tmp_path / "escape.csv").exists()


async def test_list_pages_copy_and_delete(ctx: OpContext, bucket: str) -> None:
    common = {"bucket": bucket, "auth": "s3"}
    for key in ("r/1.txt", "r/2.txt", "r/3.txt", "r/sub/4.txt", "other.txt"):
        await run_op("s3_put", {**common, "key": key, "content": key}, ctx)
    first = await run_op("s3_list", {**common, "prefix": "r/", "max_keys": 2}, ctx)
    assert [o["key"] for o in first["objects"]] == ["r/1.txt", "r/2.txt"] and first["truncated"] is True
    rest = await run_op("s3_list", {**common, "prefix": "r/", "continuation_token": first["next_token"]}, ctx)
    assert [o["key"] for o in rest["objects"]] == ["r/3.txt", "r/sub/4.txt"] and rest["truncated"] is False
    grouped = await run_op("s3_list", {**common, "prefix": "r/", "delimiter": "/"}, ctx)
    assert len(grouped["objects"]) == 3 and grouped["prefixes"] == ["r/sub/"]
    assert grouped["objects"][0]["size"] == len("r/1.txt")

    copied = await run_op("s3_copy", {**common, "key": "copy/1.txt", "source_key": "r/1.txt"}, ctx)
    assert copied["source"] == f"s3://{bucket}/r/1.txt"
    assert (await run_op("s3_get", {**common, "key": "copy/1.txt"}, ctx))["content"] == "r/1.txt"
    with pytest.raises(NotFoundError):
        await run_op("s3_copy", {**common, "key": "copy/x", "source_key": "missing"}, ctx)

    out = await run_op("s3_delete", {**common, "keys": ["r/1.txt", "r/2.txt", "never-was"]}, ctx)
    assert sorted(out["deleted"]) == ["never-was", "r/1.txt", "r/2.txt"] and out["errors"] == []
    left = await run_op("s3_list", {**common, "prefix": "r/"}, ctx)
    assert [o["key"] for o in left["objects"]] == ["r/3.txt", "r/sub/4.txt"]


async def test_presigned_urls_work_and_expiry_is_bounded(ctx: OpContext, bucket: str) -> None:
    common = {"bucket": bucket, "auth": "s3"}
    await run_op("s3_put", {**common, "key": "shared.txt", "content": "for your eyes"}, ctx)
    get = await run_op("s3_presign", {**common, "key": "shared.txt", "expires_s": 60}, ctx)
    put = await run_op("s3_presign", {**common, "key": "upload.txt", "method": "PUT"}, ctx)
    assert (
        get["method"] == "GET"
        and "X-Amz-Expires=60" in get["url"]
        and "testing" not in get["url"].split("?")[0]
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(get["url"]) as response:
            assert response.status == 200 and await response.text() == "for your eyes"
        async with session.put(put["url"], data=b"uploaded by someone else") as response:
            assert response.status == 200
    assert (await run_op("s3_get", {**common, "key": "upload.txt"}, ctx))[
        "content"
    ] == "uploaded by someone else"
    with pytest.raises(ValidationError, match="expires_s"):
        await run_op("s3_presign", {**common, "key": "shared.txt", "expires_s": 8 * 24 * 3600}, ctx)


async def test_credential_scopes_bucket_tenant_and_prefix(ctx: OpContext, bucket: str) -> None:
    scoped = {"bucket": bucket, "auth": "reports_only"}
    await run_op("s3_put", {**scoped, "key": "reports/q1.txt", "content": "ok"}, ctx)
    assert (await run_op("s3_get", {**scoped, "key": "reports/q1.txt"}, ctx))["content"] == "ok"
    refusals: list[tuple[str, dict[str, Any], str]] = [
        ("s3_get", {**scoped, "key": "secrets/k.txt"}, "key: credential set 'reports_only' may only be used"),
        ("s3_put", {**scoped, "key": "secrets/k.txt", "content": "x"}, "key: credential set"),
        ("s3_list", {**scoped}, "prefix: credential set 'reports_only'"),
        (
            "s3_copy",
            {**scoped, "key": "reports/c.txt", "source_key": "secrets/k.txt"},
            "source_key: credential",
        ),
        ("s3_delete", {**scoped, "keys": ["reports/q1.txt", "secrets/k.txt"]}, "keys[1]: credential set"),
        ("s3_presign", {**scoped, "key": "secrets/k.txt"}, "key: credential set"),
        (
            "s3_head",
            {"bucket": bucket, "auth": "beta_only", "key": "reports/q1.txt"},
            "may not be used by tenant",
        ),
        ("s3_exists", {"bucket": bucket, "auth": "other_bucket", "key": "a"}, f"for bucket '{bucket}'"),
        (
            "file_download",
            {"url": f"s3://{bucket}/secrets/k.txt", "auth": "reports_only"},
            "url: credential set",
        ),
    ]
    for op, params, fragment in refusals:
        with pytest.raises(PermissionDeniedError, match=re.escape(fragment)):
            await run_op(op, params, ctx)
    # The refused delete deleted nothing, not even the allowed key.
    assert (await run_op("s3_exists", {**scoped, "key": "reports/q1.txt"}, ctx))["exists"] is True
    listed = await run_op("s3_list", {**scoped, "prefix": "reports/"}, ctx)
    assert [o["key"] for o in listed["objects"]] == ["reports/q1.txt"]


async def test_bounds_and_bad_input(ctx: OpContext, bucket: str) -> None:
    common = {"bucket": bucket, "auth": "s3"}
    await run_op("s3_put", {**common, "key": "big.txt", "content": "x" * 100_000}, ctx)
    with pytest.raises(PayloadTooLargeError, match="100000 bytes; the limit is 65536"):
        await run_op("s3_get", {**common, "key": "big.txt"}, ctx)  # the executor's output limit
    with pytest.raises(PayloadTooLargeError, match="the limit is 10"):
        await run_op("s3_get", {**common, "key": "big.txt", "path": "big.txt", "max_bytes": 10}, ctx)
    with pytest.raises(ValidationError, match="bucket"):
        await run_op("s3_get", {"bucket": "Not_A_Bucket", "auth": "s3", "key": "k"}, ctx)
    with pytest.raises(ValidationError, match="source_bucket"):
        await run_op("s3_copy", {**common, "key": "k", "source_bucket": "../x", "source_key": "k"}, ctx)
    with pytest.raises(ValidationError, match="keys"):
        await run_op("s3_delete", {**common, "keys": []}, ctx)
    with pytest.raises(InvalidInputError, match="content: required"):
        await run_op("s3_put", {**common, "key": "k"}, ctx)
    with pytest.raises(InvalidInputError, match="content: format 'text' needs a string"):
        await run_op("s3_put", {**common, "key": "k", "content": {"a": 1}}, ctx)
    with pytest.raises(InvalidInputError, match="unknown credential set 'nope'"):
        await run_op("s3_get", {"bucket": bucket, "auth": "nope", "key": "k"}, ctx)
