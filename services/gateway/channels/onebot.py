"""OneBot v11 (QQ and other Chinese IM bridges) over HTTP: HMAC-SHA1 signed POST events, send_msg replies."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

from openclaw.v1 import chat_pb2
from services.gateway.channels.base import Channel, Inbound, SignatureError, api_url, load_json, same

_CQ_AT = re.compile(r"\[CQ:at,qq=(\w+)[^\]]*\]")
_CQ_ANY = re.compile(r"\[CQ:[^\]]*\]")


class OneBotChannel(Channel):
    kind = "onebot"

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        expected = "sha1=" + hmac.new(self.config.secret("secret").encode(), body, hashlib.sha1).hexdigest()
        if not same(expected, headers.get("x-signature", "")):
            raise SignatureError("onebot: the X-Signature does not verify")

    def parse(self, body: bytes) -> Inbound:
        event = load_json(body, self.kind)
        if event.get("post_type") != "message":
            return Inbound(status=204)
        text, mentioned = _text_and_mentions(event.get("message", ""))
        self_id = str(event.get("self_id", "")) or self.config.bot_user_id
        sender: dict[str, Any] = event.get("sender") or {}
        group = event.get("message_type") == "group"
        conversation = f"group:{event.get('group_id')}" if group else f"private:{event.get('user_id')}"
        return Inbound(
            status=204,
            messages=[
                self.message(
                    account=self_id,
                    conversation=conversation,
                    message_id=f"{self_id}:{event.get('message_id')}",
                    sender_id=str(event.get("user_id", "")),
                    sender_name=str(sender.get("card") or sender.get("nickname") or ""),
                    text=text,
                    mentions=[chat_pb2.Mention(user_id=m, is_bot=m == self_id) for m in mentioned],
                    reply_to=str(event.get("message_id", "")),
                    is_group=group,
                    sent_at_ms=int(event.get("time", 0)) * 1000,
                )
            ],
        )

    async def send(self, reply: chat_pb2.ChannelReply) -> None:
        kind, _, target = reply.conversation.partition(":")
        body: dict[str, Any] = {"message_type": kind, "message": reply.text, "auto_escape": True}
        body["group_id" if kind == "group" else "user_id"] = int(target)
        headers = (
            {"Authorization": f"Bearer {self.config.secrets['access_token']}"}
            if self.config.secrets.get("access_token")
            else {}
        )
        answer = await self._post(api_url(self.config, "http://127.0.0.1:5700", "/send_msg"), headers, body)
        if isinstance(answer, dict) and answer.get("retcode", 0) != 0:
            raise RuntimeError(f"onebot: send_msg failed: retcode {answer.get('retcode')}")


def _text_and_mentions(message: Any) -> tuple[str, list[str]]:
    """OneBot messages are a CQ-coded string or a list of segments; both give plain text and the @-mentions."""
    if isinstance(message, str):
        mentioned = _CQ_AT.findall(message)
        return _CQ_ANY.sub("", message).strip(), mentioned
    parts, mentioned = [], []
    for segment in message if isinstance(message, list) else []:
        data = segment.get("data") or {}
        if segment.get("type") == "text":
            parts.append(str(data.get("text", "")))
        elif segment.get("type") == "at":
            mentioned.append(str(data.get("qq", "")))
    return "".join(parts).strip(), mentioned
