"""Discord interactions: Ed25519 signatures, PING, slash commands answered with a deferred response and a follow-up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from openclaw.v1 import chat_pb2
from services.gateway.channels.base import Channel, Inbound, SignatureError, api_url, load_json

API = "https://discord.com/api/v10"
PING, APPLICATION_COMMAND = 1, 2
PONG, DEFERRED_CHANNEL_MESSAGE = 1, 5


class DiscordChannel(Channel):
    kind = "discord"

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        signature = headers.get("x-signature-ed25519", "")
        timestamp = headers.get("x-signature-timestamp", "")
        try:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.config.secret("public_key")))
            key.verify(bytes.fromhex(signature), timestamp.encode() + body)
        except (ValueError, InvalidSignature):
            raise SignatureError("discord: the Ed25519 signature does not verify") from None
        self.check_timestamp(timestamp)

    def parse(self, body: bytes) -> Inbound:
        doc = load_json(body, self.kind)
        kind = doc.get("type")
        if kind == PING:
            return Inbound(body={"type": PONG})
        if kind != APPLICATION_COMMAND:
            return Inbound(body={"type": DEFERRED_CHANNEL_MESSAGE})
        data: dict[str, Any] = doc.get("data") or {}
        text = " ".join(
            str(o.get("value", "")) for o in data.get("options") or [] if o.get("value") is not None
        )
        user: dict[str, Any] = (doc.get("member") or {}).get("user") or doc.get("user") or {}
        message = self.message(
            account=str(doc.get("application_id", "")) or self.config.account,
            conversation=str(doc.get("channel_id", "")),
            message_id=str(doc.get("id", "")),
            sender_id=str(user.get("id", "")),
            sender_name=str(user.get("username", "")),
            text=text or f"/{data.get('name', '')}",
            # A slash command is addressed to the bot by construction: it counts as a mention.
            mentions=[chat_pb2.Mention(user_id=self.config.bot_user_id, is_bot=True)],
            is_group=bool(doc.get("guild_id")),
        )
        # The follow-up needs the interaction's token; it travels with the message, not in the core's state.
        message.context["interaction_token"] = str(doc.get("token", ""))
        return Inbound(messages=[message], body={"type": DEFERRED_CHANNEL_MESSAGE})

    async def send(self, reply: chat_pb2.ChannelReply) -> None:
        token = reply.context.get("interaction_token", "")
        if not token:
            raise RuntimeError("discord: a reply needs the interaction token of the command it answers")
        app = reply.account or self.config.account
        await self._post(
            api_url(self.config, API, f"/webhooks/{app}/{token}"), {}, {"content": reply.text[:2000]}
        )
