"""Waits through the real gateway and worker on RabbitMQ and Redis: a waiting task is parked (no delivery
held, status ``waiting``) and re-published when its time comes or a signal arrives over
``POST /v1/tasks/{id}/signals/{name}``, which is tenant-checked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection
from pydantic import SecretStr

from services.common.topology import Topology
from services.gateway import GatewayApp, GatewaySettings, build, mint_token
from tests.integration import test_executor as base

pytestmark = pytest.mark.integration

harness = base.harness
Harness = base.Harness
TENANT = base.TENANT
SECRET = "signals-test-secret-0123456789abcdef"

APPROVAL: dict[str, Any] = {
    "name": "approval",
    "steps": [
        {
            "id": "draft",
            "type": "json_transform",
            "params": {"expression": "plan", "input": {"plan": "ship it"}},
        },
        {"id": "approval", "type": "wait", "signal": "approval", "timeout": 600},
        {
            "id": "publish",
            "type": "json_transform",
            "when": "${{ steps.approval.output.received and steps.approval.output.payload.ok }}",
            "params": {"expression": "@", "input": "${{ steps.draft.output }}"},
        },
    ],
    "outputs": {"approval": "${{ steps.approval.output }}", "published": "${{ steps.publish.output }}"},
}


@pytest.fixture
async def http(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    topology: Topology,
    amqp: AbstractRobustConnection,
) -> AsyncIterator[aiohttp.ClientSession]:
    settings = GatewaySettings(
        env="test",
        namespace=namespace,
        amqp_url=rabbitmq_url,
        redis_url=redis_url,
        router_addr="127.0.0.1:1",
        jwt_secret=SecretStr(SECRET),
        http_port=0,
        grpc_port=0,
        drain_seconds=2,
    )
    app: GatewayApp = build(settings, topology=topology)
    await app.start()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as session:
        yield session
    await app.stop()


def auth(tenant: str = TENANT) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, tenant=tenant)}"}


async def submit(http: aiohttp.ClientSession, workflow: dict[str, Any]) -> str:
    async with http.post("/v1/tasks", json={"workflow": workflow}, headers=auth()) as resp:
        assert resp.status == 202, await resp.text()
        task_id: str = (await resp.json())["id"]
        return task_id


async def signal(
    http: aiohttp.ClientSession, task_id: str, name: str, payload: Any, tenant: str = TENANT
) -> int:
    async with http.post(f"/v1/tasks/{task_id}/signals/{name}", json=payload, headers=auth(tenant)) as resp:
        return resp.status


async def test_an_approval_parks_the_task_until_the_signal_and_other_tenants_cannot_send_it(
    harness: Harness, http: aiohttp.ClientSession
) -> None:
    app = await harness.start()
    task_id = await submit(http, APPROVAL)

    waiting = await harness.wait(task_id, "waiting")
    assert waiting.steps["approval"]["status"] == "waiting"
    assert waiting.steps["draft"]["status"] == "succeeded"
    assert app.worker is not None and app.worker.in_flight == 0  # parked: no delivery held while it waits

    assert await signal(http, task_id, "approval", {"ok": True}, tenant="someone-else") == 404
    assert await signal(http, task_id, "bad name!", {"ok": True}) == 400
    assert await signal(http, task_id, "approval", {"ok": True, "by": "ana"}) == 202

    record = await harness.wait(task_id, within=20)
    assert record.status == "succeeded", record.error
    assert record.result == {
        "approval": {"signal": "approval", "received": True, "payload": {"ok": True, "by": "ana"}},
        "published": "ship it",
    }
    events = [t for t, _ in await harness.events(task_id)]
    assert events.count("task.started") == 2 and "task.waiting" in events and "task.signal" in events
    assert ("step.started", "draft") in [(t, s) for t, s in await harness.events(task_id)]
    assert record.steps["draft"]["attempt"] == 1
    # An ended task takes no more signals.
    assert await signal(http, task_id, "approval", {"ok": False}) == 400


async def test_a_signal_sent_before_the_wait_is_reached_is_kept(
    harness: Harness, http: aiohttp.ClientSession
) -> None:
    task_id = await submit(http, APPROVAL)  # no executor yet: the task stays queued
    assert await signal(http, task_id, "approval", {"ok": False}) == 202
    await harness.start()
    record = await harness.wait(task_id, within=20)
    assert record.status == "succeeded", record.error
    assert record.result["approval"]["payload"] == {"ok": False} and record.result["published"] is None
    assert record.steps["publish"]["status"] == "skipped"
    assert "task.waiting" not in [t for t, _ in await harness.events(task_id)]


async def test_a_timed_wait_and_a_signal_timeout_wake_the_task_by_themselves(
    harness: Harness, http: aiohttp.ClientSession
) -> None:
    await harness.start()
    timed = {
        "steps": [
            {"id": "nap", "type": "wait", "seconds": 1.5},
            {
                "id": "after",
                "type": "json_transform",
                "params": {"expression": "until_ms", "input": "${{ steps.nap.output }}"},
            },
        ]
    }
    nap_id = await submit(http, timed)
    approval = {
        **APPROVAL,
        "steps": [APPROVAL["steps"][0], {**APPROVAL["steps"][1], "timeout": 1.5}, APPROVAL["steps"][2]],
    }
    ask_id = await submit(http, approval)

    await harness.wait(nap_id, "waiting")
    napped = await harness.wait(nap_id, within=20)
    assert napped.status == "succeeded", napped.error
    assert napped.result == napped.steps["nap"]["output"]["until_ms"] >= napped.created_ms + 1500

    asked = await harness.wait(ask_id, within=20)
    assert asked.status == "succeeded", asked.error
    assert asked.result == {
        "approval": {"signal": "approval", "received": False, "payload": None},
        "published": None,
    }


async def test_cancelling_a_waiting_task_ends_it_at_once(
    harness: Harness, http: aiohttp.ClientSession
) -> None:
    await harness.start()
    task_id = await submit(http, APPROVAL)
    await harness.wait(task_id, "waiting")
    async with http.post(f"/v1/tasks/{task_id}/cancel", headers=auth()) as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "cancelled"
    record = await harness.wait(task_id)
    assert record.status == "cancelled"
