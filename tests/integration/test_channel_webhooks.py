"""Chat webhooks end to end over loopback HTTP: signed platform requests in, replies out to fake platform APIs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from redis.asyncio import Redis
from starlette.applications import Starlette

from services.common.errors import InvalidInputError
from services.gateway.channels_api import ChannelRoutes
from services.gateway.channels_config import parse
from services.gateway.conversations import ConversationService
from tests.integration.test_conversations import Model
from tests.unit.test_channels import DISCORD_COMMAND, SLACK_EVENT

pytestmark = pytest.mark.integration
SIGNING = "slack-signing-secret"
DISCORD_KEY = Ed25519PrivateKey.generate()


class FakePlatforms:
    """Slack's chat.postMessage and Discord's follow-up webhook, recording what they receive."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.url = ""

    async def record(self, request: web.Request) -> web.Response:
        self.calls.append((request.path, dict(request.headers), await request.json()))
        return web.json_response({"ok": True})


@pytest.fixture
async def platforms() -> AsyncIterator[FakePlatforms]:
    fake = FakePlatforms()
    app = web.Application()
    app.router.add_post("/api/chat.postMessage", fake.record)
    app.router.add_post("/webhooks/{app}/{token}", fake.record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


async def serve(routes: ChannelRoutes) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    config = uvicorn.Config(Starlette(routes=routes.routes()), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn exposes no started event; poll its flag (bounded)
        if server.started:
            break
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"


@pytest.fixture
async def gateways(
    redis: Redis, namespace: str, redis_url: str, platforms: FakePlatforms
) -> AsyncIterator[list[str]]:
    """Two gateway replicas (own Redis clients, own servers) configured with the same channels."""
    setup = parse(
        {
            "channels": [
                {
                    "name": "slack-main",
                    "kind": "slack",
                    "tenant": "acme",
                    "api_base": platforms.url,
                    "bot_user_id": "BOT",
                    "secrets": {"signing_secret": "${SIGNING}", "bot_token": "xoxb-1"},
                },
                {
                    "name": "discord-main",
                    "kind": "discord",
                    "tenant": "acme",
                    "api_base": platforms.url,
                    "account": "775799577604522054",
                    "secrets": {
                        "public_key": DISCORD_KEY.public_key()
                        .public_bytes(Encoding.Raw, PublicFormat.Raw)
                        .hex()
                    },
                },
            ],
            "agents": [{"name": "helper", "model": "echo", "channels": ["slack-main", "discord-main"]}],
        },
        {"SIGNING": SIGNING},
    )
    started, urls, services, clients = [], [], [], []
    for _ in range(2):
        client = Redis.from_url(redis_url, decode_responses=True)
        clients.append(client)
        conversations = ConversationService(client, namespace, Model(), setup.agents)
        services.append(conversations)
        routes = ChannelRoutes(setup.channels, conversations)
        server, task, url = await serve(routes)
        started.append((server, task, routes))
        urls.append(url)
    yield urls
    for conversations in services:
        await conversations.idle()
    for server, task, routes in started:
        server.should_exit = True
        await task
        await routes.close()
    for client in clients:
        await client.aclose()


def slack_request(doc: dict[str, Any], secret: str = SIGNING) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(doc).encode()
    ts = str(int(time.time()))
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return body, {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": sig,
        "Content-Type": "application/json",
    }


async def wait_for_calls(platforms: FakePlatforms, n: int) -> None:
    for _ in range(300):
        if len(platforms.calls) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {n} platform calls, got {platforms.calls}")


async def test_a_slack_mention_is_answered_through_chat_post_message(
    gateways: list[str], platforms: FakePlatforms
) -> None:
    body, headers = slack_request(SLACK_EVENT)
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gateways[0]}/v1/channels/slack-main/events", content=body, headers=headers
        )
    assert response.status_code == 200
    await wait_for_calls(platforms, 1)
    path, sent_headers, sent = platforms.calls[0]
    assert path == "/api/chat.postMessage" and sent_headers["Authorization"] == "Bearer xoxb-1"
    assert sent == {
        "channel": "C0LAN2Q65",
        "text": "echo: <@BOT> summarise the incident",
        "thread_ts": "1515449522.000016",
    }


async def test_a_retried_event_hitting_both_replicas_is_answered_once(
    gateways: list[str], platforms: FakePlatforms
) -> None:
    body, headers = slack_request(SLACK_EVENT)
    async with httpx.AsyncClient() as client:
        answers = await asyncio.gather(
            *(
                client.post(f"{url}/v1/channels/slack-main/events", content=body, headers=headers)
                for url in gateways * 2
            )
        )
    assert all(a.status_code == 200 for a in answers)
    await wait_for_calls(platforms, 1)
    await asyncio.sleep(0.2)
    assert len(platforms.calls) == 1


async def test_a_forged_webhook_is_refused_and_never_answered(
    gateways: list[str], platforms: FakePlatforms
) -> None:
    body, headers = slack_request(SLACK_EVENT, secret="not-the-secret")
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gateways[0]}/v1/channels/slack-main/events", content=body, headers=headers
        )
        unknown = await client.post(f"{gateways[0]}/v1/channels/nope/events", content=b"{}")
        challenge_body, challenge_headers = slack_request({"type": "url_verification", "challenge": "c-42"})
        challenge = await client.post(
            f"{gateways[0]}/v1/channels/slack-main/events", content=challenge_body, headers=challenge_headers
        )
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_signature"
    assert unknown.status_code == 404
    assert challenge.json() == {"challenge": "c-42"}
    await asyncio.sleep(0.2)
    assert platforms.calls == []


async def test_a_discord_command_gets_a_deferred_answer_and_a_follow_up(
    gateways: list[str], platforms: FakePlatforms
) -> None:
    body = json.dumps(DISCORD_COMMAND).encode()
    ts = str(int(time.time()))
    headers = {"X-Signature-Ed25519": DISCORD_KEY.sign(ts.encode() + body).hex(), "X-Signature-Timestamp": ts}
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gateways[1]}/v1/channels/discord-main/events", content=body, headers=headers
        )
        bad = await client.post(
            f"{gateways[1]}/v1/channels/discord-main/events",
            content=body,
            headers={**headers, "X-Signature-Ed25519": "00" * 64},
        )
    assert response.json() == {"type": 5} and bad.status_code == 401
    await wait_for_calls(platforms, 1)
    path, _, sent = platforms.calls[0]
    assert path == "/webhooks/775799577604522054/A_UNIQUE_TOKEN" and sent == {
        "content": "echo: status of build 42?"
    }


def test_configuration_problems_name_their_place() -> None:
    with pytest.raises(
        InvalidInputError, match=r"channels\[0\]\.secrets\.signing_secret: environment variable X"
    ):
        parse(
            {
                "channels": [
                    {"name": "s", "kind": "slack", "tenant": "acme", "secrets": {"signing_secret": "${X}"}}
                ]
            },
            {},
        )
    with pytest.raises(InvalidInputError, match=r"channels\[0\]\.kind: 'icq' is not one of"):
        parse({"channels": [{"name": "s", "kind": "icq", "tenant": "acme"}]}, {})
    with pytest.raises(InvalidInputError, match=r"agents\[0\]\.channels: unknown channel"):
        parse({"agents": [{"name": "a", "model": "m", "channels": ["ghost"]}]}, {})


def test_a_schedule_delivers_only_to_a_channel_of_its_own_tenant() -> None:
    channel = {"name": "c", "kind": "webhook", "tenant": "acme", "secrets": {"secret": "s"}}
    schedule = {
        "id": "s",
        "tenant": "globex",
        "every_s": 60,
        "template": "t",
        "deliver_to": {"channel": "c", "conversation": "x"},
    }
    with pytest.raises(InvalidInputError, match=r"deliver_to\.channel: 'c' belongs to another tenant"):
        parse({"channels": [channel], "schedules": [schedule]}, {})
    with pytest.raises(InvalidInputError, match="unknown channel 'nope'"):
        parse({"schedules": [{**schedule, "deliver_to": {"channel": "nope", "conversation": "x"}}]}, {})
