"""The engine on a fake journal: when, outputs, timeout, retry, catch and continue_on_error, and resuming."""

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


async def test_when_skips_a_step_whose_output_is_null_and_recorded_as_skipped(runner: Runner) -> None:
    doc = {
        "steps": [
            echo("n", 5),
            echo("big", "yes", when="${{ steps.n.output > 3 and inputs.mode != 'dry' }}"),
            echo("small", "no", when="${{ steps.n.output <= 3 }}"),
            echo("after", "${{ prev.output }}"),
        ],
        "outputs": {
            "big": "${{ steps.big.output }}",
            "small": "${{ steps.small.output }}",
            "prev": "${{ steps.after.output }}",
        },
    }
    journal = MemoryJournal()
    assert await runner.run(doc, journal, inputs={"mode": "live"}) == {
        "big": "yes",
        "small": None,
        "prev": None,
    }
    assert journal.status("small") == "skipped" and journal.states["small"]["output"] is None
    assert ("started", "small") not in journal.events
    assert runner.ops.calls["echo:small"] == 0

    # A resumed run does not evaluate a skipped step again.
    resumed = MemoryJournal({k: v for k, v in journal.states.items() if k != "after"})
    assert (await runner.run(doc, resumed, inputs={"mode": "dry"}))["small"] is None
    assert resumed.events == [("started", "after"), ("succeeded", "after")]


async def test_a_bad_when_fails_the_task_naming_the_step_and_field(runner: Runner) -> None:
    doc = {"steps": [echo("a", "text"), echo("b", 1, when="${{ steps.a.output > 3 }}")]}
    with pytest.raises(StepFailed) as err:
        await runner.run(doc)
    record = err.value.record()
    assert record["step_id"] == "b" and record["code"] == "invalid_input"
    assert (
        "step 'b' (steps[1], echo): steps[1].when: ${{ steps.a.output > 3 }}: cannot order a string and a number"
        in record["message"]
    )


async def test_a_retry_policy_retries_in_process_with_backoff(runner: Runner) -> None:
    backoff = {"initial_s": 0.001, "max_s": 0.002}
    doc = {
        "steps": [
            {
                "id": "f",
                "type": "flaky",
                "params": {"key": "f", "fail": 2},
                "retry": {"attempts": 3, "backoff": backoff},
            }
        ]
    }
    journal = MemoryJournal()
    assert await runner.run(doc, journal) == {"key": "f", "calls": 3}
    assert journal.events == [("started", "f"), ("succeeded", "f")]

    # Out of attempts: the step fails with the last error, its tries counted; the error stays retryable,
    # so the task-level retry (a redelivery) can still try again later.
    doc["steps"][0]["params"] = {"key": "g", "fail": 5}
    failed = MemoryJournal()
    with pytest.raises(StepFailed) as err:
        await runner.run(doc, failed)
    assert err.value.retryable and runner.ops.calls["g"] == 3
    assert failed.states["f"]["error"]["tries"] == 3


async def test_retry_applies_only_to_the_codes_it_names(runner: Runner) -> None:
    missing = {"code": "not_found", "message": "no such thing", "retryable": False}
    step: dict[str, Any] = {"id": "f", "type": "flaky", "params": {"key": "nf", "fail": 1, "error": missing}}
    # By default only retryable errors are retried.
    with pytest.raises(StepFailed):
        await runner.run({"steps": [{**step, "retry": {"attempts": 3, "backoff": {"initial_s": 0.001}}}]})
    assert runner.ops.calls["nf"] == 1
    # Named codes are retried whatever their class says; others are not.
    policy = {"attempts": 2, "backoff": {"initial_s": 0.001}, "on": ["not_found"]}
    assert (await runner.run({"steps": [{**step, "retry": policy}]}))["calls"] == 2
    step["params"] = {"key": "u", "fail": 1}
    with pytest.raises(StepFailed):
        await runner.run({"steps": [{**step, "retry": policy}]})
    assert runner.ops.calls["u"] == 1


async def test_a_step_timeout_fails_the_step_as_a_retryable_timeout(runner: Runner) -> None:
    doc = {"steps": [{"id": "slow", "type": "sleep", "params": {"seconds": 30}, "timeout": 0.05}]}
    with pytest.raises(StepFailed) as err:
        await runner.run(doc)
    assert err.value.error.code == "timeout" and err.value.retryable
    assert "did not finish within its timeout of 0.05 s" in err.value.error.message


async def test_catch_steps_run_on_failure_and_see_the_error(runner: Runner) -> None:
    bad = {"code": "permission_denied", "message": "no", "retryable": False}
    doc = {
        "steps": [
            {
                "id": "risky",
                "type": "flaky",
                "params": {"key": "r", "fail": 1, "error": bad},
                "catch": [echo("fallback", {"code": "${{ error.code }}", "step": "${{ error.step_id }}"})],
            },
            echo("next", "${{ steps.risky.output }}"),
        ]
    }
    journal = MemoryJournal()
    assert await runner.run(doc, journal) == {"code": "permission_denied", "step": "risky"}
    assert journal.status("risky") == "recovered"
    assert journal.states["risky"]["error"]["code"] == "permission_denied"
    assert journal.events == [
        ("started", "risky"),
        ("failed", "risky"),
        ("started", "fallback"),
        ("succeeded", "fallback"),
        ("recovered", "risky"),
        ("started", "next"),
        ("succeeded", "next"),
    ]


async def test_a_failing_catch_fails_the_task_and_continue_on_error_goes_on(runner: Runner) -> None:
    failing = {"id": "f", "type": "flaky", "params": {"key": "k", "fail": 9}}
    with pytest.raises(StepFailed) as err:
        await runner.run(
            {
                "steps": [
                    {
                        **failing,
                        "catch": [{"id": "again", "type": "flaky", "params": {"key": "k", "fail": 9}}],
                    }
                ]
            }
        )
    assert err.value.step.id == "again"

    journal = MemoryJournal()
    doc = {"steps": [{**failing, "continue_on_error": True}, echo("after", "${{ prev.output.error.code }}")]}
    assert await runner.run(doc, journal) == "unavailable"
    assert journal.status("f") == "recovered"


async def test_cancellation_stops_between_steps(runner: Runner) -> None:
    doc = {"steps": [echo("a", 1), echo("b", 2), echo("c", 3)]}
    journal = MemoryJournal(cancel_after=2)
    with pytest.raises(WorkflowCancelled) as err:
        await runner.run(doc, journal)
    assert err.value.next_step.id == "c"
    assert runner.ops.calls["echo:c"] == 0
