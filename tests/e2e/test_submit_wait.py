"""POST /v1/tasks?wait=N: submit and wait in one request, against the real processes."""

from __future__ import annotations

import aiohttp
import pytest

from openclaw.launcher import LocalStack

pytestmark = pytest.mark.e2e
WORKFLOW = {"name": "sum", "steps": [{"type": "math_sum", "params": {"items": [1, 2, 3.5]}}]}


async def test_submit_with_wait_returns_the_ended_task(stack: LocalStack, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(stack.config.gateway_url, headers=headers) as http:
        async with http.post("/v1/tasks", params={"wait": "20"}, json={"workflow": WORKFLOW}) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
            assert response.headers["Location"] == f"/v1/tasks/{body['id']}"
        assert body["status"] == "succeeded" and body["result"] == 6.5
        # Without wait, the same submit answers at once with the queued task, as before.
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}) as response:
            assert response.status == 202 and (await response.json())["status"] == "queued"
        bad = {"workflow": {**WORKFLOW, "name": "never-created"}}
        async with http.post("/v1/tasks", params={"wait": "forever"}, json=bad) as response:
            assert response.status == 400  # refused before anything is created or queued
