"""Telegram Bot API: the webhook's secret-token header, Update objects, sendMessage replies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openclaw.v1 import chat_pb2
from services.gateway.channels.base import Channel, Inbound, SignatureError, api_url, load_json, same

API = "https://api.telegram.org"


class TelegramChannel(Channel):
    kind = "telegram"

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        if not same(self.config.secret("secret_token"), headers.get("x-telegram-bot-api-secret-token", "")):
            raise SignatureError("telegram: the X-Telegram-Bot-Api-Secret-Token header does not match")

    def parse(self, body: bytes) -> Inbound:
        update = load_json(body, self.kind)
        msg: dict[str, Any] = update.get("message") or {}
        if not msg or "text" not in msg:
            return Inbound()
        chat: dict[str, Any] = msg.get("chat") or {}
        sender: dict[str, Any] = msg.get("from") or {}
        text = str(msg["text"])
        mentions = []
        for entity in msg.get("entities") or []:
            if entity.get("type") == "mention":
                name = text[entity["offset"] + 1 : entity["offset"] + entity["length"]]
                mentions.append(chat_pb2.Mention(name=name, is_bot=name == self.config.bot_user_id))
        reply_to = (msg.get("reply_to_message") or {}).get("message_id")
        return Inbound(
            messages=[
                self.message(
                    conversation=str(chat.get("id", "")),
                    thread=str(msg.get("message_thread_id", "")),
                    message_id=f"{chat.get('id')}:{msg.get('message_id')}",
                    sender_id=str(sender.get("id", "")),
                    sender_name=str(sender.get("username") or sender.get("first_name") or ""),
                    text=text,
                    mentions=mentions,
                    reply_to=str(reply_to or ""),
                    is_group=chat.get("type") in ("group", "supergroup"),
                    sent_at_ms=int(msg.get("date", 0)) * 1000,
                )
            ]
        )

    async def send(self, reply: chat_pb2.ChannelReply) -> None:
        body: dict[str, Any] = {"chat_id": reply.conversation, "text": reply.text}
        if reply.reply_to:
            body["reply_parameters"] = {"message_id": int(reply.reply_to.rsplit(":", 1)[-1])}
        if reply.thread:
            body["message_thread_id"] = int(reply.thread)
        token = self.config.secret("bot_token")
        answer = await self._post(api_url(self.config, API, f"/bot{token}/sendMessage"), {}, body)
        if isinstance(answer, dict) and not answer.get("ok", False):
            raise RuntimeError(f"telegram: sendMessage failed: {answer.get('description', 'unknown error')}")
