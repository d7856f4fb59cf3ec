"""Chat adapters on recorded payload shapes: valid signatures pass, forged ones never reach parsing."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.gateway.channels import KINDS, ChannelConfig, SignatureError
from services.gateway.channels.base import Channel
from services.gateway.channels.webhook import sign

NOW = 1_764_000_000.0
DISCORD_KEY = Ed25519PrivateKey.generate()
DISCORD_PUBLIC = DISCORD_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
SECRETS = {
    "slack": {"signing_secret": "8f742231b10e8888abcd99yyyzzz85a5", "bot_token": "xoxb-1"},
    "telegram": {"secret_token": "tg-secret-123", "bot_token": "123:ABC"},
    "discord": {"public_key": DISCORD_PUBLIC},
    "feishu": {
        "encrypt_key": "fs-key",
        "verification_token": "fs-verify",
        "app_id": "cli_a",
        "app_secret": "s",
    },
    "onebot": {"secret": "ob-secret"},
    "webhook": {"secret": "wh-secret"},
}


async def no_post(url: str, headers: Any, body: Any) -> Any:
    raise AssertionError("parsing must not call the platform")


def channel(kind: str, **kw: Any) -> Channel:
    config = ChannelConfig(
        name=f"{kind}-main", kind=kind, tenant="acme", secrets=SECRETS[kind], bot_user_id="BOT", **kw
    )
    return KINDS[kind](config, no_post, clock=lambda: NOW)


def body_of(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# -- signed requests, one per platform ------------------------------------------------------------------------

SLACK_EVENT = {
    "token": "x",
    "team_id": "T061EG9R6",
    "api_app_id": "A0PNCHHK2",
    "event": {
        "type": "app_mention",
        "user": "U061F7AUR",
        "text": "<@BOT> summarise the incident",
        "ts": "1515449522.000016",
        "channel": "C0LAN2Q65",
        "channel_type": "channel",
        "event_ts": "1515449522000016",
    },
    "type": "event_callback",
    "event_id": "Ev0LAN670R",
    "event_time": 1515449522,
}


def slack_headers(
    body: bytes, ts: float = NOW, secret: str = SECRETS["slack"]["signing_secret"]
) -> dict[str, str]:
    base = f"v0:{int(ts)}:".encode() + body
    return {
        "x-slack-request-timestamp": str(int(ts)),
        "x-slack-signature": "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest(),
    }


def test_slack_event_is_verified_and_normalized() -> None:
    ch, raw = channel("slack"), body_of(SLACK_EVENT)
    ch.verify(slack_headers(raw), raw)
    (msg,) = ch.parse(raw).messages
    assert (msg.channel, msg.tenant, msg.account) == ("slack-main", "acme", "T061EG9R6")
    assert (msg.conversation, msg.message_id, msg.sender_id) == ("C0LAN2Q65", "Ev0LAN670R", "U061F7AUR")
    assert msg.is_group and [m.user_id for m in msg.mentions if m.is_bot] == ["BOT"]


@pytest.mark.parametrize(
    "forge",
    [
        lambda raw: (slack_headers(raw, secret="wrong"), raw),
        lambda raw: (slack_headers(raw), raw.replace(b"summarise", b"delete all")),
        lambda raw: (slack_headers(raw, ts=NOW - 600), raw),  # a replay from ten minutes ago
        lambda raw: ({}, raw),
    ],
)
def test_slack_forgeries_are_refused(forge: Any) -> None:
    headers, raw = forge(body_of(SLACK_EVENT))
    with pytest.raises(SignatureError):
        channel("slack").verify(headers, raw)


def test_slack_url_verification_and_own_messages() -> None:
    ch = channel("slack")
    assert ch.parse(body_of({"type": "url_verification", "challenge": "3eZb"})).body == {"challenge": "3eZb"}
    bot_echo = {**SLACK_EVENT, "event": {**SLACK_EVENT["event"], "type": "message", "bot_id": "B1"}}
    assert ch.parse(body_of(bot_echo)).messages == []  # never answer ourselves


TELEGRAM_UPDATE = {
    "update_id": 10000,
    "message": {
        "message_id": 1365,
        "from": {"id": 1111111, "is_bot": False, "first_name": "Ada", "username": "ada"},
        "chat": {"id": -1001234, "title": "Ops", "type": "supergroup"},
        "date": 1441645532,
        "text": "@BOT what failed last night?",
        "entities": [{"offset": 0, "length": 4, "type": "mention"}],
    },
}


def test_telegram_secret_token_and_update() -> None:
    ch, raw = channel("telegram"), body_of(TELEGRAM_UPDATE)
    ch.verify({"x-telegram-bot-api-secret-token": "tg-secret-123"}, raw)
    with pytest.raises(SignatureError):
        ch.verify({"x-telegram-bot-api-secret-token": "guess"}, raw)
    (msg,) = ch.parse(raw).messages
    assert (msg.conversation, msg.message_id, msg.sender_name) == ("-1001234", "-1001234:1365", "ada")
    assert msg.is_group and msg.mentions[0].is_bot


def discord_headers(body: bytes, key: Ed25519PrivateKey = DISCORD_KEY) -> dict[str, str]:
    ts = str(int(NOW))
    return {"x-signature-ed25519": key.sign(ts.encode() + body).hex(), "x-signature-timestamp": ts}


DISCORD_COMMAND = {
    "type": 2,
    "id": "786008729715212338",
    "application_id": "775799577604522054",
    "token": "A_UNIQUE_TOKEN",
    "guild_id": "290926798626357999",
    "channel_id": "645027906669510667",
    "member": {"user": {"id": "53908232506183680", "username": "mason"}},
    "data": {"name": "ask", "options": [{"name": "prompt", "type": 3, "value": "status of build 42?"}]},
}


def test_discord_ping_command_and_bad_signature() -> None:
    ch = channel("discord")
    ping = body_of({"type": 1, "id": "1", "application_id": "2", "token": "t"})
    ch.verify(discord_headers(ping), ping)
    assert ch.parse(ping).body == {"type": 1}
    raw = body_of(DISCORD_COMMAND)
    ch.verify(discord_headers(raw), raw)
    inbound = ch.parse(raw)
    (msg,) = inbound.messages
    assert inbound.body == {"type": 5} and msg.text == "status of build 42?"
    assert msg.context["interaction_token"] == "A_UNIQUE_TOKEN" and msg.mentions[0].is_bot
    with pytest.raises(SignatureError, match="Ed25519"):
        ch.verify(discord_headers(raw, Ed25519PrivateKey.generate()), raw)


FEISHU_EVENT = {
    "schema": "2.0",
    "header": {
        "event_id": "5e3702a8",
        "event_type": "im.message.receive_v1",
        "token": "fs-verify",
        "app_id": "cli_a",
    },
    "event": {
        "sender": {"sender_id": {"open_id": "ou_84aad35d"}, "sender_type": "user"},
        "message": {
            "message_id": "om_5ce6d572455d361153b7cb51da133945",
            "chat_id": "oc_5ce6d572455d361153b7xx51da133945",
            "chat_type": "group",
            "message_type": "text",
            "content": json.dumps({"text": "@_user_1 hello"}),
            "mentions": [{"key": "@_user_1", "id": {"open_id": "BOT"}, "name": "OpenClaw"}],
        },
    },
}


def feishu_headers(body: bytes, key: str = "fs-key") -> dict[str, str]:
    ts, nonce = str(int(NOW)), "13462"
    return {
        "x-lark-request-timestamp": ts,
        "x-lark-request-nonce": nonce,
        "x-lark-signature": hashlib.sha256((ts + nonce + key).encode() + body).hexdigest(),
    }


def test_feishu_signed_event_and_url_verification() -> None:
    ch, raw = channel("feishu"), body_of(FEISHU_EVENT)
    ch.verify(feishu_headers(raw), raw)
    (msg,) = ch.parse(raw).messages
    assert msg.text == "@_user_1 hello" and msg.is_group and msg.mentions[0].is_bot
    with pytest.raises(SignatureError):
        ch.verify(feishu_headers(raw, key="other"), raw)
    challenge = body_of({"challenge": "ajls384kdjx98XX", "token": "fs-verify", "type": "url_verification"})
    ch.verify({}, challenge)
    assert ch.parse(challenge).body == {"challenge": "ajls384kdjx98XX"}
    with pytest.raises(SignatureError):
        ch.verify({}, body_of({"challenge": "x", "token": "nope", "type": "url_verification"}))


ONEBOT_EVENT = {
    "time": 1764000000,
    "self_id": 10001,
    "post_type": "message",
    "message_type": "group",
    "sub_type": "normal",
    "message_id": 8812,
    "group_id": 5566,
    "user_id": 7788,
    "message": [{"type": "at", "data": {"qq": "10001"}}, {"type": "text", "data": {"text": " 今天的报表"}}],
    "raw_message": "[CQ:at,qq=10001] 今天的报表",
    "sender": {"user_id": 7788, "nickname": "小明"},
}


def test_onebot_signed_event_in_both_message_forms() -> None:
    ch, raw = channel("onebot"), body_of(ONEBOT_EVENT)
    signature = "sha1=" + hmac.new(b"ob-secret", raw, hashlib.sha1).hexdigest()
    ch.verify({"x-signature": signature}, raw)
    with pytest.raises(SignatureError):
        ch.verify({"x-signature": "sha1=" + "0" * 40}, raw)
    (msg,) = ch.parse(raw).messages
    assert (msg.conversation, msg.text, msg.sender_name) == ("group:5566", "今天的报表", "小明")
    assert msg.mentions[0].is_bot
    coded = body_of({**ONEBOT_EVENT, "message": "[CQ:at,qq=10001] 今天的报表"})
    assert ch.parse(coded).messages[0].text == "今天的报表"


def test_generic_webhook_signature_and_fields() -> None:
    ch = channel("webhook")
    raw = body_of({"conversation": "c1", "message_id": "m1", "text": "hi", "sender": {"id": "u1"}})
    ch.verify({"x-openclaw-signature": sign("wh-secret", raw, int(NOW))}, raw)
    with pytest.raises(SignatureError):
        ch.verify({"x-openclaw-signature": sign("other", raw, int(NOW))}, raw)
    with pytest.raises(SignatureError, match="too old"):
        ch.verify({"x-openclaw-signature": sign("wh-secret", raw, int(NOW) - 3600)}, raw)
    assert ch.parse(raw).messages[0].sender_id == "u1"


def test_the_tenant_comes_from_configuration_never_from_the_payload() -> None:
    raw = body_of({"conversation": "c", "message_id": "m", "text": "t", "tenant": "globex"})
    assert channel("webhook").parse(raw).messages[0].tenant == "acme"


def test_missing_secrets_are_named() -> None:
    config = ChannelConfig(name="s", kind="slack", tenant="acme")
    with pytest.raises(Exception, match="secret 'signing_secret' is not configured"):
        KINDS["slack"](config, no_post, clock=lambda: NOW).verify(slack_headers(b"{}"), b"{}")
