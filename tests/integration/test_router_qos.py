"""Model groups through the QoS stages, on a real gRPC port in front of the real simulator over HTTP.

The simulator answers ``[simulated <provider_model>]``, so deployments given different provider models show in
every answer which one served, and its behaviour table injects faults per deployment.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from redis.asyncio import Redis

from openclaw.router import InvalidRequestError, ModelRouter
from openclaw.v1 import router_pb2, router_pb2_grpc
from services.common.errors import PermissionDeniedError
from services.router.bootstrap import RouterApp, build
from services.router.chat import ChatRequest, Message
from services.router.qos import QuotaExceededError, RetryBudget
from services.simulator.app import Simulator
from tests.integration.test_router import (
    Upstream,
    chat_request,
    metric,
    rpc_error,
    set_behaviour,
    settings_for,
    wait_for,
)

Stub = Any
MakeRouter = Callable[..., Awaitable[RouterApp]]


@pytest.fixture
async def make_router(sim: Simulator) -> AsyncIterator[MakeRouter]:
    apps: list[RouterApp] = []

    async def make(*, redis: Redis | None = None, **overrides: Any) -> RouterApp:
        overrides.setdefault("cache_ttl_seconds", 0)  # every call reaches the router's stages
        overrides.setdefault("metering", False)
        app = build(settings_for(sim, **overrides), env={}, redis=redis)
        await app.start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.stop(0)


@pytest.fixture
async def stub(make_router: MakeRouter) -> AsyncIterator[Stub]:
    app = await make_router()
    async with grpc.aio.insecure_channel(app.address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    yield server
    await server.stop()


def group(sim: Simulator, name: str, *deployments: router_pb2.Deployment, **fields: Any) -> router_pb2.Model:
    return router_pb2.Model(name=name, endpoint=f"{sim.url}/v1", deployments=list(deployments), **fields)


def served_by(response: router_pb2.ChatResponse) -> str:
    return response.message.content.split("]")[0].removeprefix("[simulated ")


async def add(stub: Stub, model: router_pb2.Model) -> router_pb2.Model:
    shown: router_pb2.Model = await stub.AddModel(router_pb2.AddModelRequest(model=model), timeout=10)
    return shown


# -- model groups ----------------------------------------------------------------------------------


async def test_a_group_spreads_work_over_its_deployments_and_says_which_served(
    sim: Simulator, stub: Stub
) -> None:
    shown = await add(
        stub,
        group(
            sim,
            "pool",
            router_pb2.Deployment(name="east", provider_model="east-m", api_key="sk-east", rpm=600),
            router_pb2.Deployment(name="west", provider_model="west-m", context_window=32000),
            max_concurrency=4,
        ),
    )
    assert [(d.name, d.has_api_key, d.api_key, d.max_concurrency) for d in shown.deployments] == [
        ("east", True, "", 4),
        ("west", False, "", 4),
    ]
    listed = {m.name: m for m in (await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)).models}
    assert [d.name for d in listed["pool"].deployments] == ["east", "west"]
    assert listed["pool"].deployments[0].rpm == 600 and not listed["pool"].deployments[0].api_key

    responses = await asyncio.gather(*(stub.Chat(chat_request("pool"), timeout=30) for _ in range(40)))
    served = Counter(served_by(r) for r in responses)
    assert set(served) == {"east-m", "west-m"}
    for response in responses:
        assert response.model == "pool"
        assert response.route.deployment == {"east-m": "east", "west-m": "west"}[served_by(response)]
        assert response.route.reason == "p2c" and response.route.priority == "interactive"
        assert response.route.attempts[-1].deployment == response.route.deployment
    assert metric("openclaw_router_deployment_limit", model="pool", deployment="east") == 4


async def test_a_canary_weight_gets_a_small_share(sim: Simulator, stub: Stub) -> None:
    await add(
        stub,
        group(
            sim,
            "canaried",
            router_pb2.Deployment(name="stable", provider_model="stable-m"),
            router_pb2.Deployment(name="canary", provider_model="canary-m", weight=0.1),
        ),
    )
    served: Counter[str] = Counter()
    for _ in range(300):
        served[served_by(await stub.Chat(chat_request("canaried"), timeout=30))] += 1
    # About 10 % (1-19 % as the two measured latencies compare): some traffic, far less than the stable one.
    assert 1 <= served["canary-m"] <= 75 and served["stable-m"] >= 225


async def test_a_failing_deployment_is_retried_on_another_of_the_group(sim: Simulator, stub: Stub) -> None:
    await add(
        stub,
        group(
            sim,
            "pair",
            router_pb2.Deployment(name="bad", provider_model="bad-m"),
            router_pb2.Deployment(name="good", provider_model="good-m"),
        ),
    )
    await set_behaviour(sim, "bad-m", outage=True)
    before = metric("openclaw_router_retries_total", model="pair")
    outcomes = []
    for _ in range(12):
        response = await stub.Chat(chat_request("pair"), timeout=30)
        assert served_by(response) == "good-m" and response.model == "pair"
        outcomes.append([(a.deployment, a.outcome) for a in response.route.attempts])
    retried = [o for o in outcomes if len(o) == 2]
    assert retried and all(o == [("bad", "server_error"), ("good", "ok")] for o in retried)
    assert metric("openclaw_router_retries_total", model="pair") - before == len(retried)
    assert metric("openclaw_router_errors_total", model="pair", **{"class": "server_error"}) >= len(retried)


async def test_retry_after_opens_the_deployment_breaker_for_that_long(
    sim: Simulator, make_router: MakeRouter
) -> None:
    app = await make_router()
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        await add(
            stub,
            group(
                sim,
                "limited",
                router_pb2.Deployment(name="busy", provider_model="busy-m"),
                router_pb2.Deployment(name="free", provider_model="free-m"),
            ),
        )
        await set_behaviour(sim, "busy-m", rate_limited=True, retry_after_s=900)  # breaker_reset_s is 600
        for _ in range(20):
            response = await stub.Chat(chat_request("limited"), timeout=30)
            assert served_by(response) == "free-m"
        breaker = app.router.breaker("limited", "busy")
        assert breaker.state == "open" and breaker.retry_after() > 800
        assert metric("openclaw_router_deployment_breaker_state", model="limited", deployment="busy") == 2
        assert app.router.breaker("limited", "free").state == "closed"
        assert app.router.group("limited").targets["busy"].load.limit.decreases == 1


async def test_streams_say_where_the_commit_point_is(sim: Simulator, stub: Stub) -> None:
    chunks = [c async for c in stub.ChatStream(chat_request("gpt-4-mini"), timeout=30)]
    assert chunks[0].route.committed and chunks[0].route.deployment == "default"
    assert chunks[-1].finish_reason == "stop" and chunks[-1].route.attempts[-1].outcome == "ok"


async def test_deployments_are_kept_under_their_provider_rpm(sim: Simulator, stub: Stub) -> None:
    await add(
        stub,
        group(
            sim,
            "metered",
            router_pb2.Deployment(name="capped", provider_model="capped-m", rpm=2, weight=100),
            router_pb2.Deployment(name="open", provider_model="open-m"),
        ),
    )
    served = Counter([served_by(await stub.Chat(chat_request("metered"), timeout=30)) for _ in range(12)])
    assert (
        2 <= served["capped-m"] <= 3 and served["open-m"] >= 9
    )  # preferred by weight until its rpm is spent
    await add(stub, router_pb2.Model(name="solo", endpoint=f"{sim.url}/v1", rpm=1))
    await stub.Chat(chat_request("solo"), timeout=30)
    code, message, err = await rpc_error(stub.Chat(chat_request("solo"), timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "rpm/tpm limit" in message
    assert [a["outcome"] for a in err.details["attempts"]] == ["busy"]


# -- bad input -------------------------------------------------------------------------------------


async def test_bad_priorities_and_oversized_prompts_are_refused_naming_the_field(
    sim: Simulator, stub: Stub
) -> None:
    code, message, err = await rpc_error(stub.Chat(chat_request("gpt-4-mini", priority="urgent"), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("priority:")
    assert err.details["field"] == "priority"
    metadata = (("openclaw-priority", "vip"),)
    code, message, _ = await rpc_error(stub.Chat(chat_request("gpt-4-mini"), timeout=10, metadata=metadata))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "priority" in message
    ok = await stub.Chat(chat_request("gpt-4-mini"), timeout=10, metadata=(("openclaw-priority", "batch"),))
    assert ok.route.priority == "batch"

    await add(stub, group(sim, "tiny", router_pb2.Deployment(name="a", context_window=50)))
    code, message, err = await rpc_error(stub.Chat(chat_request("tiny", "word " * 400), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "context window" in message
    assert err.details["field"] == "messages"
    assert (await stub.Chat(chat_request("tiny", "short"), timeout=10)).route.deployment == "a"


async def test_a_bad_group_update_changes_nothing(sim: Simulator, stub: Stub) -> None:
    await add(stub, group(sim, "steady", router_pb2.Deployment(name="a"), router_pb2.Deployment(name="b")))
    before = await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)
    bad_updates = [
        (router_pb2.Deployment(name="a", weight=-1), "deployments[0].weight"),
        (router_pb2.Deployment(name="a", max_concurrency=-3), "deployments[0].max_concurrency"),
        (router_pb2.Deployment(name="a", rpm=-1), "deployments[0].rpm"),
        (router_pb2.Deployment(name="a", context_window=10**10), "deployments[0].context_window"),
        (router_pb2.Deployment(name="a", endpoint="gopher://x"), "deployments[0].endpoint"),
        (router_pb2.Deployment(name="no spaces allowed"), "deployments[0].name"),
    ]
    for deployment, field in bad_updates:
        request = router_pb2.UpdateModelRequest(
            model=router_pb2.Model(name="steady", deployments=[deployment]),
            update_mask=field_mask_pb2.FieldMask(paths=["deployments"]),
        )
        code, message, err = await rpc_error(stub.UpdateModel(request, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert err.details["field"] == field and f"model 'steady': {field}:" in message
    code, _, err = await rpc_error(
        stub.UpdateModel(
            router_pb2.UpdateModelRequest(
                model=router_pb2.Model(name="steady", tpm=-5),
                update_mask=field_mask_pb2.FieldMask(paths=["tpm"]),
            ),
            timeout=10,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and err.details["field"] == "tpm"
    assert await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10) == before


# -- queueing and admission ------------------------------------------------------------------------


async def test_a_request_that_cannot_meet_its_deadline_is_shed(
    upstream: Upstream, make_router: MakeRouter
) -> None:
    app = await make_router()
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        await add(stub, router_pb2.Model(name="narrow", endpoint=upstream.url, max_concurrency=1))
        holder = asyncio.ensure_future(stub.Chat(chat_request("narrow"), timeout=30))
        await wait_for(lambda: upstream.current == 1, "the only slot to be taken")
        before = metric("openclaw_router_shed_total", model="narrow", reason="deadline")
        request = ChatRequest("narrow", (Message("user", "hi"),), priority="batch")
        with pytest.raises(Exception) as info:
            await app.router.chat(request, deadline=time.monotonic() + 0.2)
        assert getattr(info.value, "code", "") == "deadline_shed"
        assert [a["outcome"] for a in info.value.details["attempts"]] == ["shed"]  # type: ignore[attr-defined]
        assert metric("openclaw_router_shed_total", model="narrow", reason="deadline") == before + 1
        upstream.gate.set()
        assert (await holder).message.content == "slow answer"
        assert upstream.served == 1  # the shed request never reached the provider


async def test_tenant_policies_and_token_budgets_are_enforced(
    sim: Simulator, make_router: MakeRouter, redis: Redis, namespace: str, tmp_path: Path
) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(
        "tenants:\n"
        "  small:\n    models: [gpt-4-mini]\n    quotas: {tokens_per_minute: 400}\n"
        "  other:\n    models: ['*']\n",
        encoding="utf-8",
    )
    app = await make_router(redis=redis, namespace=namespace, shared_state=True, tenants_file=tenants)
    request = ChatRequest("gpt-4-mini", (Message("user", "x" * 400),), tenant="small")  # about 100 tokens
    with pytest.raises(PermissionDeniedError):
        await app.router.chat(ChatRequest("llama-3", (Message("user", "hi"),), tenant="small"))
    admitted = 0
    with pytest.raises(QuotaExceededError) as info:
        for _ in range(10):
            await app.router.chat(request)
            admitted += 1
    assert 1 <= admitted <= 4 and info.value.retry_after_s > 0
    assert info.value.details["budget"] == "tokens"
    result, _ = await app.router.chat(
        ChatRequest("gpt-4-mini", (Message("user", "x" * 400),), tenant="other")
    )
    assert result.content.startswith("[simulated")


async def test_a_removed_deployment_drains_while_new_work_goes_to_its_successor(
    sim: Simulator, upstream: Upstream, make_router: MakeRouter
) -> None:
    app = await make_router()
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        await add(
            stub,
            router_pb2.Model(
                name="moving", deployments=[router_pb2.Deployment(name="old", endpoint=upstream.url)]
            ),
        )
        held = [asyncio.ensure_future(stub.Chat(chat_request("moving"), timeout=30)) for _ in range(3)]
        await wait_for(lambda: upstream.current == 3, "three calls on the old deployment")
        assert metric("openclaw_router_deployment_in_flight", model="moving", deployment="old") == 3
        await stub.UpdateModel(
            router_pb2.UpdateModelRequest(
                model=router_pb2.Model(
                    name="moving",
                    deployments=[
                        router_pb2.Deployment(name="new", endpoint=f"{sim.url}/v1", provider_model="new-m")
                    ],
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["deployments"]),
            ),
            timeout=10,
        )
        fresh = await stub.Chat(chat_request("moving"), timeout=30)
        assert served_by(fresh) == "new-m" and fresh.route.deployment == "new"
        assert upstream.served == 0 and upstream.current == 3  # the old calls are still running
        upstream.gate.set()
        finished = await asyncio.gather(*held)
        assert all(r.message.content == "slow answer" and r.route.deployment == "old" for r in finished)
        assert app.router.group("moving").scheduler.in_flight == 0
        assert list(app.router.group("moving").targets) == ["new"]


async def test_the_sdk_manages_groups_and_sends_priorities(sim: Simulator, make_router: MakeRouter) -> None:
    app = await make_router()

    def use_the_sdk() -> dict[str, Any]:
        with ModelRouter(app.address) as router:
            out: dict[str, Any] = {}
            out["added"] = router.add_model(
                name="sdk-group",
                endpoint=f"{sim.url}/v1",
                deployments=[
                    {"name": "a", "provider_model": "a-m", "api_key": "sk-a"},
                    {"name": "b", "weight": 0.5},
                ],
            )
            out["chat"] = router.chat("sdk-group", prompt="hi", priority="agent")
            out["updated"] = router.update_model(
                "sdk-group", deployments=[{"name": "b"}], context_window=9000
            )
            try:
                router.update_model("sdk-group", deployments=[{"name": "b", "weight": -1}])
            except InvalidRequestError as exc:
                out["refused"] = exc
            try:
                router.add_model(name="bad", deployments=[{"name": "x", "colour": "red"}])
            except InvalidRequestError as exc:
                out["not_a_field"] = exc
            return out

    out = await asyncio.to_thread(use_the_sdk)
    added = out["added"].deployments
    assert [(d["name"], d["has_api_key"], d["api_key"], d["weight"]) for d in added] == [
        ("a", True, "", 1.0),
        ("b", False, "", 0.5),
    ]
    route = out["chat"].route
    assert route.priority == "agent" and route.deployment in {"a", "b"} and route.reason == "p2c"
    assert [(d["name"], d["context_window"]) for d in out["updated"].deployments] == [("b", 9000)]
    assert "deployments[0].weight" in out["refused"].message
    assert "deployments" in out["not_a_field"].message and "colour" in out["not_a_field"].message


async def test_a_spent_retry_budget_stops_fallbacks(sim: Simulator, make_router: MakeRouter) -> None:
    app = await make_router()
    app.router.budget = RetryBudget(0.0, min_per_s=0.0)  # no extra attempts at all
    await set_behaviour(sim, "claude-3", outage=True)
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        before = metric("openclaw_router_shed_total", model="gpt-4-mini", reason="retry_budget")
        code, message, err = await rpc_error(stub.Chat(chat_request("claude-3"), timeout=30))
    assert code == grpc.StatusCode.UNAVAILABLE and "retry budget" in message
    assert [(a["model"], a["outcome"]) for a in err.details["attempts"]] == [
        ("claude-3", "server_error"),
        ("gpt-4-mini", "retry_budget"),
    ]
    assert metric("openclaw_router_shed_total", model="gpt-4-mini", reason="retry_budget") == before + 1


async def test_two_replicas_hold_a_token_budget_within_one_percent(
    make_router: MakeRouter, redis: Redis, namespace: str, tmp_path: Path
) -> None:
    budget = 20_000
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(f"tenants:\n  acme:\n    quotas: {{tokens_per_minute: {budget}}}\n", encoding="utf-8")
    shared: dict[str, Any] = {"namespace": namespace, "shared_state": True, "tenants_file": tenants}
    replicas = [await make_router(redis=redis, **shared), await make_router(redis=redis, **shared)]
    if time.time() % 60 > 45:  # budgets are per clock minute: start inside one, so one window is measured
        await asyncio.sleep(61 - time.time() % 60)
    request = ChatRequest("gpt-4-mini", (Message("user", "x" * 400),), tenant="acme")  # about 100 tokens
    consumed = [0, 0]

    async def client(index: int) -> None:
        router = replicas[index % 2].router
        while True:
            try:
                result, _ = await router.chat(request)
            except QuotaExceededError:
                return
            consumed[index % 2] += 100 + result.usage.completion_tokens

    await asyncio.gather(*(client(i) for i in range(16)))
    assert all(consumed), consumed  # both replicas served
    # Never over (but for completions still running when it ran out), under by at most a lease per replica.
    assert 0.99 * budget <= sum(consumed) <= 1.01 * budget, consumed
