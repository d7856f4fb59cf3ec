"""A generic signed webhook: any system can talk to an agent with one HMAC-signed JSON POST, replies signed too.

Signature header ``X-OpenClaw-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`` (the scheme
Stripe uses), with the channel's secret; replies are POSTed to the channel's ``api_base`` signed the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from openclaw.v1 import chat_pb2
from services.common.errors import InvalidInputError
from services.gateway.channels.base import Channel, Inbound, SignatureError, load_json, same

HEADER = "x-openclaw-signature"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookChannel(Channel):
    kind = "webhook"

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        parts = dict(p.split("=", 1) for p in headers.get(HEADER, "").split(",") if "=" in p)
        timestamp = parts.get("t", "")
        self.check_timestamp(timestamp)
        expected = sign(self.config.secret("secret"), body, int(float(timestamp)))
        if not same(expected.split("v1=", 1)[1], parts.get("v1", "")):
            raise SignatureError("webhook: the X-OpenClaw-Signature does not verify")

    def parse(self, body: bytes) -> Inbound:
        doc = load_json(body, self.kind)
        missing = [k for k in ("conversation", "message_id", "text") if not isinstance(doc.get(k), str)]
        if missing:
            raise InvalidInputError(f"webhook: {', '.join(missing)}: required strings")
        sender: dict[str, Any] = doc.get("sender") or {}
        return Inbound(
            status=202,
            messages=[
                self.message(
                    conversation=doc["conversation"],
                    thread=str(doc.get("thread", "")),
                    message_id=doc["message_id"],
                    sender_id=str(sender.get("id", "")),
                    sender_name=str(sender.get("name", "")),
                    text=doc["text"],
                    reply_to=str(doc.get("reply_to", "")) or doc["message_id"],
                    is_group=bool(doc.get("is_group", False)),
                    mentions=[
                        chat_pb2.Mention(user_id=str(m), is_bot=m == self.config.bot_user_id)
                        for m in doc.get("mentions") or []
                    ],
                )
            ],
        )

    async def send(self, reply: chat_pb2.ChannelReply) -> None:
        body = {
            "conversation": reply.conversation,
            "thread": reply.thread,
            "reply_to": reply.reply_to,
            "text": reply.text,
        }
        raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        signature = sign(self.config.secret("secret"), raw, int(self._clock()))
        if not self.config.api_base:
            raise InvalidInputError(
                f"channel {self.config.name!r}: api_base (the reply URL) is not configured"
            )
        await self._post(self.config.api_base, {"X-OpenClaw-Signature": signature}, body)
