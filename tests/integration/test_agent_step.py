"""Agent steps through the real worker (RabbitMQ, Redis), the real router over gRPC and the provider simulator.

The simulator's model follows the ``sim-call:`` lines of its instructions: one scripted tool call per turn,
then, with the ``echo`` model, it answers with the last tool result unchanged. So every tool call below
crossed the router and the simulator's OpenAI wire format, and the answer is what the real operation returned.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from services.router.bootstrap import RouterApp
from services.simulator.app import Simulator
from tests.integration import test_executor as base

pytestmark = pytest.mark.integration

harness = base.harness
llm = base.llm
Harness = base.Harness
TENANT = base.TENANT

SCRIPT = "\n".join(
    [
        "Keep a note, check a sum, and read the note back.",
        'sim-call: file_write {"path": "notes/agent.txt", "content": "hello from the agent"}',
        'sim-call: math_evaluate {"expr": "6*7"}',
        'sim-call: math_evaluate {"expression": "6*7"}',
        'sim-call: http_request {"url": "http://127.0.0.1:1/"}',
        'sim-call: file_read {"path": "notes/agent.txt"}',
    ]
)


def workflow(script: str = SCRIPT) -> dict[str, Any]:
    return {
        "name": "agent-notes",
        "steps": [
            {
                "id": "a",
                "type": "agent",
                "agent": {
                    "model": "echo",
                    "instructions": script,
                    "input": None,
                    "tools": ["file_write", "file_read", "math_evaluate"],
                    "max_turns": 8,
                },
            }
        ],
    }


async def test_an_agent_calls_real_operations_and_answers(
    harness: Harness, llm: tuple[Simulator, RouterApp]
) -> None:
    sim, router = llm
    await harness.start(router)
    task_id = await harness.submit(workflow())
    record = await harness.wait(task_id, within=30)

    assert record.status == "succeeded", record.error
    out = record.result
    assert json.loads(out["content"])["content"] == "hello from the agent"  # file_read's output, echoed
    assert (out["stopped"], out["turns"]) == ("answer", 6)
    assert [(c["name"], c["tool"], c["ok"]) for c in out["tool_calls"]] == [
        ("file_write", "file_write", True),
        ("math_evaluate", "math_evaluate", False),
        ("math_evaluate", "math_evaluate", True),
        (None, "http_request", False),
        ("file_read", "file_read", True),
    ]
    assert out["tool_calls"][1]["error"]["message"] == (
        "arguments.expression: required; arguments.expr: unknown parameter"
    )
    assert out["tool_calls"][3]["error"]["message"].startswith("tool 'http_request' is not available")
    assert (harness.storage / TENANT / "notes" / "agent.txt").read_text() == "hello from the agent"
    assert sim.stats.count("echo", "ok") == 6
    assert out["usage"]["total_tokens"] > 0 and out["model"] == "echo"

    # The history: every turn and tool call is checkpointed, with its event, beside the step itself.
    steps = record.steps
    assert steps["a"]["status"] == "succeeded"
    assert [steps[f"a/turn{n}"]["status"] for n in range(1, 7)] == ["turn"] * 6
    assert steps["a/turn3/call1"]["output"]["result"] == "42"
    assert steps["a/turn4/call1"]["output"]["ok"] is False
    events = await harness.events(task_id)
    assert [e for e in events if e[0] in ("step.turn", "step.tool_call")][:3] == [
        ("step.turn", "a/turn1"),
        ("step.tool_call", "a/turn1/call1"),
        ("step.turn", "a/turn2"),
    ]
    assert ("task.succeeded", "") in events


async def test_a_redelivered_agent_replays_its_recorded_turns(
    harness: Harness, llm: tuple[Simulator, RouterApp]
) -> None:
    sim, router = llm
    script = "\n".join(
        [
            "Write, then read.",
            'sim-call: file_write {"path": "notes/once.txt", "content": "written once"}',
            'sim-call: file_read {"path": "notes/once.txt"}',
        ]
    )
    doc = workflow(script)
    task_id = await harness.submit(doc, publish=False)
    # An earlier delivery asked the model for turn 1 and ran its file_write, then died: both are recorded.
    call = {
        "id": "call_1",
        "name": "file_write",
        "arguments": '{"path": "notes/once.txt", "content": "written once"}',
    }
    turn1 = {
        "turn": 1,
        "content": "",
        "tool_calls": [call],
        "finish_reason": "tool_calls",
        "model": "echo",
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        "duration_ms": 1.0,
    }
    done = {
        "turn": 1,
        "id": "call_1",
        "tool": "file_write",
        "name": "file_write",
        "arguments": json.loads(call["arguments"]),
        "ok": True,
        "result": '{"path": "notes/once.txt", "size": 12, "sha256": "recorded"}',
        "duration_ms": 1.0,
    }
    await harness.store.checkpoint(
        TENANT, task_id, "a/turn1", {"status": "turn", "type": "agent", "output": turn1}
    )
    await harness.store.checkpoint(
        TENANT, task_id, "a/turn1/call1", {"status": "tool_call", "type": "agent", "output": done}
    )
    await harness.start(router)
    await harness.publisher.publish(harness.envelope(task_id, json.dumps(doc)))
    record = await harness.wait(task_id, within=30)

    assert record.status == "succeeded", record.error
    out = record.result
    # The recorded write was not run again (the file was never written), and turn 1 was not asked again:
    # the model went on with the second scripted call, whose read finds no file.
    assert not (harness.storage / TENANT / "notes" / "once.txt").exists()
    assert sim.stats.count("echo", "ok") == 2
    assert [(c["name"], c["ok"]) for c in out["tool_calls"]] == [("file_write", True), ("file_read", False)]
    assert json.loads(out["content"])["error"]["code"] == "not_found"
    assert out["turns"] == 3 and out["usage"]["total_tokens"] > 12


async def test_the_simulator_follows_a_tool_script_plain_and_streamed(
    llm: tuple[Simulator, RouterApp],
) -> None:
    sim, _ = llm
    tools: Any = [
        {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in ("a", "b")
    ]
    ask: Any = [{"role": "system", "content": 'Go.\nsim-call: b {"x": 1}\nsim-call: a not json'}]
    async with openai.AsyncOpenAI(base_url=f"{sim.url}/v1", api_key="sim", max_retries=0) as client:
        first = await client.chat.completions.create(model="sim-chat", messages=ask, tools=tools)
        call: Any = (first.choices[0].message.tool_calls or [])[0]
        assert (first.choices[0].finish_reason, call.function.name, call.function.arguments) == (
            "tool_calls",
            "b",
            '{"x": 1}',
        )
        history: Any = [
            *ask,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "result of b"},
        ]
        stream = await client.chat.completions.create(
            model="sim-chat", messages=history, tools=tools, stream=True
        )
        chunks = [c async for c in stream]
        parts = [
            t.function
            for c in chunks
            if c.choices
            for t in (c.choices[0].delta.tool_calls or [])
            if t.function
        ]
        assert [p.name for p in parts if p.name] == ["a"]
        assert (
            "".join(p.arguments or "" for p in parts) == "not json"
        )  # verbatim, so a test can script bad JSON
        # The script is done: the model speaks about the last tool result, labelled as ever.
        done: Any = [
            *history,
            {"role": "assistant", "content": None, "tool_calls": [{**call.model_dump(), "id": "c2"}]},
            {"role": "tool", "tool_call_id": "c2", "content": "result of a"},
        ]
        last = await client.chat.completions.create(model="sim-chat", messages=done, tools=tools)
        assert last.choices[0].message.content == (
            '[simulated sim-chat] received 3 words in 1 line; first line: "result of a"'
        )
        # Without tools (or with tool_choice "none") the script is not followed.
        plain = await client.chat.completions.create(
            model="sim-chat", messages=ask, tools=tools, tool_choice="none"
        )
        assert plain.choices[0].finish_reason == "stop"
