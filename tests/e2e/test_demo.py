"""`openclaw demo` against the running stack: varied traffic, every kind of outcome it is meant to produce."""

from __future__ import annotations

import pytest

from openclaw import demo
from openclaw.launcher import LocalStack

pytestmark = pytest.mark.e2e


async def test_demo_traffic_produces_successes_a_deliberate_failure_and_chats(
    stack: LocalStack, token: str
) -> None:
    outcomes = await demo.run(stack.config.gateway_url, token, seconds=4, rate=3)
    assert outcomes["succeeded"] >= 3, outcomes
    assert outcomes["failed"] >= 1, outcomes  # the workflow that parses broken JSON on purpose
    assert outcomes["chat ok"] >= 3, outcomes
    assert not [k for k in outcomes if k.startswith(("error", "rejected", "chat 5"))], outcomes
