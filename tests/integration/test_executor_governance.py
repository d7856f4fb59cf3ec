"""Governance inside the executor, against the real RabbitMQ and Redis: tenant policies checked again at run
time (operations, agent tools, network targets and redirects) and an audit record of every operation run,
whose chain `openclaw audit verify` accepts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from pydantic import Field
from redis.asyncio import Redis

from openclaw.v1 import tasks_pb2
from services.common.audit import AuditLog
from services.common.envelope import now_ms
from services.common.publisher import TaskPublisher
from services.common.settings import DEV_AUDIT_KEY
from services.common.taskstore import TaskRecord, TaskStore
from services.common.tenants import TenantDirectory, TenantPolicy
from services.common.topology import Topology
from services.executor.bootstrap import ExecutorApp, build
from services.executor.context import OpContext, OpServices, RunState
from services.executor.dsl import parse_workflow
from services.executor.engine import Engine, StepFailed
from services.executor.governance import Governance
from services.executor.ops import catalogue
from services.executor.ops.base import Operation, Params
from services.executor.settings import ExecutorSettings
from tests.unit.test_agent import AgentJournal, ScriptedModel, answer, calls

pytestmark = pytest.mark.integration
T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    """Poll check until it returns something truthy; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.03)


class Rig:
    """An executor with a tenants file, fed envelopes the way the gateway sends them."""

    def __init__(
        self, redis: Redis, amqp: AbstractRobustConnection, topology: Topology, namespace: str
    ) -> None:
        self.redis, self.namespace = redis, namespace
        self.store = TaskStore(redis, namespace)
        self.publisher = TaskPublisher(amqp, topology)
        self.audit = AuditLog(redis, namespace, DEV_AUDIT_KEY.encode())
        self.app: ExecutorApp | None = None

    async def submit(
        self, tenant: str, workflow: dict[str, Any], *, inputs: dict[str, Any] | None = None, by: str = ""
    ) -> str:
        task_id = uuid.uuid4().hex
        workflow_json = json.dumps(workflow)
        inputs_json = json.dumps(inputs or {})
        record = TaskRecord(id=task_id, tenant=tenant, status="queued", name=workflow["name"])
        await self.store.create(record, workflow_json=workflow_json, inputs_json=inputs_json)
        env = tasks_pb2.TaskEnvelope(
            task_id=task_id,
            tenant=tenant,
            type="workflow.run",
            attempt=1,
            max_attempts=1,
            created_unix_ms=now_ms(),
            workflow_json=workflow_json,
            inputs_json=inputs_json,
            submitted_by=by,
        )
        await self.publisher.publish(env)
        return task_id

    async def outcome(self, tenant: str, task_id: str) -> TaskRecord:
        async def ended() -> TaskRecord | None:
            record = await self.store.get(tenant, task_id, with_steps=True)
            return record if record is not None and record.status in ("succeeded", "failed") else None

        return await eventually(ended, 20.0, f"task {task_id} ending")

    async def records(self, tenant: str, count: int) -> list[dict[str, Any]]:
        """The tenant's audit records, once at least ``count`` are written."""

        async def written() -> list[dict[str, Any]] | None:
            out = [r async for r in self.audit.records(tenant)]
            return out if len(out) >= count else None

        return await eventually(written, 10.0, f"{count} audit records of {tenant}")


@pytest.fixture
async def rig(
    amqp: AbstractRobustConnection,
    redis: Redis,
    topology: Topology,
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    rigs: list[Rig] = []

    async def start(tenants: dict[str, Any], **settings: Any) -> Rig:
        path = tmp_path / "tenants.yaml"
        path.write_text(yaml.safe_dump({"tenants": tenants}))
        values: dict[str, Any] = {
            "namespace": namespace,
            "amqp_url": rabbitmq_url,
            "redis_url": redis_url,
            "metrics_port": 0,
            "storage_root": tmp_path / "storage",
            "drain_seconds": 2.0,
            "router_addr": "127.0.0.1:1",
            "tenants_file": path,
            **settings,
        }
        r = Rig(redis, amqp, topology, namespace)
        r.app = build(ExecutorSettings(**values), topology=topology)
        await r.app.start()
        rigs.append(r)
        return r

    yield start
    for r in rigs:
        if r.app is not None:
            await r.app.stop()
        await r.publisher.close()


def step(id_: str, type_: str, **params: Any) -> dict[str, Any]:
    return {"id": id_, "type": type_, "params": params}


# -- operations the policy does not allow ------------------------------------------------------------------


async def test_a_workflow_with_operations_outside_the_policy_is_refused_and_audited(
    rig: Callable[..., Awaitable[Rig]],
) -> None:
    r = await rig({"acme": {"operations": ["text_*", "json_*"]}})
    workflow = {
        "name": "mixed",
        "steps": [
            step("up", "text_case", text="hi", to="upper"),
            step("calc", "math_evaluate", expression="1+1"),
        ],
    }
    task_id = await r.submit("acme", workflow, by="alice")
    record = await r.outcome("acme", task_id)
    assert record.status == "failed"
    assert record.error is not None and record.error["code"] == "permission_denied"
    assert "math_evaluate" in record.error["message"] and "text_case" not in record.error["message"]
    assert record.steps == {}  # refused before any step ran
    [audit] = await r.records("acme", 1)
    assert (audit["action"], audit["actor"], audit["outcome"]) == ("task.run", "alice", "denied")
    assert audit["resource"] == f"task:{task_id}"
    assert audit["details"]["error_code"] == "permission_denied"


async def test_an_undefined_tenant_is_refused_in_a_closed_deployment(
    rig: Callable[..., Awaitable[Rig]],
) -> None:
    r = await rig({"acme": {}}, tenants_mode="closed")
    task_id = await r.submit(
        "stranger", {"name": "w", "steps": [step("up", "text_case", text="x", to="upper")]}
    )
    record = await r.outcome("stranger", task_id)
    assert record.error is not None and record.error["code"] == "permission_denied"
    assert "not registered" in record.error["message"]
    ok = await r.submit("acme", {"name": "w", "steps": [step("up", "text_case", text="x", to="upper")]})
    assert (await r.outcome("acme", ok)).result == "X"


async def test_a_policy_changed_after_submit_is_applied_to_each_operation(
    tmp_path: Path, redis: Redis
) -> None:
    """The engine checks each operation as it runs (a called template's, a policy changed mid-run)."""
    directory = TenantDirectory(
        redis, "unused", configured={"acme": TenantPolicy(denied_operations=("math_*",))}
    )
    engine = Engine(catalogue(), OpServices(storage_root=tmp_path), governance=Governance(directory))
    wf = parse_workflow(
        {"name": "w", "steps": [step("calc", "math_evaluate", expression="2*3")]}, known_ops=catalogue()
    )
    state = RunState(workflow=wf, task_id="t1", tenant="acme", attempt=1, inputs={})
    with pytest.raises(StepFailed) as failed:
        await engine.run(wf, state, AgentJournal())
    assert failed.value.error.code == "permission_denied"
    assert "math_evaluate" in failed.value.error.message
    other = RunState(workflow=wf, task_id="t2", tenant="beta", attempt=1, inputs={})
    assert await engine.run(wf, other, AgentJournal()) == 6


async def test_agent_tool_calls_outside_the_policy_are_refused_and_audited(
    tmp_path: Path, redis: Redis, namespace: str
) -> None:
    policy = TenantPolicy(denied_operations=("math_evaluate",))
    audit = AuditLog(redis, namespace, DEV_AUDIT_KEY.encode())
    governance = Governance(TenantDirectory(None, namespace, configured={"acme": policy}), audit)
    model = ScriptedModel(
        calls(("math_evaluate", {"expression": "1+1"}), ("text_case", {"text": "ok", "to": "upper"})),
        answer("done"),
    )
    ops = catalogue()
    engine = Engine(ops, OpServices(storage_root=tmp_path, router=model), governance=governance)
    doc = {
        "name": "agentic",
        "steps": [
            {
                "id": "a",
                "type": "agent",
                "agent": {"model": "m", "instructions": "work", "tools": ["math_evaluate", "text_case"]},
            }
        ],
    }
    wf = parse_workflow(doc, known_ops=ops)
    state = RunState(workflow=wf, task_id="t9", tenant="acme", attempt=1, inputs={})
    output = await engine.run(wf, state, AgentJournal(), actor="bob")
    denied, allowed = model.tool_results(1)
    assert json.loads(denied[1])["error"]["code"] == "permission_denied"
    assert "math_evaluate" in json.loads(denied[1])["error"]["message"]
    assert allowed[1] == "OK"
    assert [c["ok"] for c in output["tool_calls"]] == [False, True]
    await audit.flush()
    records = [r async for r in audit.records("acme")]
    assert [(r["action"], r["outcome"], r["actor"]) for r in records] == [
        ("op.math_evaluate", "denied", "bob"),
        ("op.text_case", "ok", "bob"),
    ]
    assert records[0]["resource"] == "task:t9/step:a/turn1/call1"
    assert records[0]["details"]["via"] == "agent"
    assert (await audit.verify("acme")).ok


# -- audit records -----------------------------------------------------------------------------------------


async def test_every_operation_run_is_audited_without_its_params_and_the_chain_verifies(
    rig: Callable[..., Awaitable[Rig]], namespace: str, redis_url: str
) -> None:
    r = await rig({"acme": {}})
    workflow = {
        "name": "audited",
        "steps": [
            step("up", "text_case", text="${{ inputs.secret }}", to="upper"),
            {**step("parse", "json_parse", text="not json"), "continue_on_error": True},
        ],
    }
    task_id = await r.submit("acme", workflow, inputs={"secret": "hunter2-input"}, by="alice")
    assert (await r.outcome("acme", task_id)).status == "succeeded"
    anonymous = await r.submit(
        "acme", {"name": "w", "steps": [step("up", "text_case", text="x", to="upper")]}
    )
    await r.outcome("acme", anonymous)
    records = await r.records("acme", 3)
    assert [(x["action"], x["outcome"], x["actor"]) for x in records] == [
        ("op.text_case", "ok", "alice"),
        ("op.json_parse", "error", "alice"),
        ("op.text_case", "ok", f"task:{anonymous}"),
    ]
    assert records[0]["resource"] == f"task:{task_id}/step:up"
    assert records[0]["service"] == "executor"
    assert records[0]["details"]["attempt"] == 1 and records[0]["details"]["duration_ms"] >= 0
    assert records[1]["details"]["error_code"] == "invalid_input"
    assert "hunter2" not in json.dumps(records).lower()  # neither the input nor the output it became

    env = {**os.environ, "OPENCLAW_NAMESPACE": namespace, "OPENCLAW_REDIS_URL": redis_url}
    env.pop("OPENCLAW_AUDIT_KEY", None)
    verify = [sys.executable, "-m", "openclaw.cli", "audit", "verify", "--tenant", "acme"]
    done = await asyncio.to_thread(
        subprocess.run, verify, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "acme: 3 records, ok" in done.stdout

    first_id = (await r.redis.xrange(f"{namespace}:audit:acme", count=1))[0][0]
    await r.redis.xdel(f"{namespace}:audit:acme", first_id)
    done = await asyncio.to_thread(
        subprocess.run, verify, env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1 and "TAMPERED" in done.stdout


class PromptParams(Params):
    prompt: str = Field(description="What to ask.")


async def test_prompts_are_audited_only_for_tenants_whose_policy_allows_it(
    tmp_path: Path, redis: Redis, namespace: str
) -> None:
    async def ask(p: PromptParams, ctx: OpContext) -> str:
        return "answer"

    ops = catalogue().with_operations(Operation("fake.ask", "test", "Asks.", PromptParams, ask))
    audit = AuditLog(redis, namespace, DEV_AUDIT_KEY.encode())
    tenants = {"open": TenantPolicy(log_prompts=True), "quiet": TenantPolicy()}
    engine = Engine(
        ops,
        OpServices(storage_root=tmp_path),
        governance=Governance(TenantDirectory(None, namespace, configured=tenants), audit),
    )
    wf = parse_workflow(
        {"name": "w", "steps": [step("q", "fake.ask", prompt="what is ${{ inputs.topic }}?")]}, known_ops=ops
    )
    for tenant in tenants:
        state = RunState(workflow=wf, task_id="t1", tenant=tenant, attempt=1, inputs={"topic": "tea"})
        await engine.run(wf, state, AgentJournal())
    await audit.flush()
    [logged] = [r async for r in audit.records("open")]
    [quiet] = [r async for r in audit.records("quiet")]
    assert logged["details"]["prompt"] == "what is tea?"
    assert "prompt" not in quiet["details"] and "tea" not in json.dumps(quiet)


# -- network policy ----------------------------------------------------------------------------------------


@pytest.fixture
async def site() -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback site: /ok answers, /to-localhost and /to-private redirect; it records each request."""
    hits: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        hits.append(f"{request.host}{request.path}")
        return web.json_response({"ok": True})

    async def to_localhost(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{request.url.port}/ok")

    async def to_private(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://10.255.255.1:{request.url.port}/ok")

    app = web.Application()
    app.add_routes(
        [web.get("/ok", ok), web.get("/to-localhost", to_localhost), web.get("/to-private", to_private)]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    yield port, hits
    await runner.cleanup()


async def test_http_operations_honour_each_tenants_network_policy_and_redirects(
    rig: Callable[..., Awaitable[Rig]], site: tuple[int, list[str]]
) -> None:
    port, hits = site
    r = await rig(
        {
            "acme": {"network": {"allow_private": ["127.0.0.0/8"], "allowed_hosts": ["127.0.0.1"]}},
            "beta": {"network": {"allow_private": ["127.0.0.0/8"]}},
            "gamma": {},
        },
        allow_private_network=False,
    )

    async def get(tenant: str, url: str) -> TaskRecord:
        wf = {"name": "fetch", "steps": [step("get", "http_request", url=url)]}
        return await r.outcome(tenant, await r.submit(tenant, wf))

    def denied(record: TaskRecord, *words: str) -> bool:
        error = record.error or {}
        return error.get("code") == "permission_denied" and all(w in error.get("message", "") for w in words)

    base = f"http://127.0.0.1:{port}"
    assert (await get("acme", f"{base}/ok")).result["body"] == {"ok": True}
    assert denied(await get("acme", f"{base}/to-localhost"), "localhost", "allowed hosts")
    assert denied(await get("acme", f"http://localhost:{port}/ok"), "allowed hosts")
    assert (await get("beta", f"http://localhost:{port}/ok")).result["body"] == {"ok": True}
    assert denied(await get("beta", f"{base}/to-private"), "10.255.255.1", "network policy")
    # gamma has no private ranges: refused by the SSRF guard, even right after beta's session resolved localhost.
    assert denied(await get("gamma", f"{base}/ok"))
    assert denied(await get("gamma", f"http://localhost:{port}/ok"))
    assert hits == [f"127.0.0.1:{port}/ok", f"localhost:{port}/ok"]  # the refused ones never connected
