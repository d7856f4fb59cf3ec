"""Encryption at rest of the files operations write, against real Redis (the data keys) and moto's S3 server: with
master keys, every file the file, archive and S3 operations leave on disk is sealed and holds no plaintext, while
the operations read the plaintext back; a sealed file moved to another tenant does not decrypt; master-key
rotation keeps files readable; files from before the keys still read; SQLite is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr
from redis.asyncio import Redis

from services.common.encryption import BLOB_MAGIC, DecryptionError, Keyring, MasterKeys, Sealer
from services.common.envelope import SealingPublisher
from services.common.errors import PermissionDeniedError
from services.common.publisher import TaskPublisher
from services.common.taskstore import TaskStore
from services.common.topology import Topology
from services.executor.bootstrap import ExecutorApp, build
from services.executor.context import OpContext, OpServices
from services.executor.ops.http import HttpClient
from services.executor.ops.storage import vault
from services.executor.settings import ExecutorSettings
from services.gateway.bootstrap import ExecutorCatalogue
from services.gateway.tasks import SubmitRequest, TaskService
from tests.unit.ops.harness import run_op

pytestmark = pytest.mark.integration

TENANT = "acme"
K1 = base64.b64encode(os.urandom(32)).decode()
K2 = base64.b64encode(os.urandom(32)).decode()
SECRET = "okapi-file-secret-4471"
LINE = "narwhal-line-9902"
OBJECT = "quokka-object-3318"
MARKS = (SECRET, LINE, OBJECT)


def sealer_for(redis: Redis, namespace: str, keys: dict[str, str], current: str) -> Sealer:
    return Sealer(Keyring(redis, namespace, MasterKeys(keys, current)))


def ctx_for(root: Path, tenant: str = TENANT, **services: Any) -> OpContext:
    return OpContext(
        tenant=tenant, task_id="t1", step_id="s1", services=OpServices(storage_root=root, **services)
    )


def files_under(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root):
        for name in names:
            yield Path(dirpath) / name


def assert_no_plaintext(root: Path) -> int:
    """Every non-empty file under root is sealed and holds none of the marks; returns how many were read."""
    count = 0
    for path in files_under(root):
        raw = path.read_bytes()
        if not raw:
            continue
        count += 1
        assert raw.startswith(BLOB_MAGIC), f"{path.relative_to(root)} is not sealed"
        for mark in MARKS:
            assert mark.encode() not in raw, f"{mark!r} found in plaintext in {path.relative_to(root)}"
    return count


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
async def http() -> AsyncIterator[HttpClient]:
    client = HttpClient(s3_max_threads=2)
    yield client
    await client.close()


async def s3_context(
    root: Path, endpoint: str, http: HttpClient, sealer: Sealer
) -> tuple[OpContext, dict[str, str]]:
    """A sealed context with an S3 credential set and a fresh bucket; returns it and the common S3 params."""
    import boto3

    keys = {
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
    }
    bucket = f"b-{uuid.uuid4().hex[:12]}"

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
    credentials = ExecutorSettings.model_validate({"credentials": {"s3": keys}}).credentials
    ctx = ctx_for(root, credentials=credentials, http=http, sealer=sealer)
    return ctx, {"bucket": bucket, "auth": "s3"}


async def test_every_file_an_operation_writes_is_sealed_and_reads_back(
    redis: Redis, namespace: str, tmp_path: Path, endpoint: str, http: HttpClient
) -> None:
    sealer = sealer_for(redis, namespace, {"k1": K1}, "k1")
    ctx, s3 = await s3_context(tmp_path, endpoint, http, sealer)
    text = f"{SECRET}\n" * 50

    written = await run_op("file_write", {"path": "notes/a.txt", "content": text}, ctx)
    assert written["size"] == len(text)
    await run_op("file_write", {"path": "notes/a.txt", "content": f"{SECRET}-tail", "mode": "append"}, ctx)
    await run_op("file_append_lines", {"path": "notes/a.txt", "lines": [LINE, LINE]}, ctx)
    whole = f"{text}{SECRET}-tail\n{LINE}\n{LINE}\n"
    await run_op(
        "file_write_if_absent", {"path": "notes/once.json", "content": {"s": SECRET}, "format": "json"}, ctx
    )
    await run_op("file_copy", {"source": "notes/a.txt", "destination": "copy/a.txt"}, ctx)
    await run_op("file_copy", {"source": "notes", "destination": "tree", "recursive": True}, ctx)
    await run_op("file_move", {"source": "copy/a.txt", "destination": "moved/b.txt"}, ctx)
    # Stored uncompressed, a plaintext archive would show the marks: sealing is what hides them.
    zipped = await run_op(
        "zip_create", {"path": "out/a.zip", "sources": ["notes"], "compression": "stored"}, ctx
    )
    await run_op("zip_extract", {"path": "out/a.zip", "destination": "unzipped"}, ctx)
    tarred = await run_op(
        "tar_create", {"path": "out/a.tar", "sources": ["notes"], "compression": "none"}, ctx
    )
    await run_op("tar_extract", {"path": "out/a.tar", "destination": "untarred"}, ctx)
    gz = await run_op("gzip_compress", {"path": "notes/a.txt", "destination": "out/a.txt.gz"}, ctx)
    await run_op("gzip_decompress", {"path": "out/a.txt.gz", "destination": "gunzipped/a.txt"}, ctx)
    await run_op("s3_put", {**s3, "key": "in.txt", "content": OBJECT}, ctx)
    got = await run_op("s3_get", {**s3, "key": "in.txt", "path": "s3/in.txt"}, ctx)
    downloaded = await run_op(
        "file_download", {"url": f"s3://{s3['bucket']}/in.txt", "path": "s3/dl.txt", "auth": "s3"}, ctx
    )
    assert got["size"] == downloaded["size"] == len(OBJECT)
    assert downloaded["sha256"] == hashlib.sha256(OBJECT.encode()).hexdigest()

    assert assert_no_plaintext(tmp_path) >= 14
    for mark in MARKS:  # the data keys in Redis are wrapped; nothing of the files is there
        async for key in redis.scan_iter(match=f"{namespace}:*"):
            assert mark not in json.dumps(await redis.hgetall(key))  # type: ignore[misc]

    for path in (
        "notes/a.txt",
        "tree/a.txt",
        "moved/b.txt",
        "unzipped/notes/a.txt",
        "untarred/notes/a.txt",
        "gunzipped/a.txt",
    ):
        assert (await run_op("file_read", {"path": path}, ctx))["content"] == whole, path
    assert (await run_op("file_read", {"path": "tree/once.json", "format": "json"}, ctx))["content"] == {
        "s": SECRET
    }
    assert (await run_op("file_read", {"path": "s3/in.txt"}, ctx))["content"] == OBJECT
    lines = await run_op(
        "file_read_lines", {"path": "notes/a.txt", "start": 1, "count": 2, "from_end": True}, ctx
    )
    assert lines["lines"] == [LINE, LINE]
    checksum = await run_op("file_checksum", {"path": "moved/b.txt"}, ctx)
    assert checksum["hex"] == hashlib.sha256(whole.encode()).hexdigest() and checksum["size"] == len(whole)
    # Sizes are of the plaintext, from the sealed header.
    assert (await run_op("file_stat", {"path": "notes/a.txt"}, ctx))["size"] == len(whole)
    assert (await run_op("file_touch", {"path": "notes/a.txt"}, ctx))["size"] == len(whole)
    listed = await run_op("file_list", {"path": "notes"}, ctx)
    assert {e["path"]: e["size"] for e in listed["entries"]}["notes/a.txt"] == len(whole)
    tree = await run_op("file_tree_size", {"path": "untarred"}, ctx)
    assert tree["bytes"] == len(whole) + len(json.dumps({"s": SECRET}, indent=2))
    assert zipped["bytes"] == tarred["bytes"] == tree["bytes"]
    assert gz["original_size"] == len(whole)
    members = await run_op("zip_list", {"path": "out/a.zip"}, ctx)
    assert {e["name"]: e["size"] for e in members["entries"]}["notes/a.txt"] == len(whole)
    tar_members = await run_op("tar_list", {"path": "out/a.tar"}, ctx)
    assert {e["name"]: e["size"] for e in tar_members["entries"]}["notes/a.txt"] == len(whole)
    # An object put from a sealed file carries its plaintext.
    await run_op("s3_put", {**s3, "key": "back.txt", "path": "notes/a.txt"}, ctx)
    assert (await run_op("s3_get", {**s3, "key": "back.txt"}, ctx))["content"] == whole


async def test_a_sealed_file_moved_to_another_tenant_or_altered_does_not_decrypt(
    redis: Redis, namespace: str, tmp_path: Path
) -> None:
    sealer = sealer_for(redis, namespace, {"k1": K1}, "k1")
    acme = ctx_for(tmp_path, sealer=sealer)
    beta = ctx_for(tmp_path, tenant="beta", sealer=sealer)
    await run_op("file_write", {"path": "mine.txt", "content": SECRET}, acme)
    await run_op("file_write", {"path": "own.txt", "content": "beta's own"}, beta)  # beta has a data key too
    raw = (tmp_path / TENANT / "mine.txt").read_bytes()
    (tmp_path / "beta" / "stolen.txt").write_bytes(raw)
    with pytest.raises(DecryptionError, match=r"'stolen\.txt' failed its integrity check"):
        await run_op("file_read", {"path": "stolen.txt"}, beta)
    with pytest.raises(DecryptionError, match="integrity check"):
        await run_op("file_checksum", {"path": "stolen.txt"}, beta)

    altered = bytearray(raw)
    altered[-1] ^= 0x01
    (tmp_path / TENANT / "altered.txt").write_bytes(bytes(altered))
    with pytest.raises(DecryptionError, match=r"'altered\.txt' failed its integrity check"):
        await run_op("file_read", {"path": "altered.txt"}, acme)
    assert (await run_op("file_read", {"path": "mine.txt"}, acme))["content"] == SECRET


async def test_master_key_rotation_keeps_files_readable(redis: Redis, namespace: str, tmp_path: Path) -> None:
    old = ctx_for(tmp_path, sealer=sealer_for(redis, namespace, {"k1": K1}, "k1"))
    await run_op("file_write", {"path": "kept.txt", "content": SECRET}, old)
    sealed_before = (tmp_path / TENANT / "kept.txt").read_bytes()

    assert await Keyring(redis, namespace, MasterKeys({"k1": K1, "k2": K2}, "k2")).rewrap(TENANT) == 1
    assert (tmp_path / TENANT / "kept.txt").read_bytes() == sealed_before  # the file itself is untouched
    # k1 retired: only the re-wrapped data key stands between k2 and the file.
    new = ctx_for(tmp_path, sealer=sealer_for(redis, namespace, {"k2": K2}, "k2"))
    assert (await run_op("file_read", {"path": "kept.txt"}, new))["content"] == SECRET
    await run_op("file_append_lines", {"path": "kept.txt", "lines": [LINE]}, new)
    assert (await run_op("file_read", {"path": "kept.txt"}, new))["content"] == f"{SECRET}\n{LINE}\n"


async def test_files_from_before_the_keys_still_read_and_are_sealed_when_rewritten(
    redis: Redis, namespace: str, tmp_path: Path
) -> None:
    plain = ctx_for(tmp_path)
    await run_op("file_write", {"path": "old.txt", "content": SECRET}, plain)
    assert (tmp_path / TENANT / "old.txt").read_bytes() == SECRET.encode()  # no keys: nothing changes

    sealed = ctx_for(tmp_path, sealer=sealer_for(redis, namespace, {"k1": K1}, "k1"))
    assert (await run_op("file_read", {"path": "old.txt"}, sealed))["content"] == SECRET
    assert (await run_op("file_stat", {"path": "old.txt"}, sealed))["size"] == len(SECRET)
    await run_op("file_append_lines", {"path": "old.txt", "lines": [LINE]}, sealed)
    assert (await run_op("file_read", {"path": "old.txt"}, sealed))["content"] == f"{SECRET}\n{LINE}\n"
    assert assert_no_plaintext(tmp_path) == 1


async def test_sqlite_on_the_tenant_root_is_refused_while_files_are_sealed(
    redis: Redis, namespace: str, tmp_path: Path
) -> None:
    sealed = ctx_for(tmp_path, sealer=sealer_for(redis, namespace, {"k1": K1}, "k1"))
    with pytest.raises(PermissionDeniedError, match=r"path: SQLite files .* encrypted at rest") as caught:
        await run_op("sql_execute", {"path": "db.sqlite", "sql": "CREATE TABLE t (x TEXT)"}, sealed)
    assert caught.value.details.get("param") == "path"
    assert not (tmp_path / TENANT / "db.sqlite").exists()
    plain = ctx_for(tmp_path)
    assert await run_op("sql_execute", {"path": "db.sqlite", "sql": "CREATE TABLE t (x TEXT)"}, plain)


async def test_the_executor_seals_files_with_master_keys_configured(
    amqp: AbstractRobustConnection,
    redis: Redis,
    topology: Topology,
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    await topology.declare(await amqp.channel())
    settings = ExecutorSettings(
        namespace=namespace,
        amqp_url=rabbitmq_url,
        redis_url=redis_url,
        metrics_port=0,
        storage_root=tmp_path,
        drain_seconds=2.0,
        router_addr="127.0.0.1:1",
        master_keys=SecretStr(json.dumps({"k1": K1})),
        master_key_id="k1",
    )
    app: ExecutorApp = build(settings, topology=topology)
    await app.start()
    publisher = TaskPublisher(amqp, topology)
    try:
        sealer = sealer_for(redis, namespace, {"k1": K1}, "k1")
        tasks = TaskService(
            TaskStore(redis, namespace, sealer=sealer),
            SealingPublisher(publisher, sealer),
            ExecutorCatalogue(),
        )
        workflow = {
            "name": "files",
            "steps": [
                {"id": "w", "type": "file_write", "params": {"path": "r.txt", "content": SECRET}},
                {"id": "r", "type": "file_read", "params": {"path": "r.txt"}},
            ],
        }
        submitted = await tasks.submit(TENANT, SubmitRequest(workflow=workflow))
        record = await tasks.get(TENANT, submitted.task.id, steps=True, wait_s=20.0)
        assert record.status == "succeeded", record.error
        assert record.steps["r"]["output"]["content"] == SECRET
        assert assert_no_plaintext(tmp_path) == 1
    finally:
        await publisher.close()
        await app.stop()


async def test_the_vault_refuses_to_wait_on_the_event_loop_itself(
    redis: Redis, namespace: str, tmp_path: Path
) -> None:
    box = vault(ctx_for(tmp_path, sealer=sealer_for(redis, namespace, {"k1": K1}, "k1")))
    # Waiting for the keyring on the loop's own thread would hang it: a clear error instead.
    with pytest.raises(RuntimeError, match="worker threads only"):
        box.seal(b"data")
    sealed = await asyncio.to_thread(box.seal, b"data")
    assert sealed.startswith(BLOB_MAGIC) and await asyncio.to_thread(box.open_blob, sealed, "x") == b"data"
