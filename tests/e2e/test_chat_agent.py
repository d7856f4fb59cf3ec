"""A chat message reaches an agent with tools: the gateway runs the turn as an agent task on the executor, the model
(the simulator, scripted) calls a real operation, and the answer goes back through the channel."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from openclaw.launcher import LocalStack
from services.gateway.channels.webhook import sign
from tests.e2e.chat import WEBHOOK_SECRET, ChatCallback

pytestmark = pytest.mark.e2e


async def test_a_channel_agent_answers_with_a_tool_result(
    stack: LocalStack, chat_callback: ChatCallback
) -> None:
    body = json.dumps(
        {"conversation": "room-1", "message_id": "msg-1", "text": "what is six times seven?"}
    ).encode()
    headers = {
        "X-OpenClaw-Signature": sign(WEBHOOK_SECRET, body, int(time.time())),
        "Content-Type": "application/json",
    }
    async with aiohttp.ClientSession() as http:
        url = f"{stack.config.gateway_url}/v1/channels/ops-hook/events"
        async with http.post(url, data=body, headers=headers) as response:
            assert response.status == 202, await response.text()
    for _ in range(600):
        if any(r["conversation"] == "room-1" for r in chat_callback.replies):
            break
        await asyncio.sleep(0.05)
    (reply,) = [r for r in chat_callback.replies if r["conversation"] == "room-1"]
    assert reply["conversation"] == "room-1" and reply["reply_to"] == "msg-1"
    assert "42" in reply["text"], reply  # math_evaluate really ran: the echo model repeats the tool's result


async def test_a_schedule_delivers_its_result_to_a_channel(
    stack: LocalStack, chat_callback: ChatCallback
) -> None:
    for _ in range(400):
        if any(r["conversation"] == "reports" for r in chat_callback.replies):
            break
        await asyncio.sleep(0.05)
    reports = [r for r in chat_callback.replies if r["conversation"] == "reports"]
    assert (
        reports and reports[0]["text"] == "3"
    )  # math_sum of [1, 2], run by the executor, posted to the channel
