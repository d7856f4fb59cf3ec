"""Agent steps with a scripted model (a fake ChatClient): tool calls, corrections, the allow-list, budgets,
tenant confinement and resuming from the recorded turns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from openclaw.v1 import router_pb2
from services.common.errors import InvalidInputError, UnavailableError
from services.executor.context import OpContext, OpServices, RunState
from services.executor.dsl import Step, parse_workflow
from services.executor.engine import Engine, StepFailed, WorkflowCancelled
from services.executor.ops import catalogue
from services.executor.ops.base import Catalogue, Operation, Params
from services.executor.schema import schema_problems
from tests.unit.engine_harness import MemoryJournal, Ops

Turn = router_pb2.ChatResponse | Exception | Callable[[router_pb2.ChatRequest], router_pb2.ChatResponse]


def calls(*made: tuple[str, Any], tokens: int = 10) -> router_pb2.ChatResponse:
    """A model turn that calls tools: (name, arguments as a dict, or as raw text)."""
    return router_pb2.ChatResponse(
        model="scripted",
        finish_reason="tool_calls",
        message=router_pb2.ChatMessage(
            role="assistant",
            tool_calls=[
                router_pb2.ToolCall(
                    id=f"c{i}",
                    type="function",
                    name=name,
                    arguments=a if isinstance(a, str) else json.dumps(a),
                )
                for i, (name, a) in enumerate(made)
            ],
        ),
        usage=router_pb2.Usage(prompt_tokens=tokens - 2, completion_tokens=2, total_tokens=tokens),
    )


def answer(text: str, tokens: int = 10) -> router_pb2.ChatResponse:
    return router_pb2.ChatResponse(
        model="scripted",
        finish_reason="stop",
        message=router_pb2.ChatMessage(role="assistant", content=text),
        usage=router_pb2.Usage(prompt_tokens=tokens - 1, completion_tokens=1, total_tokens=tokens),
    )


class ScriptedModel:
    """The router as the agent uses it: answers each request with the next scripted turn, and keeps them."""

    def __init__(self, *turns: Turn) -> None:
        self.turns = list(turns)
        self.requests: list[router_pb2.ChatRequest] = []

    async def chat(
        self, request: router_pb2.ChatRequest, *, timeout_s: float | None = None
    ) -> router_pb2.ChatResponse:
        self.requests.append(request)
        turn = self.turns.pop(0)
        if isinstance(turn, Exception):
            raise turn
        return turn(request) if callable(turn) else turn

    def tool_results(self, index: int) -> list[tuple[str, str]]:
        """(tool_call_id, content) of the tool messages the index-th request ends with (the newest results)."""
        out: list[tuple[str, str]] = []
        for m in reversed(self.requests[index].messages):
            if m.role != "tool":
                break
            out.insert(0, (m.tool_call_id, m.content))
        return out


class AgentJournal(MemoryJournal):
    """A MemoryJournal that also keeps the agent's turns and tool calls, like the task journal."""

    async def agent_records(self, key: str) -> dict[str, dict[str, Any]]:
        return {
            k: s["output"]
            for k, s in self.states.items()
            if k.startswith(f"{key}/") and s["status"] in ("turn", "tool_call")
        }

    async def agent_recorded(self, step: Step, record_key: str, kind: str, record: dict[str, Any]) -> None:
        self.states[record_key] = {"status": kind, "output": json.loads(json.dumps(record))}
        self.events.append((kind, record_key))


class LookupParams(Params):
    key: str = Field(min_length=1, description="What to look up.")


class Rig:
    """Runs one-step agent workflows over the test operations, the real ones and a plugin-named one."""

    def __init__(self, tmp_path: Path) -> None:
        self.ops = Ops()
        self.root = tmp_path
        self.lookups: list[str] = []
        ops: Catalogue = self.ops.catalogue()
        real = catalogue()
        self.catalogue = ops.with_operations(
            real["math_evaluate"],
            real["file_write"],
            real["file_read"],
            Operation("acme.lookup", "test", "Looks a key up.", LookupParams, self.lookup),
            Operation("boom", "test", "Raises a bug.", LookupParams, self.boom),
        )

    async def lookup(self, p: LookupParams, ctx: OpContext) -> Any:
        self.lookups.append(f"{ctx.tenant}:{p.key}")
        return {"key": p.key, "value": p.key.upper()}

    async def boom(self, p: LookupParams, ctx: OpContext) -> Any:
        raise RuntimeError("bug in the op")

    async def run(
        self,
        model: ScriptedModel,
        agent: dict[str, Any],
        journal: MemoryJournal | None = None,
        before: list[dict[str, Any]] | None = None,
    ) -> Any:
        doc = {"name": "agentic", "steps": [*(before or []), {"id": "a", "type": "agent", "agent": agent}]}
        wf = parse_workflow(doc, known_ops=self.catalogue)
        engine = Engine(self.catalogue, OpServices(storage_root=self.root, router=model))
        state = RunState(workflow=wf, task_id="t1", tenant="acme", attempt=1, inputs={})
        return await engine.run(wf, state, journal if journal is not None else AgentJournal())


def agent(*tools: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4-mini",
        "instructions": "Do the job.",
        "input": "the job",
        "tools": list(tools),
        **extra,
    }


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


async def test_the_model_calls_tools_sees_their_results_and_answers(rig: Rig) -> None:
    model = ScriptedModel(
        calls(("math_evaluate", {"expression": "6*7"})),
        calls(("file_write", {"path": "out/answer.txt", "content": "42"}), ("acme__lookup", {"key": "x"})),
        answer("The answer is 42."),
    )
    journal = AgentJournal()
    out = await rig.run(model, agent("math_evaluate", "file_write", "acme.lookup"), journal)

    assert out["content"] == "The answer is 42." and out["stopped"] == "answer" and out["turns"] == 3
    assert [(c["name"], c["tool"], c["arguments"], c["ok"]) for c in out["tool_calls"]] == [
        ("math_evaluate", "math_evaluate", {"expression": "6*7"}, True),
        ("file_write", "file_write", {"path": "out/answer.txt", "content": "42"}, True),
        ("acme.lookup", "acme__lookup", {"key": "x"}, True),
    ]
    assert out["usage"] == {"prompt_tokens": 25, "completion_tokens": 5, "total_tokens": 30}
    assert (rig.root / "acme" / "out" / "answer.txt").read_text() == "42"  # under the step's tenant
    assert rig.lookups == ["acme:x"]
    # Each result went back to the model, under the id of the call it answers.
    assert model.tool_results(1) == [("c0", "42")]
    results = dict(model.tool_results(2))
    assert json.loads(results["c1"]) == {"key": "x", "value": "X"}
    first = model.requests[0]
    assert [(m.role, m.content) for m in first.messages] == [("system", "Do the job."), ("user", "the job")]
    assert first.tenant == "acme" and first.model == "gpt-4-mini"
    offered = first.extra["tools"]
    assert [t["function"]["name"] for t in offered] == ["math_evaluate", "file_write", "acme__lookup"]
    assert offered[0]["function"]["parameters"]["required"] == ["expression"]
    assert first.extra["tool_choice"] == "auto"
    # Every turn and tool call is in the journal, in order, before the step's own checkpoint.
    kinds = [e for e in journal.events if e[0] in ("turn", "tool_call", "succeeded")]
    assert kinds == [
        ("turn", "a/turn1"),
        ("tool_call", "a/turn1/call1"),
        ("turn", "a/turn2"),
        ("tool_call", "a/turn2/call1"),
        ("tool_call", "a/turn2/call2"),
        ("turn", "a/turn3"),
        ("succeeded", "a"),
    ]


async def test_bad_arguments_go_back_to_the_model_which_corrects_them(rig: Rig) -> None:
    model = ScriptedModel(
        calls(("math_evaluate", {"expr": "1+1"})),
        calls(("math_evaluate", "{not json")),
        calls(("math_evaluate", "[1, 2]")),
        calls(("math_evaluate", {"expression": "1+"})),
        calls(("math_evaluate", {"expression": "1+1"})),
        answer("2"),
    )
    out = await rig.run(model, agent("math_evaluate", max_turns=6))

    assert out["content"] == "2" and [c["ok"] for c in out["tool_calls"]] == [False] * 4 + [True]
    errors = [json.loads(model.tool_results(i)[0][1])["error"] for i in range(1, 5)]
    assert errors[0] == {
        "code": "invalid_input",
        "message": "arguments.expression: required; arguments.expr: unknown parameter",
    }
    assert errors[1]["message"].startswith("arguments: not valid JSON")
    assert errors[2]["message"] == "arguments: must be a JSON object"
    assert errors[3]["code"] == "invalid_input" and errors[3]["message"].startswith("expression:")
    assert model.tool_results(5) == [("c0", "2")]
    assert out["tool_calls"][1]["arguments"] == "{not json"  # as the model wrote it


async def test_only_allow_listed_operations_are_offered_and_run(rig: Rig) -> None:
    model = ScriptedModel(
        calls(("flaky", {"key": "k"}), ("file_write", {"path": "x.txt", "content": "no"}), ("echo", {})),
        answer("done"),
    )
    out = await rig.run(model, agent("echo", "acme.lookup"))

    assert [t["function"]["name"] for t in model.requests[0].extra["tools"]] == ["echo", "acme__lookup"]
    assert rig.ops.calls["k"] == 0 and not (rig.root / "acme" / "x.txt").exists()  # never executed
    refused = [json.loads(content)["error"] for _, content in model.tool_results(1)[:2]]
    assert refused[0]["message"] == (
        "tool 'flaky' is not available; the tools offered are: acme__lookup, echo"
    )
    assert refused[1]["message"].startswith("tool 'file_write' is not available")
    assert [(c["name"], c["ok"]) for c in out["tool_calls"]] == [(None, False), (None, False), ("echo", True)]


async def test_a_turn_runs_at_most_sixteen_tool_calls(rig: Rig) -> None:
    model = ScriptedModel(calls(*(("acme__lookup", {"key": f"k{i}"}) for i in range(18))), answer("ok"))
    out = await rig.run(model, agent("acme.lookup"))
    assert rig.lookups == [f"acme:k{i}" for i in range(16)]
    assert [c["ok"] for c in out["tool_calls"]] == [True] * 16 + [False] * 2
    assert out["tool_calls"][16]["error"]["message"] == "not run: at most 16 tool calls are run per turn"
    assert len(model.tool_results(1)) == 18  # every call is answered


async def test_tools_stay_inside_the_tenant_and_their_failures_are_results(rig: Rig) -> None:
    model = ScriptedModel(
        calls(("file_write", {"path": "../other/x.txt", "content": "escape"})),
        calls(("file_read", {"path": "missing.txt"}), ("boom", {"key": "k"})),
        answer("could not"),
    )
    out = await rig.run(model, agent("file_write", "file_read", "boom"))

    assert not (rig.root / "other").exists()
    escape = json.loads(model.tool_results(1)[0][1])["error"]
    assert escape["code"] == "invalid_input" and "cannot leave the tenant's storage" in escape["message"]
    missing, bug = (json.loads(c)["error"] for _, c in model.tool_results(2))
    assert missing["code"] == "not_found"
    assert bug == {"code": "internal", "message": "boom failed unexpectedly: RuntimeError: bug in the op"}
    assert out["content"] == "could not" and not any(c["ok"] for c in out["tool_calls"])


async def test_long_results_are_cut_before_the_model_sees_them(rig: Rig) -> None:
    model = ScriptedModel(calls(("echo", {"value": "x" * 5000})), answer("ok"))
    journal = AgentJournal()
    out = await rig.run(model, agent("echo", max_result_chars=1000), journal)
    content = model.tool_results(1)[0][1]
    assert content == "x" * 1000 + "\n[... cut, 4000 more characters]"
    # The output shows long arguments cut; the tool call's record keeps them whole.
    shown = out["tool_calls"][0]["arguments"]
    assert shown == '{"value": "' + "x" * 2037 + "[... cut, 2965 more characters]"
    assert journal.states["a/turn1/call1"]["output"]["arguments"] == {"value": "x" * 5000}


async def test_running_out_of_turns_fails_clearly_or_ends_with_the_last_text(rig: Rig) -> None:
    def busy() -> ScriptedModel:
        loop = calls(("echo", {"value": 1}))
        loop.message.content = "still working"
        return ScriptedModel(loop, loop, loop)

    with pytest.raises(StepFailed) as failed:
        await rig.run(busy(), agent("echo", max_turns=2))
    record = failed.value.record()
    assert record["code"] == "resource_exhausted" and record["retryable"] is False
    assert record["message"] == (
        "step 'a' (steps[0], agent): the agent used all 2 turns without answering (max_turns)"
    )
    assert record["details"]["turns"] == 2

    model = busy()
    out = await rig.run(model, agent("echo", max_turns=2, on_budget="answer"))
    assert (out["stopped"], out["turns"], out["content"]) == ("max_turns", 2, "still working")
    assert len(model.requests) == 2 and len(out["tool_calls"]) == 2


async def test_the_token_budget_counts_reported_usage(rig: Rig) -> None:
    model = ScriptedModel(*(calls(("echo", {}), tokens=400) for _ in range(5)))
    out = await rig.run(model, agent("echo", max_tokens=1000, on_budget="answer"))
    assert (out["stopped"], out["turns"], out["usage"]["total_tokens"]) == ("max_tokens", 3, 1200)
    assert len(model.requests) == 3

    with pytest.raises(StepFailed, match=r"used 1200 of its 1000 tokens without answering \(max_tokens\)"):
        await rig.run(
            ScriptedModel(*(calls(("echo", {}), tokens=400) for _ in range(5))),
            agent("echo", max_tokens=1000),
        )


async def test_the_time_budget_cuts_a_slow_tool_short(rig: Rig) -> None:
    model = ScriptedModel(calls(("sleep", {"seconds": 30})), answer("never"))
    out = await rig.run(model, agent("sleep", timeout=0.2, on_budget="answer"))
    assert (out["stopped"], out["turns"], out["tool_calls"]) == ("timeout", 1, [])
    assert len(model.requests) == 1


async def test_a_redelivery_replays_recorded_turns_and_tool_calls(rig: Rig) -> None:
    journal = AgentJournal()
    first = ScriptedModel(
        calls(("acme__lookup", {"key": "one"})),
        calls(("acme__lookup", {"key": "two"})),
        UnavailableError("router away"),
    )
    with pytest.raises(StepFailed) as failed:
        await rig.run(first, agent("acme.lookup"), journal)
    assert failed.value.retryable and rig.lookups == ["acme:one", "acme:two"]
    assert journal.status("a") == "failed"

    second = ScriptedModel(answer("ONE and TWO"))
    out = await rig.run(second, agent("acme.lookup"), journal)

    assert out["content"] == "ONE and TWO" and out["turns"] == 3
    assert rig.lookups == ["acme:one", "acme:two"]  # not called again
    assert len(second.requests) == 1  # turns 1 and 2 were not asked again
    replayed = second.requests[0].messages
    assert [m.role for m in replayed] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert [c.name for c in replayed[2].tool_calls] == ["acme__lookup"]
    assert json.loads(replayed[5].content) == {"key": "two", "value": "TWO"}
    assert out["usage"]["total_tokens"] == 30 and len(out["tool_calls"]) == 2


async def test_a_turn_recorded_before_its_tool_ran_runs_only_the_tool(rig: Rig) -> None:
    journal = AgentJournal(
        {
            "a/turn1": {
                "status": "turn",
                "output": {
                    "turn": 1,
                    "content": "",
                    "tool_calls": [{"id": "c0", "name": "acme__lookup", "arguments": '{"key": "late"}'}],
                    "finish_reason": "tool_calls",
                    "model": "scripted",
                    "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
                    "duration_ms": 1.0,
                },
            }
        }
    )
    model = ScriptedModel(answer("LATE"))
    out = await rig.run(model, agent("acme.lookup"), journal)
    assert rig.lookups == ["acme:late"] and len(model.requests) == 1 and out["turns"] == 2
    assert ("tool_call", "a/turn1/call1") in journal.events


async def test_input_defaults_to_the_previous_output_and_instructions_stand_alone(rig: Rig) -> None:
    model = ScriptedModel(answer("ok"))
    before = [{"id": "data", "type": "echo", "params": {"value": {"text": "from before"}}}]
    spec = {"model": "m", "instructions": "Summarise ${{ steps.data.output.text }}.", "tools": []}
    await rig.run(model, spec, before=before)
    assert [(m.role, m.content) for m in model.requests[0].messages] == [
        ("system", "Summarise from before."),
        ("user", "from before"),
    ]
    assert not model.requests[0].HasField("extra")  # no tools, none offered

    alone = ScriptedModel(answer("ok"))
    await rig.run(alone, {**spec, "instructions": "Just this.", "input": None}, before=before)
    assert [(m.role, m.content) for m in alone.requests[0].messages] == [("user", "Just this.")]


async def test_a_cancellation_stops_the_loop_between_turns(rig: Rig) -> None:
    model = ScriptedModel(calls(("echo", {"value": 1})), answer("too late"))
    journal = AgentJournal(cancel_after=1)  # asked for once the agent step has started
    with pytest.raises(WorkflowCancelled):
        await rig.run(model, agent("echo"), journal)
    assert len(model.requests) == 1 and rig.ops.calls["echo:a/turn1/call1"] == 1
    assert "a" not in journal.states  # neither succeeded nor failed: the task ends cancelled


async def test_router_errors_fail_the_step_with_their_own_code(rig: Rig) -> None:
    with pytest.raises(StepFailed) as failed:
        await rig.run(ScriptedModel(InvalidInputError("model: unknown")), agent("echo"))
    assert failed.value.error.code == "invalid_input" and not failed.value.retryable


async def test_a_journal_without_agent_records_still_runs(rig: Rig) -> None:
    out = await rig.run(
        ScriptedModel(calls(("echo", {"value": 1})), answer("fine")), agent("echo"), MemoryJournal()
    )
    assert out["content"] == "fine" and out["tool_calls"][0]["ok"] is True


# -- validation ---------------------------------------------------------------------------------------------


def problems(doc: dict[str, Any], known: Catalogue | None = None) -> list[str]:
    try:
        parse_workflow(doc, known_ops=known if known is not None else catalogue())
    except InvalidInputError as exc:
        return [f"{e['path']}: {e['message']}" for e in exc.details["errors"]]
    return []


def one(step: dict[str, Any], before: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"steps": [*(before or []), {"id": "a", "type": "agent", **step}]}


def test_agent_steps_are_validated_with_paths() -> None:
    bad = one(
        {
            "agent": {
                "model": "m",
                "tools": ["file_read", "nope", "file_read", "foreach"],
                "max_turns": 0,
                "on_budget": "shrug",
                "extra": 1,
            },
            "params": {},
        }
    )
    assert problems(bad) == [
        "steps[0].params: unknown field; allowed: id, type, description, when, catch, continue_on_error, agent",
        "steps[0].agent.instructions: required",
        "steps[0].agent.max_turns: Input should be greater than or equal to 1",
        "steps[0].agent.on_budget: Input should be 'fail' or 'answer'",
        "steps[0].agent.extra: unknown parameter",
        "steps[0].agent.tools[1]: 'nope' is not an operation of the catalogue",
        "steps[0].agent.tools[2]: 'file_read' is listed twice",
        "steps[0].agent.tools[3]: 'foreach' is not an operation of the catalogue",
    ]
    assert problems(one({})) == ["steps[0].agent: required: an object with model, instructions and tools"]
    refs = one(
        {
            "agent": {
                "model": "m",
                "instructions": "${{ steps.later.output }}",
                "tools": [],
                "input": "${{ prev.output }}",
            }
        }
    )
    assert problems(refs) == [
        "steps[0].agent.instructions: ${{ steps.later.output }}: unknown step 'later'; no step runs before this one",
        "steps[0].agent.input: ${{ prev.output }}: the first step has no previous step",
    ]


def test_plugin_names_become_tool_names_and_must_not_collide() -> None:
    known = catalogue().with_operations(
        Operation("acme.lookup", "test", "Looks up.", LookupParams, Rig.lookup),  # type: ignore[arg-type]
        Operation("acme__lookup", "test", "Looks up too.", LookupParams, Rig.lookup),  # type: ignore[arg-type]
    )
    doc = one({"agent": {"model": "m", "instructions": "i", "tools": ["acme.lookup", "acme__lookup"]}})
    assert problems(doc, known) == [
        "steps[0].agent.tools[1]: 'acme__lookup' and 'acme.lookup' would have the same tool name"
    ]


def test_the_schema_and_the_parser_agree_on_agent_steps() -> None:
    good = one(
        {
            "agent": {
                "model": "gpt-4-mini",
                "instructions": "Work it out.",
                "input": "${{ inputs.q }}",
                "tools": ["math_evaluate", "file_write"],
                "max_turns": "${{ inputs.turns }}",
                "max_tokens": 5000,
                "timeout": 60,
                "on_budget": "answer",
                "max_result_chars": 2000,
                "temperature": 0,
            }
        }
    )
    assert schema_problems(good) == [] and problems(good) == []
    for bad in (
        one({}),
        one({"agent": {"model": "m", "tools": []}}),
        one({"agent": {"model": "m", "instructions": "i", "tools": [], "max_turns": 51}}),
        one({"agent": {"model": "m", "instructions": "i", "tools": [], "timeout": 0}}),
        one({"agent": {"model": "m", "instructions": "i", "tools": [], "x": 1}}),
        one({"agent": {"model": "m", "instructions": "i", "tools": ["a", "a"]}}),
        one({"agent": {"model": "m", "instructions": "i", "tools": []}, "retry": {"attempts": 2}}),
    ):
        assert schema_problems(bad), bad
        assert problems(bad), bad


async def test_an_allowed_op_this_executor_lacks_fails_the_step(tmp_path: Path) -> None:
    # The gateway validated against a catalogue with the op; this executor's has none of that name.
    wf = parse_workflow(one({"agent": agent("math_evaluate")}), known_ops=catalogue())
    engine = Engine(Ops().catalogue(), OpServices(storage_root=tmp_path, router=ScriptedModel()))
    state = RunState(workflow=wf, task_id="t1", tenant="acme", attempt=1, inputs={})
    with pytest.raises(StepFailed, match=r"steps\[0\]\.agent\.tools: 'math_evaluate' is not an operation"):
        await engine.run(wf, state, AgentJournal())


def test_the_gateway_counts_an_agents_tools_among_the_operations_a_workflow_runs() -> None:
    # Tenant policies allow operations by name at submit time: an agent's tools must not slip past them.
    from services.gateway.bootstrap import workflow_operations

    doc = one(
        {"agent": agent("http_request", "file_read")},
        before=[{"type": "math_evaluate", "params": {"expression": "1"}}],
    )
    assert workflow_operations(parse_workflow(doc, known_ops=catalogue())) == {
        "math_evaluate",
        "http_request",
        "file_read",
    }
