"""Conversations over real HTTP to a fake platform: answered once across replicas, in order, with memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from openclaw.v1 import chat_pb2, router_pb2
from services.gateway.channels import KINDS, ChannelConfig
from services.gateway.channels.base import Channel
from services.gateway.conversations import AgentConfig, ConversationService, TurnResult

pytestmark = pytest.mark.integration


class Platform:
    """A fake Telegram Bot API: records every sendMessage it receives."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.url = ""

    async def send_message(self, request: web.Request) -> web.Response:
        assert request.match_info["token"] == "bot123:ABC"
        self.sent.append(await request.json())
        return web.json_response({"ok": True, "result": {"message_id": len(self.sent)}})


@pytest.fixture
async def platform() -> AsyncIterator[Platform]:
    fake = Platform()
    app = web.Application()
    app.router.add_post("/{token}/sendMessage", fake.send_message)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


class Model:
    """Stands in for the router: answers 'echo: <user text>' after a delay per conversation, recording requests."""

    def __init__(self, delays: dict[str, float] | None = None) -> None:
        self.requests: list[router_pb2.ChatRequest] = []
        self.delays = delays or {}

    async def chat(self, request: router_pb2.ChatRequest) -> router_pb2.ChatResponse:
        self.requests.append(request)
        user = request.messages[-1].content
        if request.priority == "batch":
            return router_pb2.ChatResponse(
                message=router_pb2.ChatMessage(role="assistant", content="SUMMARY")
            )
        await asyncio.sleep(self.delays.get(user.split(":")[0], 0.0))
        return router_pb2.ChatResponse(
            message=router_pb2.ChatMessage(role="assistant", content=f"echo: {user}")
        )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def telegram(platform: Platform, session: aiohttp.ClientSession, **kw: Any) -> Channel:
    async def post(url: str, headers: Any, body: Any) -> Any:
        async with session.post(url, json=body, headers=dict(headers)) as response:
            return await response.json()

    config = ChannelConfig(
        name="tg",
        kind="telegram",
        tenant="acme",
        api_base=platform.url,
        secrets={"secret_token": "s", "bot_token": "123:ABC"},
        bot_user_id="openclaw_bot",
        **kw,
    )
    return KINDS["telegram"](config, post)


def message(
    chat: str, n: int, text: str, *, sender: str = "7", group: bool = False, mention: bool = False
) -> chat_pb2.ChannelMessage:
    msg = chat_pb2.ChannelMessage(
        channel="tg",
        tenant="acme",
        conversation=chat,
        message_id=f"{chat}:{n}",
        sender_id=sender,
        text=text,
        reply_to=f"{chat}:{n}",
        is_group=group,
    )
    if mention:
        msg.mentions.add(name="openclaw_bot", is_bot=True)
    return msg


AGENT = AgentConfig(name="helper", model="echo", system_prompt="Be brief.", channels=("tg",))


async def test_the_same_message_on_two_replicas_is_answered_once(
    redis: Redis, namespace: str, redis_url: str, platform: Platform, session: aiohttp.ClientSession
) -> None:
    other = Redis.from_url(redis_url, decode_responses=True)
    try:
        a = ConversationService(redis, namespace, Model(), {"helper": AGENT})
        b = ConversationService(other, namespace, Model(), {"helper": AGENT})
        ch = telegram(platform, session)
        outcomes = await asyncio.gather(
            a.receive(ch, message("100", 1, "hi")), b.receive(ch, message("100", 1, "hi"))
        )
        assert sorted(o.status for o in outcomes) == ["duplicate", "queued"]
        await a.idle()
        await b.idle()
        assert [s["text"] for s in platform.sent] == ["echo: hi"]
        assert platform.sent[0]["chat_id"] == "100" and platform.sent[0]["reply_parameters"] == {
            "message_id": 1
        }
    finally:
        await other.aclose()


async def test_one_conversation_is_answered_in_order_while_others_run_in_parallel(
    redis: Redis, namespace: str, platform: Platform, session: aiohttp.ClientSession
) -> None:
    turns: list[TurnResult] = []

    async def record(turn: TurnResult) -> None:
        turns.append(turn)

    model = Model(delays={"slow": 0.05})
    service = ConversationService(redis, namespace, model, {"helper": AGENT}, on_turn=record)
    ch = telegram(platform, session)
    for n in range(1, 5):
        await service.receive(ch, message("A", n, f"slow:{n}"))
    await service.receive(ch, message("B", 1, "fast"))
    await service.idle()
    a_replies = [s["text"] for s in platform.sent if s["chat_id"] == "A"]
    assert a_replies == [f"echo: slow:{n}" for n in range(1, 5)]  # in order, one at a time
    assert [t.conversation for t in turns].index("B") < 3  # B did not wait behind A's queue
    # Each turn of A saw the ones before it: the 4th request carries 3 earlier exchanges.
    fourth = next(r for r in model.requests if r.messages[-1].content == "slow:4")
    assert [m.content for m in fourth.messages if m.role == "assistant"] == [
        f"echo: slow:{n}" for n in range(1, 4)
    ]


async def test_merge_policy_folds_waiting_messages_into_one_turn(
    redis: Redis, namespace: str, platform: Platform, session: aiohttp.ClientSession
) -> None:
    turns: list[TurnResult] = []

    async def record(turn: TurnResult) -> None:
        turns.append(turn)

    agent = AgentConfig(name="m", model="echo", channels=("tg",), policy="merge")
    service = ConversationService(redis, namespace, Model(delays={"slow": 0.1}), {"m": agent}, on_turn=record)
    ch = telegram(platform, session)
    await service.receive(ch, message("C", 1, "slow: first"))
    await asyncio.sleep(0.02)  # the first turn is running
    for n in range(2, 5):
        await service.receive(ch, message("C", n, f"part {n}"))
    await service.idle()
    assert [t.merged for t in turns] == [1, 3]
    assert platform.sent[-1]["text"] == "echo: part 2\npart 3\npart 4"


async def test_groups_need_a_mention_and_strangers_get_a_pairing_code(
    redis: Redis, namespace: str, platform: Platform, session: aiohttp.ClientSession
) -> None:
    service = ConversationService(redis, namespace, Model(), {"helper": AGENT})
    ch = telegram(platform, session, allow_senders=("7",))
    assert (await service.receive(ch, message("G", 1, "chatter", group=True))).status == "ignored"
    assert (
        await service.receive(ch, message("G", 2, "@openclaw_bot hi", group=True, mention=True))
    ).status == "queued"
    stranger = await service.receive(ch, message("D", 1, "hello?", sender="999"))
    assert stranger.status == "pairing" and len(stranger.pairing_code) == 6
    assert str(stranger.pairing_code) in platform.sent[-1]["text"]
    assert await service.approve("tg", stranger.pairing_code) == "999"
    assert (await service.receive(ch, message("D", 2, "hello again", sender="999"))).status == "queued"
    await service.idle()
    assert [s["text"] for s in platform.sent if s["chat_id"] in ("G", "D")][-1] == "echo: hello again"


async def test_long_histories_are_compacted_into_a_summary(
    redis: Redis, namespace: str, platform: Platform, session: aiohttp.ClientSession
) -> None:
    agent = AgentConfig(name="h", model="echo", channels=("tg",), history_messages=4, compact_after=6)
    model = Model()
    service = ConversationService(redis, namespace, model, {"h": agent})
    ch = telegram(platform, session)
    for n in range(1, 5):
        await service.receive(ch, message("H", n, f"fact {n}"))
        await service.idle()
    history = await service.history("tg", "H")
    assert len(history) <= 6 and history[-1] == {"role": "assistant", "content": "echo: fact 4"}
    compaction = [r for r in model.requests if r.priority == "batch"]
    assert compaction and "fact 1" in compaction[0].messages[-1].content
    await service.receive(ch, message("H", 9, "what do you remember?"))
    await service.idle()
    after = model.requests[-1]
    assert after.messages[-1].content == "what do you remember?"
    assert "Summary of the conversation so far: SUMMARY" in [
        m.content for m in after.messages if m.role == "system"
    ]


async def test_history_summary_and_queued_messages_are_sealed_at_rest(
    redis: Redis, namespace: str, platform: Platform, session: aiohttp.ClientSession
) -> None:
    from services.common.encryption import Keyring, MasterKeys, Sealer

    sealer = Sealer(Keyring(redis, namespace, MasterKeys({"k": MasterKeys.generate()}, "k")))
    agent = AgentConfig(name="h", model="echo", channels=("tg",), history_messages=2, compact_after=3)
    service = ConversationService(redis, namespace, Model(), {"h": agent}, sealer=sealer)
    ch = telegram(platform, session)
    for n in range(1, 4):
        await service.receive(ch, message("S", n, f"my account number is 99-{n}"))
        await service.idle()
    assert platform.sent[-1]["text"] == "echo: my account number is 99-3"  # the conversation still works
    stored = ""
    for key in await redis.keys(f"{namespace}:conv:*"):
        kind = await redis.type(key)
        stored += str(await redis.lrange(key, 0, -1) if kind == "list" else await redis.get(key))
    assert "account number" not in stored and "SUMMARY" not in stored and "enc:v1:" in stored
    history = await service.history("tg", "S", tenant="acme")
    assert history[-1] == {"role": "assistant", "content": "echo: my account number is 99-3"}
