"""Slack Events API: v0 signatures over timestamp and body, url_verification, chat.postMessage replies."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from openclaw.v1 import chat_pb2
from services.gateway.channels.base import Channel, Inbound, SignatureError, api_url, load_json, same

API = "https://slack.com"


class SlackChannel(Channel):
    kind = "slack"

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        ts = headers.get("x-slack-request-timestamp", "")
        self.check_timestamp(ts)
        base = b"v0:" + ts.encode() + b":" + body
        expected = (
            "v0=" + hmac.new(self.config.secret("signing_secret").encode(), base, hashlib.sha256).hexdigest()
        )
        if not same(expected, headers.get("x-slack-signature", "")):
            raise SignatureError("slack: the request signature does not verify")

    def parse(self, body: bytes) -> Inbound:
        doc = load_json(body, self.kind)
        if doc.get("type") == "url_verification":
            return Inbound(body={"challenge": doc.get("challenge", "")})
        event: dict[str, Any] = doc.get("event") or {}
        if doc.get("type") != "event_callback" or event.get("type") not in ("message", "app_mention"):
            return Inbound()
        if event.get("bot_id") or event.get(
            "subtype"
        ):  # our own replies, edits, joins: not messages to answer
            return Inbound()
        text = str(event.get("text", ""))
        mentions = [
            chat_pb2.Mention(user_id=uid, is_bot=uid == self.config.bot_user_id) for uid in _mentioned(text)
        ]
        channel_type = str(event.get("channel_type", ""))
        ts = str(event.get("ts", ""))
        return Inbound(
            messages=[
                self.message(
                    account=str(doc.get("team_id", "")) or self.config.account,
                    conversation=str(event.get("channel", "")),
                    thread=str(event.get("thread_ts", "")),
                    message_id=str(doc.get("event_id", "")) or ts,
                    sender_id=str(event.get("user", "")),
                    text=text,
                    mentions=mentions,
                    reply_to=ts,
                    is_group=channel_type != "im",
                    sent_at_ms=int(float(ts) * 1000) if ts else 0,
                )
            ]
        )

    async def send(self, reply: chat_pb2.ChannelReply) -> None:
        body: dict[str, Any] = {"channel": reply.conversation, "text": reply.text}
        if reply.thread or reply.reply_to:
            body["thread_ts"] = reply.thread or reply.reply_to
        answer = await self._post(
            api_url(self.config, API, "/api/chat.postMessage"),
            {"Authorization": f"Bearer {self.config.secret('bot_token')}"},
            body,
        )
        if isinstance(answer, dict) and not answer.get("ok", False):
            raise RuntimeError(f"slack: chat.postMessage failed: {answer.get('error', 'unknown error')}")


def _mentioned(text: str) -> list[str]:
    out, start = [], 0
    while (i := text.find("<@", start)) >= 0:
        end = text.find(">", i)
        if end < 0:
            break
        out.append(text[i + 2 : end].split("|", 1)[0])
        start = end + 1
    return out
