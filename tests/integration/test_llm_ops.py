"""LLM operations through the real router (in-process, real gRPC) in front of the provider simulator (real HTTP).

The simulator's ``echo`` model answers with the last user message unchanged, and every LLM operation sends
its input text as that message: so echo replies are real, chosen inputs, and the label check, the JSON
parsing, the schema validation and the repair round trip all run on replies that crossed the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.errors import NotFoundError, OpenClawError
from services.common.router_client import RouterClient
from services.executor.context import OpContext
from services.router.bootstrap import RouterApp, build
from services.router.settings import RouterSettings
from services.simulator.app import Simulator
from tests.unit.ops.harness import ctx_for, run_op

pytestmark = pytest.mark.integration

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


@pytest.fixture
async def router(sim: Simulator) -> AsyncIterator[RouterApp]:
    settings = RouterSettings(listen="127.0.0.1:0", metrics_port=0, simulator_url=sim.url)  # type: ignore[call-arg]
    app = build(settings, env={}, ops=False)
    await app.start()
    yield app
    await app.stop(0)


@pytest.fixture
async def ctx(router: RouterApp, tmp_path: Path) -> AsyncIterator[OpContext]:
    client = RouterClient(router.address, hop_name="executor.router", timeout_s=20)
    yield ctx_for(tmp_path, router=client)
    await client.close()


async def test_chat_through_the_router(ctx: OpContext, sim: Simulator) -> None:
    conversation = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
    ]
    out = await run_op(
        "llm_chat", {"model": "gpt-4-mini", "messages": conversation, "prompt": "second question"}, ctx
    )
    assert (
        out["content"] == '[simulated gpt-4-mini] received 2 words in 1 line; first line: "second question"'
    )
    assert out["route"]["simulated"] is True and out["route"]["model"] == "gpt-4-mini"
    assert out["usage"]["prompt_tokens"] == 8  # every message's words, counted by the provider
    assert out["messages"][-1] == {"role": "assistant", "content": out["content"]}
    echoed = await run_op("llm_chat", {"model": "echo", "prompt": "say this back"}, ctx)
    assert echoed["content"] == "say this back"
    assert sim.stats.count("gpt-4-mini", "ok") == 1 and sim.stats.count("echo", "ok") == 1


async def test_classify_checks_the_reply_against_the_labels(ctx: OpContext, sim: Simulator) -> None:
    labels = ["billing", "bug report", "feature request"]
    out = await run_op("llm_classify", {"model": "echo", "text": "Bug report.", "labels": labels}, ctx)
    assert out["label"] == "bug report" and out["attempts"] == 1
    # A simulated summary is no label: one repair round trip, then a clear failure quoting the reply.
    with pytest.raises(
        OpenClawError, match=r"model 'gpt-4-mini' did not answer with a label .*\[simulated gpt-4-mini\]"
    ):
        await run_op("llm_classify", {"model": "gpt-4-mini", "text": "it crashes", "labels": labels}, ctx)
    assert sim.stats.count("gpt-4-mini", "ok") == 2


async def test_extract_parses_validates_and_repairs_through_the_router(
    ctx: OpContext, sim: Simulator
) -> None:
    out = await run_op(
        "llm_extract", {"model": "echo", "text": '{"name": "Ada", "age": 36}', "json_schema": PERSON}, ctx
    )
    assert out["data"] == {"name": "Ada", "age": 36} and out["attempts"] == 1
    # Invalid first reply: the errors go back to the model (echo returns that feedback, which is not JSON).
    with pytest.raises(OpenClawError, match="did not return JSON valid against the schema") as info:
        await run_op("llm_extract", {"model": "echo", "text": '{"name": "Ada"}', "json_schema": PERSON}, ctx)
    assert info.value.details["errors"] == ["the reply is not JSON"]
    assert "'age' is a required property" in info.value.details["reply"]
    assert sim.stats.count("echo", "ok") == 3


async def test_router_errors_reach_the_step(ctx: OpContext) -> None:
    with pytest.raises(NotFoundError, match="no-such-model"):
        await run_op("llm_summarize", {"model": "no-such-model", "text": "hello"}, ctx)
