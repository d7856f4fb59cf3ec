"""The engine's control steps on a fake journal: foreach, parallel and called workflows, and their resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.executor.engine import StepFailed, WorkflowCancelled
from tests.unit.engine_harness import MemoryJournal, Runner


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


def echo(step_id: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "echo", "params": {"value": value}, **extra}


def flaky(step_id: str, key: str, fail: int = 0) -> dict[str, Any]:
    return {"id": step_id, "type": "flaky", "params": {"key": key, "fail": fail}}


FOREACH: dict[str, Any] = {
    "steps": [
        echo("list", ["a", "b", "c", "d", "e"]),
        {
            "id": "each",
            "type": "foreach",
            "items": "${{ steps.list.output }}",
            "concurrency": 2,
            "steps": [
                echo("tag", "${{ index }}:${{ item }}"),
                echo("loud", {"tag": "${{ prev.output }}", "first": "${{ index == 0 }}"}),
            ],
        },
    ],
    "outputs": {"tags": "${{ steps.each.output }}"},
}


async def test_foreach_collects_outputs_in_order_within_its_concurrency(runner: Runner) -> None:
    journal = MemoryJournal()
    result = await runner.run(FOREACH, journal)
    assert result == {
        "tags": [{"tag": f"{i}:{x}", "first": i == 0} for i, x in enumerate("abcde")],
    }
    assert runner.ops.peak == 2
    # Every item's steps are checkpointed under the item: each[3].tag, each[3].loud.
    assert journal.states["each[3].loud"]["output"] == {"tag": "3:d", "first": False}
    assert journal.status("each") == "succeeded"


async def test_foreach_resumes_only_the_unfinished_items(runner: Runner) -> None:
    doc = {
        "steps": [
            {
                "id": "each",
                "type": "foreach",
                "items": [
                    {"k": "a", "fail": 0},
                    {"k": "b", "fail": 0},
                    {"k": "c", "fail": 1},
                    {"k": "d", "fail": 0},
                ],
                "steps": [
                    {
                        "id": "get",
                        "type": "flaky",
                        "params": {"key": "${{ item.k }}", "fail": "${{ item.fail }}"},
                    }
                ],
            }
        ]
    }
    first = MemoryJournal()
    with pytest.raises(StepFailed) as err:
        await runner.run(doc, first)
    assert err.value.step.id == "each[2].get" and err.value.retryable
    assert dict(runner.ops.calls) == {"a": 1, "b": 1, "c": 1}  # d never started: items stop at a failure

    second = MemoryJournal(first.states)
    result = await runner.run(doc, second)
    assert [r["key"] for r in result] == ["a", "b", "c", "d"]
    assert dict(runner.ops.calls) == {"a": 1, "b": 1, "c": 2, "d": 1}
    assert ("started", "each[0].get") not in second.events


async def test_foreach_over_something_else_than_a_list_fails_the_step(runner: Runner) -> None:
    doc = {
        "steps": [
            echo("x", {"a": 1}),
            {"id": "each", "type": "foreach", "items": "${{ steps.x.output }}", "steps": [echo("y", 1)]},
        ]
    }
    with pytest.raises(StepFailed) as err:
        await runner.run(doc)
    assert "steps[1].items: must be a list, not an object" in err.value.error.message


async def test_foreach_of_nothing_is_an_empty_list(runner: Runner) -> None:
    doc = {"steps": [{"id": "each", "type": "foreach", "items": [], "steps": [echo("y", 1)]}]}
    assert await runner.run(doc) == []


PARALLEL: dict[str, Any] = {
    "steps": [
        echo("start", 10),
        {
            "id": "fan",
            "type": "parallel",
            "branches": [
                [echo("left", "${{ steps.start.output }}"), flaky("left2", "L")],
                [flaky("right", "R", fail=1)],
            ],
        },
        echo(
            "join",
            {
                "left": "${{ steps.left.output }}",
                "right": "${{ steps.right.output.calls }}",
                "all": "${{ prev.output }}",
            },
        ),
    ]
}


async def test_parallel_branches_join_and_resume_without_rerunning_finished_branch_steps(
    runner: Runner,
) -> None:
    first = MemoryJournal()
    with pytest.raises(StepFailed) as err:
        await runner.run(PARALLEL, first)
    assert err.value.step.id == "right"
    # The other branch ran to its end: its checkpoints survive the failure.
    assert first.status("left2") == "succeeded" and first.status("fan") == "failed"

    second = MemoryJournal(first.states)
    result = await runner.run(PARALLEL, second)
    assert result == {"left": 10, "right": 2, "all": [{"key": "L", "calls": 1}, {"key": "R", "calls": 2}]}
    assert dict(runner.ops.calls) == {"echo:start": 1, "echo:left": 1, "L": 1, "R": 2, "echo:join": 1}

    # Once the parallel step itself is checkpointed, its branches' outputs are still visible after it.
    third = MemoryJournal({k: v for k, v in second.states.items() if k != "join"})
    assert (await runner.run(PARALLEL, third))["left"] == 10


async def test_a_called_workflow_runs_in_the_task_with_its_own_inputs_and_namespaced_checkpoints(
    runner: Runner,
) -> None:
    called = {
        "name": "inner",
        "inputs": {"who": {"required": True}, "greeting": {"default": "hello"}},
        "steps": [echo("step1", "${{ inputs.greeting }} ${{ inputs.who }}"), flaky("step2", "inner", fail=1)],
        "outputs": {"text": "${{ steps.step1.output }}", "calls": "${{ steps.step2.output.calls }}"},
    }
    doc = {
        "steps": [
            echo("step1", "world"),
            {
                "id": "call",
                "type": "workflow",
                "workflow": called,
                "inputs": {"who": "${{ steps.step1.output }}"},
            },
        ],
        "outputs": {"called": "${{ steps.call.output }}"},
    }
    first = MemoryJournal()
    with pytest.raises(StepFailed) as err:
        await runner.run(doc, first)
    assert err.value.step.id == "call.step2"
    assert (
        first.states["call.step1"]["output"] == "hello world" and first.states["step1"]["output"] == "world"
    )

    second = MemoryJournal(first.states)
    assert await runner.run(doc, second) == {"called": {"text": "hello world", "calls": 2}}
    assert ("started", "call.step1") not in second.events


async def test_a_called_workflows_missing_input_fails_the_step(runner: Runner) -> None:
    called = {"inputs": {"who": {"required": True}}, "steps": [echo("s", "${{ inputs.who }}")]}
    doc = {
        "steps": [
            {"id": "call", "type": "workflow", "workflow": called, "inputs": {"who": "${{ inputs.name }}"}}
        ]
    }
    with pytest.raises(StepFailed) as err:
        await runner.run(doc, inputs={})
    assert "inputs has no key 'name'" in err.value.error.message


async def test_cancellation_stops_a_foreach_between_items(runner: Runner) -> None:
    doc = {
        "steps": [
            {"id": "each", "type": "foreach", "items": [1, 2, 3, 4], "steps": [echo("e", "${{ item }}")]}
        ]
    }
    journal = MemoryJournal(cancel_after=3)
    with pytest.raises(WorkflowCancelled) as err:
        await runner.run(doc, journal)
    assert err.value.next_step.id == "each[2].e"
    assert runner.ops.calls["echo:each[2].e"] == 0


async def test_a_skipped_or_recovered_parallel_steps_branch_outputs_read_as_null(runner: Runner) -> None:
    doc = {
        "steps": [
            {
                "id": "fan",
                "type": "parallel",
                "when": "${{ inputs.go }}",
                "continue_on_error": True,
                "branches": [[flaky("ok", "ok")], [flaky("bad", "bad", fail=9)]],
            },
            echo("after", {"ok": "${{ steps.ok.output }}", "bad": "${{ steps.bad.output }}"}),
        ]
    }
    assert await runner.run(doc, inputs={"go": False}) == {"ok": None, "bad": None}
    journal = MemoryJournal()
    assert await runner.run(doc, journal, inputs={"go": True}) == {
        "ok": {"key": "ok", "calls": 1},
        "bad": None,
    }
    assert journal.status("fan") == "recovered"
    # Resumed after the join: the same values, from the checkpoints.
    resumed = MemoryJournal({k: v for k, v in journal.states.items() if k != "after"})
    assert await runner.run(doc, resumed, inputs={"go": True}) == {
        "ok": {"key": "ok", "calls": 1},
        "bad": None,
    }
