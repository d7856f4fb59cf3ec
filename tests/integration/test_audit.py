"""The audit trail: every record chained; deleting, reordering, altering or truncating is detected."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.common.audit import AuditEvent, AuditLog

pytestmark = pytest.mark.integration
KEY = b"k" * 32


@pytest.fixture
async def log(redis: Redis, namespace: str) -> AsyncIterator[AuditLog]:
    audit = AuditLog(redis, namespace, KEY, service="gateway", flush_interval_s=0.01)
    await audit.start()
    yield audit
    await audit.stop()


async def write(log: AuditLog, tenant: str, n: int) -> None:
    for i in range(n):
        await log.record(AuditEvent(tenant=tenant, actor="alice", action="task.submit", resource=f"task:{i}"))
    await log.flush()


async def entries(redis: Redis, namespace: str, tenant: str) -> list[tuple[str, dict[str, str]]]:
    return await redis.xrange(f"{namespace}:audit:{tenant}")


async def test_records_are_chained_per_tenant_and_verify(log: AuditLog, redis: Redis, namespace: str) -> None:
    await write(log, "acme", 5)
    await write(log, "globex", 2)
    acme = [r async for r in log.records("acme")]
    assert [r["seq"] for r in acme] == [1, 2, 3, 4, 5]
    assert [r["resource"] for r in acme] == [f"task:{i}" for i in range(5)]
    assert all(r["tenant"] == "acme" and r["service"] == "gateway" for r in acme)
    assert acme[1]["prev"] == acme[0]["mac"]
    assert await log.tenants() == ["acme", "globex"]
    assert (await log.verify("acme")).ok and (await log.verify("acme")).records == 5
    assert (await log.verify("globex")).records == 2  # a tenant's export never holds another tenant's records


async def test_two_writers_interleave_without_forking_the_chain(
    redis: Redis, namespace: str, log: AuditLog
) -> None:
    other = AuditLog(redis, namespace, KEY, service="executor")  # another replica, its own head cache
    await asyncio.gather(write(log, "acme", 30), write(other, "acme", 30))
    result = await log.verify("acme")
    assert result.ok and result.records == 60, result.problem


async def test_an_altered_record_is_detected(log: AuditLog, redis: Redis, namespace: str) -> None:
    await write(log, "acme", 4)
    stream = f"{namespace}:audit:acme"
    original = await entries(redis, namespace, "acme")
    await redis.delete(stream)
    for i, (_, fields) in enumerate(original):  # rewrite history: the same records, one of them changed
        record = json.loads(fields["r"])
        if i == 2:
            record["outcome"] = "denied"
        await redis.xadd(stream, {"r": json.dumps(record)})
    result = await log.verify("acme")
    assert not result.ok and result.problem == "seq 3: altered (its MAC does not match)"


async def test_a_deleted_record_is_detected(log: AuditLog, redis: Redis, namespace: str) -> None:
    await write(log, "acme", 4)
    entry_id, _ = (await entries(redis, namespace, "acme"))[1]
    await redis.xdel(f"{namespace}:audit:acme", entry_id)
    result = await log.verify("acme")
    assert not result.ok and "seq 3, expected 2" in result.problem


async def test_reordered_records_are_detected(log: AuditLog, redis: Redis, namespace: str) -> None:
    await write(log, "acme", 3)
    _, (id_b, b), (id_c, c) = await entries(redis, namespace, "acme")
    stream = f"{namespace}:audit:acme"
    await redis.xdel(stream, id_b, id_c)
    await redis.xadd(stream, c)
    await redis.xadd(stream, b)
    result = await log.verify("acme")
    assert not result.ok and "expected 2" in result.problem


async def test_a_truncated_tail_is_detected(log: AuditLog, redis: Redis, namespace: str) -> None:
    await write(log, "acme", 3)
    last_id, _ = (await entries(redis, namespace, "acme"))[-1]
    await redis.xdel(f"{namespace}:audit:acme", last_id)
    result = await log.verify("acme")
    assert not result.ok and "does not match the last record" in result.problem


async def test_a_forged_chain_without_the_key_does_not_verify(
    log: AuditLog, redis: Redis, namespace: str
) -> None:
    forger = AuditLog(redis, namespace, b"x" * 32)  # knows the format, not the key
    await write(forger, "acme", 2)
    result = await log.verify("acme")
    assert not result.ok and "altered" in result.problem


async def test_secrets_in_details_are_redacted(log: AuditLog) -> None:
    await log.record(
        AuditEvent(
            tenant="acme",
            actor="bob",
            action="op.http_request",
            details={"url": "https://x.test", "headers": {"Authorization": "Bearer abc"}, "api_key": "k"},
        )
    )
    await log.flush()
    (record,) = [r async for r in log.records("acme")]
    assert record["details"] == {
        "url": "https://x.test",
        "headers": {"Authorization": "[redacted]"},
        "api_key": "[redacted]",
    }


def test_a_short_audit_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        AuditLog(None, "ns", b"short")  # type: ignore[arg-type]


async def test_cli_verifies_and_exports(
    log: AuditLog,
    redis: Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from openclaw.cli import main

    await write(log, "acme", 3)
    monkeypatch.setenv("OPENCLAW_NAMESPACE", namespace)
    monkeypatch.setenv("OPENCLAW_AUDIT_KEY", KEY.decode())
    assert await asyncio.to_thread(main, ["audit", "verify"]) == 0
    assert capsys.readouterr().out.strip() == "acme: 3 records, ok"
    assert await asyncio.to_thread(main, ["audit", "export", "--tenant", "acme"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in lines] == [1, 2, 3] and all(r["mac"] for r in lines)
    first_id, _ = (await entries(redis, namespace, "acme"))[0]
    await redis.xdel(f"{namespace}:audit:acme", first_id)
    assert await asyncio.to_thread(main, ["audit", "verify", "--tenant", "acme"]) == 1
    assert "TAMPERED" in capsys.readouterr().out
