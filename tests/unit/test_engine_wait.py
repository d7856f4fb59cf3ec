"""Wait steps on a fake journal: short waits in place, long ones park at a time kept across deliveries,
signals (kept when they come first), timeouts, and waits in parallel branches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.envelope import now_ms
from services.executor.engine import WorkflowParked
from tests.unit.engine_harness import MemoryJournal, Runner, WaitingJournal


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


def echo(step_id: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "type": "echo", "params": {"value": value}, **extra}


APPROVAL: dict[str, Any] = {
    "steps": [
        echo("draft", "the plan"),
        {"id": "approval", "type": "wait", "signal": "approval", "timeout": 3600},
        echo(
            "go",
            "${{ steps.draft.output }}",
            when="${{ steps.approval.output.received and steps.approval.output.payload.ok == true }}",
        ),
    ],
    "outputs": {"decision": "${{ steps.approval.output }}", "done": "${{ steps.go.output }}"},
}


async def test_a_short_wait_is_slept_in_place(runner: Runner) -> None:
    doc = {"steps": [{"id": "nap", "type": "wait", "seconds": 0.01}, echo("after", 1)]}
    journal = WaitingJournal()
    assert await runner.run(doc, journal) == 1
    assert journal.status("nap") == "succeeded"


async def test_a_long_wait_parks_at_a_time_kept_across_deliveries(runner: Runner) -> None:
    doc = {"steps": [echo("before", 1), {"id": "nap", "type": "wait", "seconds": 3600}, echo("after", 2)]}
    journal = WaitingJournal()
    start = now_ms()
    with pytest.raises(WorkflowParked) as first:
        await runner.run(doc, journal)
    wake = first.value.wake_at_ms
    assert wake is not None and start + 3_600_000 <= wake <= now_ms() + 3_600_000
    assert first.value.step.id == "nap" and runner.ops.calls["echo:after"] == 0

    # The next delivery waits for the same moment, not an hour from then.
    with pytest.raises(WorkflowParked) as second:
        await runner.run(doc, WaitingJournal(journal.states))
    assert second.value.wake_at_ms == wake

    # Once the moment has passed, the step finishes and the run goes on.
    due = WaitingJournal({**journal.states, "nap": {"status": "waiting", "until_ms": now_ms() - 1}})
    assert await runner.run(doc, due) == 2
    assert runner.ops.calls["echo:before"] == 1


async def test_a_wait_until_a_time_in_the_past_is_done(runner: Runner) -> None:
    doc = {"steps": [{"id": "w", "type": "wait", "until": "${{ inputs.at }}"}]}
    assert (await runner.run(doc, WaitingJournal(), inputs={"at": "2020-01-01T00:00:00Z"}))[
        "until_ms"
    ] == 1577836800000
    with pytest.raises(WorkflowParked) as parked:
        await runner.run(doc, WaitingJournal(), inputs={"at": "2999-01-01T00:00:00+01:00"})
    assert parked.value.wake_at_ms == 32472140400000


async def test_a_signal_wakes_the_approval_and_one_that_came_first_is_kept(runner: Runner) -> None:
    journal = WaitingJournal()
    with pytest.raises(WorkflowParked) as parked:
        await runner.run(APPROVAL, journal)
    assert parked.value.signals == ("approval",)

    resumed = WaitingJournal(journal.states)
    resumed.signals["approval"] = {"ok": True, "by": "ana"}
    result = await runner.run(APPROVAL, resumed)
    assert result == {
        "decision": {"signal": "approval", "received": True, "payload": {"ok": True, "by": "ana"}},
        "done": "the plan",
    }

    # A signal received before the wait is reached: the wait does not park at all.
    early = WaitingJournal()
    early.signals["approval"] = {"ok": False}
    assert (await runner.run(APPROVAL, early))["done"] is None
    assert early.status("go") == "skipped"


async def test_a_signal_wait_times_out_with_received_false(runner: Runner) -> None:
    journal = WaitingJournal({"approval": {"status": "waiting", "until_ms": now_ms() - 1}})
    result = await runner.run(APPROVAL, journal)
    assert result["decision"] == {"signal": "approval", "received": False, "payload": None}
    assert result["done"] is None


async def test_waits_in_parallel_branches_park_once_for_the_earliest(runner: Runner) -> None:
    doc = {
        "steps": [
            {
                "id": "fan",
                "type": "parallel",
                "branches": [
                    [{"id": "long", "type": "wait", "seconds": 7200}],
                    [{"id": "sig", "type": "wait", "signal": "ping"}],
                    [echo("busy", 1)],
                ],
            }
        ]
    }
    journal = WaitingJournal()
    with pytest.raises(WorkflowParked) as parked:
        await runner.run(doc, journal)
    assert parked.value.signals == ("ping",)
    assert parked.value.wake_at_ms == journal.states["long"]["until_ms"]
    assert journal.status("busy") == "succeeded"  # the branch that did not wait ran to its end


async def test_a_journal_that_cannot_hold_waits_fails_the_step(runner: Runner) -> None:
    from services.executor.engine import StepFailed

    with pytest.raises(StepFailed, match="cannot hold waits"):
        await runner.run({"steps": [{"id": "w", "type": "wait", "seconds": 5}]}, MemoryJournal())
