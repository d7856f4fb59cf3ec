"""Replies of the Feishu/Lark and OneBot adapters reach fake platform APIs over loopback in the platforms' shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from openclaw.v1 import chat_pb2
from services.gateway.channels import KINDS, ChannelConfig

pytestmark = pytest.mark.integration


class Fake:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append((request.path, dict(request.headers), body))
        if request.path.endswith("tenant_access_token/internal"):
            return web.json_response({"code": 0, "tenant_access_token": "t-abc", "expire": 7200})
        if request.path == "/send_msg":
            return web.json_response({"status": "ok", "retcode": 0, "data": {"message_id": 1}})
        return web.json_response({"code": 0, "msg": "success"})


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    server = Fake()
    app = web.Application()
    app.router.add_post("/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


async def poster(session: aiohttp.ClientSession) -> Any:
    async def post(url: str, headers: Any, body: Any) -> Any:
        async with session.post(url, json=body, headers=dict(headers)) as response:
            return await response.json()

    return post


async def test_feishu_gets_a_tenant_token_once_and_replies_to_the_message(fake: Fake) -> None:
    config = ChannelConfig(
        name="lark", kind="feishu", tenant="acme", api_base=fake.url,
        secrets={"app_id": "cli_a", "app_secret": "sec", "encrypt_key": "k", "verification_token": "v"},
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        channel = KINDS["feishu"](config, await poster(session))
        for text in ("第一", "second"):
            await channel.send(chat_pb2.ChannelReply(conversation="oc_1", reply_to="om_42", text=text))
    paths = [path for path, _, _ in fake.calls]
    assert paths == [
        "/open-apis/auth/v3/tenant_access_token/internal",
        "/open-apis/im/v1/messages/om_42/reply",
        "/open-apis/im/v1/messages/om_42/reply",
    ]  # the token is reused until shortly before it expires
    assert fake.calls[0][2] == {"app_id": "cli_a", "app_secret": "sec"}
    _, headers, body = fake.calls[1]
    assert headers["Authorization"] == "Bearer t-abc"
    assert body["msg_type"] == "text" and json.loads(body["content"]) == {"text": "第一"}


async def test_onebot_sends_group_and_private_messages_with_its_access_token(fake: Fake) -> None:
    config = ChannelConfig(
        name="qq",
        kind="onebot",
        tenant="acme",
        api_base=fake.url,
        secrets={"secret": "s", "access_token": "tok"},
    )
    async with aiohttp.ClientSession() as session:
        channel = KINDS["onebot"](config, await poster(session))
        await channel.send(chat_pb2.ChannelReply(conversation="group:5566", text="今天的报表已生成"))
        await channel.send(chat_pb2.ChannelReply(conversation="private:7788", text="hi"))
    (_, h1, group), (_, _, private) = fake.calls
    assert h1["Authorization"] == "Bearer tok"
    assert group == {
        "message_type": "group",
        "group_id": 5566,
        "message": "今天的报表已生成",
        "auto_escape": True,
    }
    assert private == {"message_type": "private", "user_id": 7788, "message": "hi", "auto_escape": True}
