"""Every model call the router serves or refuses is in the tenant's audit chain; prompts only if the policy says."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis

from services.common.audit import AuditLog
from services.common.settings import DEV_AUDIT_KEY
from tests.integration.test_router_metering import CATALOGUE, MakeRouter, chat, make_router  # noqa: F401

pytestmark = pytest.mark.integration


async def records(redis: Redis, namespace: str, tenant: str) -> list[dict[str, object]]:
    log = AuditLog(redis, namespace, DEV_AUDIT_KEY.encode())
    return [r async for r in log.records(tenant)]


async def wait_for_records(redis: Redis, namespace: str, tenant: str, n: int) -> list[dict[str, object]]:
    for _ in range(200):
        got = await records(redis, namespace, tenant)
        if len(got) >= n:
            return got
        await asyncio.sleep(0.025)
    raise AssertionError(
        f"expected {n} audit records for {tenant}, got {await records(redis, namespace, tenant)}"
    )


async def test_served_and_refused_calls_are_audited_and_the_chain_verifies(
    make_router: MakeRouter,  # noqa: F811
    redis: Redis,
    namespace: str,
) -> None:
    _, stub = await make_router()
    await stub.Chat(chat("gpt-4-mini", "the launch code is xyzzy-plugh", "acme", user="alice"), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Chat(chat("no-such-model", "hello", "acme"), timeout=30)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    served, failed = await wait_for_records(redis, namespace, "acme", 2)
    assert (served["action"], served["actor"], served["outcome"], served["service"]) == (
        "model.chat", "alice", "ok", "router"
    )  # fmt: skip
    details = served["details"]
    assert isinstance(details, dict) and details["prompt_tokens"] > 0 and details["deployment"]
    assert "prompt" not in details and "xyzzy" not in str(served)  # no prompts unless the policy says so
    assert (failed["resource"], failed["outcome"]) == ("model:no-such-model", "not_found")
    verified = await AuditLog(redis, namespace, DEV_AUDIT_KEY.encode()).verify("acme")
    assert verified.ok and verified.records == 2


async def test_prompts_are_recorded_for_tenants_whose_policy_asks(
    make_router: MakeRouter,  # noqa: F811
    redis: Redis,
    namespace: str,
    tmp_path: Path,
) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants:\n  acme: {log_prompts: true}\n  globex: {}\n")
    _, stub = await make_router(tenants_file=str(tenants))
    await stub.Chat(chat("gpt-4-mini", "remember the blue door", "acme"), timeout=30)
    await stub.Chat(chat("gpt-4-mini", "remember the red door", "globex"), timeout=30)
    (acme,) = await wait_for_records(redis, namespace, "acme", 1)
    (globex,) = await wait_for_records(redis, namespace, "globex", 1)
    assert acme["details"]["prompt"] == "remember the blue door"  # type: ignore[index]
    assert "prompt" not in globex["details"]  # type: ignore[operator]
