"""The fuller DSL through the real worker on RabbitMQ and Redis: resumes of foreach, parallel and called
workflows after a failed delivery, step retries, conditions and catch.

Faults come from a loopback HTTP server that answers 503 (retryable) a chosen number of times per path,
and counts every request, so "not run again" is a count, not a guess.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.integration import test_executor as base

pytestmark = pytest.mark.integration

harness = base.harness
Harness = base.Harness


class Items:
    """GET /item/<name>: 503 for the first ``failures[name]`` requests, then {"name": ..., "hit": n}."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.failures: dict[str, int] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits[name] += 1
        if self.hits[name] <= self.failures.get(name, 0):
            return web.json_response({"error": "try later"}, status=503)
        return web.json_response({"name": name, "hit": self.hits[name]})

    def get(self, step_id: str, name: str, **extra: Any) -> dict[str, Any]:
        return {"id": step_id, "type": "http_request", "params": {"url": f"{self.url}/item/{name}"}, **extra}


@pytest.fixture
async def items() -> AsyncIterator[Items]:
    server = Items()
    app = web.Application()
    app.router.add_get("/item/{name}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


async def test_a_redelivered_foreach_runs_only_the_unfinished_items(harness: Harness, items: Items) -> None:
    await harness.start()
    items.failures = {"c": 1}
    workflow = {
        "steps": [
            {
                "id": "each",
                "type": "foreach",
                "items": ["a", "b", "c", "d"],
                "steps": [items.get("get", "${{ item }}")],
            }
        ],
        "outputs": {"names": "${{ steps.each.output }}"},
    }
    task_id = await harness.submit(workflow, max_attempts=3)
    record = await harness.wait(task_id, within=30)

    assert record.status == "succeeded", record.error
    assert record.attempt == 2
    assert [r["body"]["name"] for r in record.result["names"]] == ["a", "b", "c", "d"]
    # a and b finished in the first delivery and were not requested again; c failed once; d ran once.
    assert dict(items.hits) == {"a": 1, "b": 1, "c": 2, "d": 1}
    assert {k: s["attempt"] for k, s in record.steps.items() if k.startswith("each[")} == {
        "each[0].get": 1,
        "each[1].get": 1,
        "each[2].get": 2,
        "each[3].get": 2,
    }
    assert [t for t, _ in await harness.events(task_id)].count("task.retrying") == 1


async def test_parallel_branches_and_called_workflows_resume_where_they_stopped(
    harness: Harness, items: Items
) -> None:
    await harness.start()
    items.failures = {"R": 1, "S2": 1}
    workflow = {
        "steps": [
            {
                "id": "fan",
                "type": "parallel",
                "branches": [[items.get("left", "L")], [items.get("right", "R")]],
            },
            {
                "id": "call",
                "type": "workflow",
                "workflow": {"steps": [items.get("s1", "S1"), items.get("s2", "S2")]},
            },
            {
                "id": "join",
                "type": "json_transform",
                "params": {
                    "expression": "[left.body.name, right.body.hit, called.body.name]",
                    "input": {
                        "left": "${{ steps.left.output }}",
                        "right": "${{ steps.right.output }}",
                        "called": "${{ steps.call.output }}",
                    },
                },
            },
        ]
    }
    task_id = await harness.submit(workflow, max_attempts=3)
    record = await harness.wait(task_id, within=30)

    assert record.status == "succeeded", record.error
    assert record.attempt == 3  # R failed in the first delivery, S2 in the second
    assert record.result == ["L", 2, "S2"]
    assert dict(items.hits) == {"L": 1, "R": 2, "S1": 1, "S2": 2}
    assert record.steps["call.s1"]["attempt"] == 2 and record.steps["call.s2"]["attempt"] == 3
    assert record.steps["left"]["attempt"] == 1


async def test_step_retries_conditions_and_catch_in_one_delivery(harness: Harness, items: Items) -> None:
    await harness.start()
    items.failures = {"T": 2, "X": 99}
    workflow = {
        "steps": [
            items.get("flaky", "T", retry={"attempts": 3, "backoff": {"initial_s": 0.01, "max_s": 0.02}}),
            items.get("never", "N", when="${{ steps.flaky.output.body.hit < 3 }}"),
            items.get(
                "broken",
                "X",
                catch=[
                    {
                        "id": "fallback",
                        "type": "json_transform",
                        "params": {"expression": "code", "input": "${{ error }}"},
                    }
                ],
            ),
        ],
        "outputs": {
            "hit": "${{ steps.flaky.output.body.hit }}",
            "never": "${{ steps.never.output }}",
            "broken": "${{ steps.broken.output }}",
        },
    }
    task_id = await harness.submit(workflow, max_attempts=1)
    record = await harness.wait(task_id, within=30)

    assert record.status == "succeeded", record.error
    assert record.attempt == 1
    assert record.result == {"hit": 3, "never": None, "broken": "unavailable"}
    assert items.hits["N"] == 0 and items.hits["X"] == 1
    assert record.steps["never"]["status"] == "skipped"
    assert record.steps["broken"]["status"] == "recovered"
    assert record.steps["broken"]["error"]["code"] == "unavailable"
    events = await harness.events(task_id)
    assert ("step.skipped", "never") in events and ("step.recovered", "broken") in events
    assert ("step.started", "never") not in events
