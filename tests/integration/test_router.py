"""The router in-process on a real gRPC port, in front of the real provider simulator over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY
from pydantic import ValidationError

from openclaw.router import (
    AdminAccessError,
    InvalidRequestError,
    ModelExistsError,
    ModelNotFoundError,
    ModelRouter,
    PermissionDeniedError,
    RouterError,
    UnauthenticatedError,
)
from openclaw.v1 import router_pb2, router_pb2_grpc
from services.common import rpc
from services.common.errors import OpenClawError
from services.router.bootstrap import RouterApp, build
from services.router.servicer import is_loopback
from services.router.settings import RouterSettings
from services.simulator.app import Simulator

Stub: TypeAlias = Any  # the generated RouterServiceStub (generated code is not type-checked)


# -- fixtures --------------------------------------------------------------------------------------


def settings_for(sim: Simulator, **overrides: Any) -> RouterSettings:
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_port": 0,
        "simulator_url": sim.url,
        "openai_api_key": "",
        "anthropic_api_key": "",
        "breaker_fail_max": 3,
        "breaker_reset_seconds": 600,
        **overrides,
    }
    return RouterSettings(**values)


@pytest.fixture
async def make_router(sim: Simulator) -> AsyncIterator[Callable[..., Awaitable[RouterApp]]]:
    apps: list[RouterApp] = []

    async def make(*, env: dict[str, str] | None = None, **overrides: Any) -> RouterApp:
        app = build(settings_for(sim, **overrides), env=env or {})
        await app.start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.stop(0)


@pytest.fixture
async def router(make_router: Callable[..., Awaitable[RouterApp]]) -> RouterApp:
    return await make_router()


@pytest.fixture
async def channel(router: RouterApp) -> AsyncIterator[grpc.aio.Channel]:
    ch = grpc.aio.insecure_channel(router.address)
    yield ch
    await ch.close(None)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> Stub:
    return router_pb2_grpc.RouterServiceStub(channel)


class Upstream:
    """A tiny OpenAI-compatible server that holds every request until released and records peak concurrency."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self.served = 0
        self.gate = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            await self.gate.wait()
        finally:
            self.current -= 1
        self.served += 1
        completion = {
            "id": f"up-{self.served}",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "slow answer"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
        return web.json_response(completion)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        self.gate.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    yield server
    await server.stop()


# -- helpers ---------------------------------------------------------------------------------------


def chat_request(model: str, text: str = "hello there, router", **fields: Any) -> router_pb2.ChatRequest:
    return router_pb2.ChatRequest(
        model=model,
        messages=[
            router_pb2.ChatMessage(role="system", content="answer briefly"),
            router_pb2.ChatMessage(role="user", content=text),
        ],
        **fields,
    )


async def set_behaviour(sim: Simulator, model: str, **patch: Any) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{sim.url}/_sim/models/{model}", json=patch) as r,
    ):
        assert r.status == 200, await r.text()


async def sim_requests(sim: Simulator, model: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{sim.url}/_sim/stats") as r:
        stats = await r.json()
    return int(stats["models"].get(model, {}).get("requests", 0))


async def rpc_error(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, OpenClawError]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    exc = info.value
    return exc.code(), exc.details() or "", rpc.error_from_rpc(exc)


async def wait_for(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def collect(stub: Stub, request: router_pb2.ChatRequest) -> list[router_pb2.ChatChunk]:
    return [chunk async for chunk in stub.ChatStream(request, timeout=30)]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- chat ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "provider"), [("gpt-4-mini", "openai"), ("claude-3", "anthropic")])
async def test_chat_plain_and_streaming_through_both_formats(stub: Stub, model: str, provider: str) -> None:
    response = await stub.Chat(chat_request(model), timeout=30)
    assert response.model == model
    assert f"[simulated {model}]" in response.message.content
    assert response.message.role == "assistant" and response.finish_reason == "stop"
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    route = response.route
    assert (route.model, route.provider, route.simulated) == (model, provider, True)
    assert [(a.model, a.outcome) for a in route.attempts] == [(model, "ok")]

    chunks = await collect(stub, chat_request(model))
    assert "".join(c.delta for c in chunks) == response.message.content
    first, last = chunks[0], chunks[-1]
    assert first.HasField("route") and first.route.model == model and first.delta
    assert last.finish_reason == "stop" and last.HasField("usage") and last.HasField("route")
    assert last.usage.completion_tokens == response.usage.completion_tokens
    assert all(c.model == model and c.id == first.id for c in chunks)
    assert not any(c.HasField("usage") for c in chunks[:-1])


async def test_echo_model_returns_the_prompt(stub: Stub) -> None:
    response = await stub.Chat(chat_request("echo", "repeat me exactly"), timeout=30)
    assert response.message.content == "repeat me exactly"


async def test_request_metrics_are_exported(router: RouterApp, stub: Stub) -> None:
    before = metric("openclaw_router_requests_total", model="echo", provider="openai", outcome="ok")
    await stub.Chat(chat_request("echo"), timeout=30)
    await collect(stub, chat_request("echo"))
    assert (
        metric("openclaw_router_requests_total", model="echo", provider="openai", outcome="ok") == before + 2
    )
    assert metric("openclaw_router_request_duration_seconds_count", model="echo", provider="openai") >= 2
    assert metric("openclaw_router_time_to_first_token_seconds_count", model="echo") >= 1
    assert metric("openclaw_router_queue_wait_seconds_count", model="echo") >= 2
    assert metric("openclaw_router_tokens_total", model="echo", kind="completion") > 0
    assert metric("openclaw_router_in_flight", model="echo") == 0
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{router.metrics_port}/metrics") as r:
            text = await r.text()
        async with session.get(f"http://127.0.0.1:{router.metrics_port}/readyz") as r:
            assert r.status == 200
    assert 'openclaw_router_requests_total{model="echo",outcome="ok",provider="openai"}' in text
    assert 'openclaw_breaker_state{breaker="router.provider.echo"} 0.0' in text


# -- bad requests ----------------------------------------------------------------------------------


async def test_unknown_model_is_not_found_and_lists_the_available(stub: Stub) -> None:
    code, message, err = await rpc_error(stub.Chat(chat_request("gpt-7"), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "gpt-7" in message and "claude-3" in message and "gpt-4-mini" in message
    assert "claude-3" in err.details["available"]
    code, _, _ = await rpc_error(collect(stub, chat_request("gpt-7")))
    assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (router_pb2.ChatRequest(model="echo"), "messages"),
        (router_pb2.ChatRequest(messages=[router_pb2.ChatMessage(role="user", content="x")]), "model"),
        (
            router_pb2.ChatRequest(
                model="echo", messages=[router_pb2.ChatMessage(role="robot", content="x")]
            ),
            "messages[0].role",
        ),
        (chat_request("echo", temperature=5.0), "temperature"),
        (chat_request("echo", max_tokens=0), "max_tokens"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    stub: Stub, request_: router_pb2.ChatRequest, field: str
) -> None:
    code, message, err = await rpc_error(stub.Chat(request_, timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith(f"{field}:")
    assert err.details["field"] == field
    code, _, _ = await rpc_error(collect(stub, request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_provider_rejection_is_invalid_argument_without_fallback(sim: Simulator, stub: Stub) -> None:
    await set_behaviour(sim, "claude-3", fail_next=1, error_status=400)
    code, message, _ = await rpc_error(stub.Chat(chat_request("claude-3"), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "claude-3: client_error" in message
    assert await sim_requests(sim, "gpt-4-mini") == 0


async def test_extra_fields_pass_through_as_tool_calls(stub: Stub) -> None:
    request = chat_request("gpt-4-mini")
    request.extra.update(
        {
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "max_completion_tokens": 50,
        }
    )
    response = await stub.Chat(request, timeout=30)
    assert response.finish_reason == "tool_calls"
    assert [(c.name, c.type) for c in response.message.tool_calls] == [("lookup", "function")]
    request.model = "claude-3"
    response = await stub.Chat(request, timeout=30)
    assert [c.name for c in response.message.tool_calls] == ["lookup"]
    chunks = await collect(stub, request)
    assert chunks[-1].finish_reason == "tool_calls" and [c.name for c in chunks[-1].tool_calls] == ["lookup"]


# -- the model table -------------------------------------------------------------------------------


async def test_list_models_labels_simulated_and_never_returns_keys(stub: Stub) -> None:
    await stub.AddModel(
        router_pb2.AddModelRequest(
            model=router_pb2.Model(
                name="keyed", endpoint="https://llm.example.com/v1", api_key="sk-very-secret"
            )
        ),
        timeout=10,
    )
    response = await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)
    models = {m.name: m for m in response.models}
    assert {"gpt-4-mini", "llama-3", "claude-3", "echo", "keyed"} <= set(models)
    assert all(models[n].simulated for n in ("gpt-4-mini", "llama-3", "claude-3", "echo"))
    assert not models["keyed"].simulated and models["keyed"].has_api_key
    assert all(m.api_key == "" for m in models.values())
    assert b"sk-very-secret" not in response.SerializeToString()
    assert models["claude-3"].provider == "anthropic" and list(models["claude-3"].fallback_models) == [
        "gpt-4-mini"
    ]
    assert response.version == 2


async def test_add_update_remove_at_run_time(sim: Simulator, stub: Stub) -> None:
    added = await stub.AddModel(
        router_pb2.AddModelRequest(
            model=router_pb2.Model(
                name="mistral",
                endpoint=f"{sim.url}/v1/chat",
                provider_model="mistral-7b",
                fallback_models=["echo"],
            )
        ),
        timeout=10,
    )
    assert (added.provider, added.max_concurrency, added.simulated) == ("openai", 10, True)
    response = await stub.Chat(chat_request("mistral"), timeout=30)
    assert "[simulated mistral-7b]" in response.message.content and response.model == "mistral"

    code, _, _ = await rpc_error(
        stub.AddModel(router_pb2.AddModelRequest(model=router_pb2.Model(name="mistral")), timeout=10)
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS

    updated = await stub.UpdateModel(
        router_pb2.UpdateModelRequest(
            model=router_pb2.Model(name="mistral", max_concurrency=3, provider_model="ignored-not-in-mask"),
            update_mask=field_mask_pb2.FieldMask(paths=["max_concurrency"]),
        ),
        timeout=10,
    )
    assert (updated.max_concurrency, updated.provider_model, list(updated.fallback_models)) == (
        3,
        "mistral-7b",
        ["echo"],
    )

    code, message, _ = await rpc_error(
        stub.UpdateModel(
            router_pb2.UpdateModelRequest(
                model=router_pb2.Model(name="mistral"),
                update_mask=field_mask_pb2.FieldMask(paths=["max_concurrency"]),
            ),
            timeout=10,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_concurrency" in message
    code, message, _ = await rpc_error(
        stub.UpdateModel(
            router_pb2.UpdateModelRequest(
                model=router_pb2.Model(name="mistral", fallback_models=["nope"]),
                update_mask=field_mask_pb2.FieldMask(paths=["fallback_models"]),
            ),
            timeout=10,
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "fallback_models" in message and "nope" in message
    code, _, _ = await rpc_error(
        stub.UpdateModel(
            router_pb2.UpdateModelRequest(model=router_pb2.Model(name="ghost", max_concurrency=2)), timeout=10
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND

    version = (await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)).version
    removed = await stub.RemoveModel(router_pb2.RemoveModelRequest(name="mistral"), timeout=10)
    assert removed.removed and removed.version == version + 1
    code, _, _ = await rpc_error(stub.Chat(chat_request("mistral"), timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND
    again = await stub.RemoveModel(router_pb2.RemoveModelRequest(name="mistral"), timeout=10)
    assert not again.removed
    code, message, _ = await rpc_error(
        stub.RemoveModel(router_pb2.RemoveModelRequest(name="gpt-4-mini"), timeout=10)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "fallback of claude-3" in message


async def test_in_flight_request_keeps_its_snapshot(
    upstream: Upstream, router: RouterApp, stub: Stub
) -> None:
    await stub.AddModel(
        router_pb2.AddModelRequest(model=router_pb2.Model(name="slow", endpoint=upstream.url)), timeout=10
    )
    call = asyncio.ensure_future(stub.Chat(chat_request("slow"), timeout=30))
    await wait_for(lambda: upstream.current == 1, "the request to reach the upstream")
    await stub.UpdateModel(
        router_pb2.UpdateModelRequest(
            model=router_pb2.Model(name="slow", endpoint=f"{router.settings.simulator_url}/v1"),
            update_mask=field_mask_pb2.FieldMask(paths=["endpoint"]),
        ),
        timeout=10,
    )
    await stub.RemoveModel(router_pb2.RemoveModelRequest(name="slow"), timeout=10)
    upstream.gate.set()
    response = await call
    assert response.message.content == "slow answer" and response.model == "slow"


async def test_models_file_and_the_sdk_with_the_articles_call(
    sim: Simulator, make_router: Callable[..., Awaitable[RouterApp]], tmp_path: Path
) -> None:
    table = tmp_path / "models.yaml"
    table.write_text(
        "models:\n"
        "  - name: gpt-4-mini\n"
        "    endpoint: ${OPENCLAW_SIMULATOR_URL}/v1\n"
        "    max_concurrency: ${GPT_MAXC:-8}\n"
    )
    app = await make_router(models=str(table))
    endpoint = f"{sim.url}/v1/chat"

    def use_the_sdk() -> dict[str, Any]:
        with ModelRouter(app.address) as router:
            router.add_model(
                name="llama-3", endpoint=endpoint, max_concurrency=10, fallback_models=["gpt-4-mini"]
            )
            out: dict[str, Any] = {"models": {m.name: m for m in router.list_models()}}
            out["chat"] = router.chat("llama-3", prompt="Summarise Hamlet in one line.")
            out["messages_chat"] = router.chat("llama-3", [{"role": "user", "content": "hi"}], max_tokens=3)
            stream = router.chat_stream("llama-3", prompt="Tell me a story")
            out["deltas"] = list(stream)
            out["stream"] = stream
            out["updated"] = router.update_model("llama-3", max_concurrency=20)
            failing: dict[str, Callable[[], object]] = {
                "not_found": lambda: router.chat("nope", prompt="x"),
                "exists": lambda: router.add_model(name="llama-3", endpoint=endpoint),
                "invalid": lambda: router.chat("llama-3"),
                "stream_not_found": lambda: list(router.chat_stream("nope", prompt="x")),
            }
            for name, call in failing.items():
                try:
                    call()
                except Exception as exc:
                    out[name] = exc
            out["removed"] = router.remove_model("llama-3")
            out["removed_again"] = router.remove_model("llama-3")
            return out

    out = await asyncio.to_thread(use_the_sdk)
    models = out["models"]
    assert set(models) == {"gpt-4-mini", "llama-3"}
    assert models["gpt-4-mini"].max_concurrency == 8 and models["gpt-4-mini"].simulated
    llama = models["llama-3"]
    assert (llama.endpoint, llama.max_concurrency, llama.fallback_models, llama.simulated) == (
        endpoint,
        10,
        ("gpt-4-mini",),
        True,
    )
    chat = out["chat"]
    assert "[simulated llama-3]" in chat.content and chat.model == "llama-3"
    assert chat.usage.total_tokens > 0 and chat.route.simulated and chat.route.attempts[0].outcome == "ok"
    assert out["messages_chat"].finish_reason == "length"
    assert len(out["deltas"]) > 1 and "".join(out["deltas"]).startswith("[simulated llama-3]")
    stream = out["stream"]
    assert stream.model == "llama-3" and stream.usage.completion_tokens > 0 and stream.finish_reason == "stop"
    assert stream.route is not None and stream.route.model == "llama-3"
    assert out["updated"].max_concurrency == 20 and out["updated"].fallback_models == ("gpt-4-mini",)
    assert isinstance(out["not_found"], ModelNotFoundError) and "'nope' not found" in out["not_found"].message
    assert "gpt-4-mini" in out["not_found"].details["available"]
    assert isinstance(out["exists"], ModelExistsError)
    assert isinstance(out["invalid"], InvalidRequestError) and out["invalid"].message.startswith("messages:")
    assert isinstance(out["stream_not_found"], ModelNotFoundError)
    assert out["removed"] is True and out["removed_again"] is False


# -- admin access and secrets ----------------------------------------------------------------------

TOKEN = "adm-0123456789abcdef-test-token"
REDIS_URL = "redis://:hunter2@redis:6379/0"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def admin_calls(
    stub: Stub, metadata: tuple[tuple[str, str], ...] | None = None
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each admin method, on a model that exists (echo) or is new (extra)."""
    return {
        "AddModel": lambda: stub.AddModel(
            router_pb2.AddModelRequest(
                model=router_pb2.Model(name="extra", endpoint="http://127.0.0.1:9/v1")
            ),
            timeout=10,
            metadata=metadata,
        ),
        "UpdateModel": lambda: stub.UpdateModel(
            router_pb2.UpdateModelRequest(
                model=router_pb2.Model(name="echo", max_concurrency=3),
                update_mask=field_mask_pb2.FieldMask(paths=["max_concurrency"]),
            ),
            timeout=10,
            metadata=metadata,
        ),
        "RemoveModel": lambda: stub.RemoveModel(
            router_pb2.RemoveModelRequest(name="echo"), timeout=10, metadata=metadata
        ),
    }


async def assert_open_calls_work(stub: Stub) -> None:
    """Chat, ChatStream and ListModels need no admin token."""
    assert (await stub.Chat(chat_request("echo", "still open"), timeout=30)).message.content == "still open"
    assert (await collect(stub, chat_request("echo")))[-1].finish_reason == "stop"
    assert "echo" in {
        m.name for m in (await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)).models
    }


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:0", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("LocalHost:1", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.5:50051", False),
        ("router:50051", False),
        ("localhost.example.com:1", False),
    ],
)
def test_loopback_listeners(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


async def test_add_model_cannot_send_a_router_secret_to_its_endpoint(
    make_router: Callable[..., Awaitable[RouterApp]], upstream: Upstream
) -> None:
    """The reviewer's exploit: a model keyed by a non-key variable, pointed at the caller's own server."""
    app = await make_router(env={"OPENCLAW_REDIS_URL": REDIS_URL})
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        code, message, err = await rpc_error(
            stub.AddModel(
                router_pb2.AddModelRequest(
                    model=router_pb2.Model(
                        name="exfil", endpoint=upstream.url, api_key_env="OPENCLAW_REDIS_URL"
                    )
                ),
                timeout=10,
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert message.startswith("model 'exfil': api_key_env: ") and "_API_KEY$" in message
        assert err.details["field"] == "api_key_env" and "hunter2" not in message
        code, message, _ = await rpc_error(
            stub.UpdateModel(
                router_pb2.UpdateModelRequest(
                    model=router_pb2.Model(
                        name="echo", endpoint=upstream.url, api_key_env="OPENCLAW_REDIS_URL"
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["endpoint", "api_key_env"]),
                ),
                timeout=10,
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "api_key_env" in message
        listed = await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)
        assert "exfil" not in {m.name for m in listed.models} and listed.version == 1
    assert upstream.served == upstream.current == 0


async def test_yaml_table_cannot_name_a_router_secret_as_a_key(sim: Simulator, tmp_path: Path) -> None:
    table = tmp_path / "models.yaml"
    table.write_text("models:\n  - name: leak\n    api_key_env: OPENCLAW_REDIS_URL\n")
    with pytest.raises(OpenClawError, match=r"models\.yaml: model 'leak': api_key_env: .*must match"):
        build(settings_for(sim, models=str(table)), env={"OPENCLAW_REDIS_URL": REDIS_URL})


async def test_admin_calls_need_the_bearer_token_when_one_is_set(
    make_router: Callable[..., Awaitable[RouterApp]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.router")
    app = await make_router(admin_token=TOKEN)
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        refusals = {
            "none": (None, "authorization: Bearer <token>"),
            "wrong": (bearer("adm-wrong-token-guess"), "does not match"),
            "prefix": (bearer(TOKEN[:-1]), "does not match"),
            "basic": ((("authorization", f"Basic {TOKEN}"),), "must have the form 'Bearer <token>'"),
            "empty": ((("authorization", "Bearer "),), "must have the form 'Bearer <token>'"),
        }
        for case, (metadata, says) in refusals.items():
            for method, call in admin_calls(stub, metadata).items():
                code, message, err = await rpc_error(call())
                assert code == grpc.StatusCode.UNAUTHENTICATED, (case, method)
                assert says in message and "OPENCLAW_ROUTER_ADMIN_TOKEN" in message, message
                assert err.details == {"metadata": "authorization"}
                assert TOKEN[:12] not in message and "adm-wrong" not in message, (case, method, message)
        assert (await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)).version == 1
        await assert_open_calls_work(stub)
        calls = admin_calls(stub, bearer(TOKEN))
        assert (await calls["AddModel"]()).name == "extra"
        assert (await calls["UpdateModel"]()).max_concurrency == 3
        assert (await calls["RemoveModel"]()).removed
        lowercase = (("authorization", f"bearer {TOKEN}"),)
        assert (await admin_calls(stub, lowercase)["RemoveModel"]()).removed is False
    refused = [r for r in caplog.records if r.getMessage() == "admin call refused"]
    assert len(refused) == 3 * len(refusals)
    assert all(TOKEN[:12] not in repr(vars(r)) for r in caplog.records)


async def test_admin_calls_are_refused_on_a_non_loopback_listener_without_a_token(
    make_router: Callable[..., Awaitable[RouterApp]],
) -> None:
    app = await make_router(listen="0.0.0.0:0")
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        for metadata in (None, bearer(TOKEN)):
            for method, call in admin_calls(stub, metadata).items():
                code, message, _ = await rpc_error(call())
                assert code == grpc.StatusCode.PERMISSION_DENIED, method
                assert (
                    "set OPENCLAW_ROUTER_ADMIN_TOKEN to enable admin calls on a non-loopback listener"
                    in message
                )
        await assert_open_calls_work(stub)
    app = await make_router(listen="0.0.0.0:0", admin_token=TOKEN)
    async with grpc.aio.insecure_channel(app.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        code, _, _ = await rpc_error(admin_calls(stub)["AddModel"]())
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert (await admin_calls(stub, bearer(TOKEN))["AddModel"]()).name == "extra"


async def test_sdk_sends_the_admin_token_and_raises_typed_errors(
    make_router: Callable[..., Awaitable[RouterApp]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENCLAW_ROUTER_ADMIN_TOKEN", raising=False)
    guarded = await make_router(admin_token=TOKEN)
    closed = await make_router(listen="0.0.0.0:0")

    def use_the_sdk() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with ModelRouter(guarded.address) as anonymous:
            out["listed"] = [m.name for m in anonymous.list_models()]
            out["chat"] = anonymous.chat("echo", prompt="open").content
            refused: dict[str, Callable[[], object]] = {
                "add": lambda: anonymous.add_model(name="extra", endpoint="http://127.0.0.1:9/v1"),
                "update": lambda: anonymous.update_model("echo", max_concurrency=3),
                "remove": lambda: anonymous.remove_model("echo"),
            }
            for name, call in refused.items():
                try:
                    call()
                except RouterError as exc:
                    out[name] = exc
        with ModelRouter(guarded.address, admin_token="adm-wrong-token-guess") as wrong:
            try:
                wrong.remove_model("echo")
            except RouterError as exc:
                out["wrong"] = exc
        with ModelRouter(guarded.address, admin_token=TOKEN) as admin:
            out["added"] = admin.add_model(name="extra", endpoint="http://127.0.0.1:9/v1").name
            out["updated"] = admin.update_model("extra", max_concurrency=3).max_concurrency
        monkeypatch.setenv("OPENCLAW_ROUTER_ADMIN_TOKEN", TOKEN)
        with ModelRouter(guarded.address) as from_env:
            out["removed"] = from_env.remove_model("extra")
        with ModelRouter(closed.address) as denied:
            try:
                denied.add_model(name="extra")
            except RouterError as exc:
                out["denied"] = exc
        return out

    out = await asyncio.to_thread(use_the_sdk)
    assert "echo" in out["listed"] and out["chat"] == "open"
    for name in ("add", "update", "remove", "wrong"):
        exc = out[name]
        assert isinstance(exc, UnauthenticatedError) and isinstance(exc, AdminAccessError), name
        assert exc.code == grpc.StatusCode.UNAUTHENTICATED and "authorization" in exc.message
        assert TOKEN[:12] not in exc.message and "adm-wrong" not in exc.message
    assert (out["added"], out["updated"], out["removed"]) == ("extra", 3, True)
    denied = out["denied"]
    assert isinstance(denied, PermissionDeniedError) and isinstance(denied, AdminAccessError)
    assert (
        denied.code == grpc.StatusCode.PERMISSION_DENIED and "OPENCLAW_ROUTER_ADMIN_TOKEN" in denied.message
    )


async def test_list_models_and_logs_never_show_endpoint_credentials(
    stub: Stub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.router")
    secret_endpoint = "https://alice:pw-s3cret@llm.example.com:8443/v1?api-key=q-s3cret"
    shown = "https://llm.example.com:8443/v1"
    added = await stub.AddModel(
        router_pb2.AddModelRequest(model=router_pb2.Model(name="creds", endpoint=secret_endpoint)), timeout=10
    )
    updated = await stub.UpdateModel(
        router_pb2.UpdateModelRequest(
            model=router_pb2.Model(name="creds", max_concurrency=2),
            update_mask=field_mask_pb2.FieldMask(paths=["max_concurrency"]),
        ),
        timeout=10,
    )
    response = await stub.ListModels(router_pb2.ListModelsRequest(), timeout=10)
    listed = {m.name: m for m in response.models}["creds"]
    assert added.endpoint == updated.endpoint == listed.endpoint == shown
    for message in (added, updated, response):
        wire = message.SerializeToString()
        assert b"s3cret" not in wire and b"alice" not in wire
    changes = [r for r in caplog.records if r.getMessage() in {"model added", "model updated"}]
    assert [getattr(r, "endpoint", None) for r in changes] == [shown, shown]
    assert not [r for r in caplog.records if "s3cret" in repr(vars(r)) or "alice" in repr(vars(r))]


# -- resilience ------------------------------------------------------------------------------------


async def test_outage_falls_back_with_attempts_recorded(sim: Simulator, stub: Stub) -> None:
    await set_behaviour(sim, "claude-3", outage=True)
    before = metric("openclaw_router_fallbacks_total", from_model="claude-3", to_model="gpt-4-mini")
    response = await stub.Chat(chat_request("claude-3"), timeout=30)
    assert response.model == "gpt-4-mini" and "[simulated gpt-4-mini]" in response.message.content
    attempts = [(a.model, a.provider, a.outcome) for a in response.route.attempts]
    assert attempts == [("claude-3", "anthropic", "server_error"), ("gpt-4-mini", "openai", "ok")]
    assert "503" in response.route.attempts[0].error
    assert (response.route.model, response.route.provider) == ("gpt-4-mini", "openai")
    assert (
        metric("openclaw_router_fallbacks_total", from_model="claude-3", to_model="gpt-4-mini") == before + 1
    )


async def test_failed_request_falls_back(sim: Simulator, stub: Stub) -> None:
    await set_behaviour(sim, "claude-3", fail_next=1, error_status=500)
    response = await stub.Chat(chat_request("claude-3"), timeout=30)
    assert [a.outcome for a in response.route.attempts] == ["server_error", "ok"]
    assert response.model == "gpt-4-mini"
    response = await stub.Chat(chat_request("claude-3"), timeout=30)
    assert response.model == "claude-3"


async def test_rate_limit_with_retry_after_falls_back(sim: Simulator, stub: Stub) -> None:
    await set_behaviour(sim, "claude-3", rate_limited=True, retry_after_s=7)
    response = await stub.Chat(chat_request("claude-3"), timeout=30)
    assert response.model == "gpt-4-mini"
    assert [(a.model, a.outcome) for a in response.route.attempts] == [
        ("claude-3", "rate_limited"),
        ("gpt-4-mini", "ok"),
    ]
    assert "429" in response.route.attempts[0].error


async def test_all_attempts_failed_is_unavailable_with_a_summary(sim: Simulator, stub: Stub) -> None:
    await set_behaviour(sim, "claude-3", outage=True)
    await set_behaviour(sim, "gpt-4-mini", outage=True)
    code, message, err = await rpc_error(stub.Chat(chat_request("claude-3"), timeout=30))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "all 2 attempts failed" in message
    assert "claude-3: server_error" in message and "gpt-4-mini: server_error" in message
    assert [a["model"] for a in err.details["attempts"]] == ["claude-3", "gpt-4-mini"]
    code, _, _ = await rpc_error(collect(stub, chat_request("claude-3")))
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_breaker_opens_then_requests_skip_the_failing_model(
    sim: Simulator, router: RouterApp, stub: Stub
) -> None:
    await set_behaviour(sim, "claude-3", outage=True)
    for _ in range(3):  # breaker_fail_max
        response = await stub.Chat(chat_request("claude-3"), timeout=30)
        assert response.model == "gpt-4-mini"
    assert router.router.breaker("claude-3").state == "open"
    assert metric("openclaw_breaker_state", breaker="router.provider.claude-3") == 2
    hits = await sim_requests(sim, "claude-3")
    assert hits == 3

    for _ in range(5):
        response = await stub.Chat(chat_request("claude-3"), timeout=30)
        assert response.model == "gpt-4-mini"
        assert [(a.model, a.outcome) for a in response.route.attempts] == [
            ("claude-3", "breaker_open"),
            ("gpt-4-mini", "ok"),
        ]
    chunks = await collect(stub, chat_request("claude-3"))
    assert chunks[0].route.attempts[0].outcome == "breaker_open" and chunks[0].model == "gpt-4-mini"
    assert await sim_requests(sim, "claude-3") == hits
    assert router.router.breaker("gpt-4-mini").state == "closed"


async def test_stream_fails_over_before_the_first_token(sim: Simulator, stub: Stub) -> None:
    await set_behaviour(sim, "claude-3", stream_fail_after=2)  # message_start, content_block_start, then cut
    chunks = await collect(stub, chat_request("claude-3"))
    assert chunks[0].model == "gpt-4-mini"
    assert [(a.model, a.outcome) for a in chunks[0].route.attempts] == [
        ("claude-3", "connection_error"),
        ("gpt-4-mini", "ok"),
    ]
    assert "".join(c.delta for c in chunks).startswith("[simulated gpt-4-mini]")
    assert chunks[-1].finish_reason == "stop"


async def test_stream_error_after_the_first_token_ends_the_stream(sim: Simulator, stub: Stub) -> None:
    await set_behaviour(sim, "claude-3", stream_fail_after=6)  # a few text deltas, then cut
    received: list[router_pb2.ChatChunk] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for chunk in stub.ChatStream(chat_request("claude-3"), timeout=30):
            received.append(chunk)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "stream from model 'claude-3' broke after it began" in (info.value.details() or "")
    assert received and received[0].model == "claude-3" and received[0].delta
    assert not any(c.finish_reason for c in received)
    assert await sim_requests(sim, "gpt-4-mini") == 0


async def test_stream_outage_falls_back(sim: Simulator, stub: Stub) -> None:
    await set_behaviour(sim, "claude-3", outage=True)
    chunks = await collect(stub, chat_request("claude-3"))
    assert chunks[0].model == "gpt-4-mini"
    assert [a.outcome for a in chunks[-1].route.attempts] == ["server_error", "ok"]


# -- concurrency -----------------------------------------------------------------------------------


async def test_max_concurrency_queues_instead_of_failing(
    upstream: Upstream, router: RouterApp, stub: Stub
) -> None:
    await stub.AddModel(
        router_pb2.AddModelRequest(
            model=router_pb2.Model(name="slow", endpoint=upstream.url, max_concurrency=3)
        ),
        timeout=10,
    )
    calls = [asyncio.ensure_future(stub.Chat(chat_request("slow"), timeout=30)) for _ in range(10)]
    limiter = router.router.group("slow").scheduler
    await wait_for(lambda: upstream.current == 3 and limiter.waiting == 7, "3 calls upstream and 7 queued")
    assert metric("openclaw_router_in_flight", model="slow") == 3
    upstream.gate.set()
    responses = await asyncio.gather(*calls)
    assert all(r.message.content == "slow answer" for r in responses)
    assert upstream.peak == 3 and upstream.served == 10
    assert sum(1 for r in responses if r.route.queue_ms > 0) == 7
    assert limiter.in_flight == 0 and limiter.waiting == 0


async def test_queue_timeout_is_resource_exhausted(
    upstream: Upstream, make_router: Callable[..., Awaitable[RouterApp]]
) -> None:
    app = await make_router(queue_timeout_seconds=0.2)
    async with grpc.aio.insecure_channel(app.address) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        await stub.AddModel(
            router_pb2.AddModelRequest(
                model=router_pb2.Model(name="slow", endpoint=upstream.url, max_concurrency=1)
            ),
            timeout=10,
        )
        holder = asyncio.ensure_future(stub.Chat(chat_request("slow"), timeout=30))
        await wait_for(lambda: upstream.current == 1, "the first call to hold the only slot")
        code, message, err = await rpc_error(stub.Chat(chat_request("slow"), timeout=30))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "busy" in message and err.details["attempts"][0]["outcome"] == "busy"
        upstream.gate.set()
        assert (await holder).message.content == "slow answer"
        assert upstream.peak == 1


async def test_drain_lets_in_flight_calls_finish(
    upstream: Upstream, make_router: Callable[..., Awaitable[RouterApp]]
) -> None:
    app = await make_router()
    async with grpc.aio.insecure_channel(app.address) as ch, aiohttp.ClientSession() as http:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        await stub.AddModel(
            router_pb2.AddModelRequest(model=router_pb2.Model(name="slow", endpoint=upstream.url)), timeout=10
        )
        call = asyncio.ensure_future(stub.Chat(chat_request("slow"), timeout=30))
        await wait_for(lambda: upstream.current == 1, "the call to reach the upstream")
        stopping = asyncio.ensure_future(app.stop(20))
        await wait_for(lambda: app.server is not None and app._stopped, "the drain to start")
        async with http.get(f"http://127.0.0.1:{app.metrics_port}/readyz") as r:
            assert r.status == 503  # load balancers stop sending work while in-flight calls finish
        upstream.gate.set()
        response = await call
        await stopping
    assert response.message.content == "slow answer"


# -- platform plumbing -----------------------------------------------------------------------------


async def test_health_serving_and_reflection_lists_the_service(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "openclaw.v1.RouterService"):
        status = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for reply in replies for s in reply.list_services_response.service}
    assert {"openclaw.v1.RouterService", "grpc.health.v1.Health"} <= names


async def test_trace_context_arrives_from_the_caller(stub: Stub, spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test.router")
    with tracer.start_as_current_span("caller", kind=SpanKind.CLIENT) as caller:
        await stub.Chat(chat_request("claude-3"), timeout=30, metadata=rpc.outgoing_metadata())
        trace_id = caller.get_span_context().trace_id
    mine = [s for s in spans.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id]
    by_name = {s.name: s for s in mine}
    server = by_name["openclaw.v1.RouterService/Chat"]
    assert server.kind == SpanKind.SERVER
    assert server.parent is not None and server.parent.span_id == caller.get_span_context().span_id
    provider = by_name["chat claude-3"]
    assert provider.kind == SpanKind.CLIENT and provider.parent is not None
    assert server.context is not None and provider.parent.span_id == server.context.span_id
    attrs = dict(provider.attributes or {})
    assert attrs["gen_ai.system"] == "anthropic"
    assert attrs["gen_ai.request.model"] == "claude-3"
    assert attrs["gen_ai.response.model"] == "claude-3"
    assert int(attrs["gen_ai.usage.input_tokens"]) > 0 and int(attrs["gen_ai.usage.output_tokens"]) > 0  # type: ignore[arg-type]
    assert attrs["server.address"] == "127.0.0.1"


def test_settings_read_the_documented_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCLAW_ROUTER_LISTEN", "0.0.0.0:6000")
    monkeypatch.setenv("OPENCLAW_ROUTER_METRICS_PORT", "9999")
    monkeypatch.setenv("OPENCLAW_ROUTER_MODELS", "/etc/openclaw/models.yaml")
    monkeypatch.setenv("OPENCLAW_SIMULATOR_URL", "http://simulator:8090")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    settings = RouterSettings()  # type: ignore[call-arg]
    assert (settings.listen, settings.metrics_port, settings.models) == (
        "0.0.0.0:6000",
        9999,
        "/etc/openclaw/models.yaml",
    )
    assert settings.simulator_url == "http://simulator:8090"
    assert settings.openai_api_key.get_secret_value() == "sk-from-env"
    assert "sk-from-env" not in repr(settings)
    assert json.dumps(settings.model_dump(mode="json")).count("sk-from-env") == 0
    assert settings.admin_token is None and settings.api_key_env_pattern == r"^[A-Z][A-Z0-9_]*_API_KEY$"

    monkeypatch.setenv("OPENCLAW_ROUTER_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("OPENCLAW_ROUTER_API_KEY_ENV_PATTERN", r"^(VLLM|OPENAI)_TOKEN$")
    settings = RouterSettings()  # type: ignore[call-arg]
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == TOKEN
    assert settings.api_key_env_pattern == r"^(VLLM|OPENAI)_TOKEN$"
    assert TOKEN not in repr(settings) and TOKEN not in json.dumps(settings.model_dump(mode="json"))
    monkeypatch.setenv("OPENCLAW_ROUTER_ADMIN_TOKEN", "")
    assert RouterSettings().admin_token is None  # type: ignore[call-arg]
    for name, value in (
        ("OPENCLAW_ROUTER_ADMIN_TOKEN", "has a space"),
        ("OPENCLAW_ROUTER_API_KEY_ENV_PATTERN", "^(unclosed"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError, match=name):
            RouterSettings()  # type: ignore[call-arg]
        monkeypatch.delenv(name)


async def test_client_leaving_a_stream_early_leaves_no_context_errors(
    sim: Simulator, stub: Stub, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    sim.behaviours.update("gpt-4-mini", {"token_latency_ms": 50})
    request = router_pb2.ChatRequest(
        model="gpt-4-mini",
        messages=[router_pb2.ChatMessage(role="user", content="one two three four five six")],
    )
    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        call = stub.ChatStream(request)
        first = await call.read()
        assert isinstance(first, router_pb2.ChatChunk)
        call.cancel()  # the client walks away mid-stream
        deadline = time.monotonic() + 5
        while not any(
            s.name.startswith("openclaw.v1.RouterService/ChatStream") for s in spans.get_finished_spans()
        ):
            assert time.monotonic() < deadline, "the server span never ended"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    assert not [r for r in caplog.records if "detach" in r.getMessage().lower()], caplog.text
