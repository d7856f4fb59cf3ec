"""Feishu / Lark event subscriptions (schema 2.0): signed events, url_verification, replies to the message."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from openclaw.v1 import chat_pb2
from services.gateway.channels.base import Channel, Inbound, SignatureError, api_url, load_json, same

API = "https://open.feishu.cn"


class FeishuChannel(Channel):
    kind = "feishu"
    _token: str = ""
    _token_until: float = 0.0

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        timestamp = headers.get("x-lark-request-timestamp", "")
        nonce = headers.get("x-lark-request-nonce", "")
        if headers.get("x-lark-signature") is None:
            # url_verification requests are not signed; they carry the verification token instead.
            doc = load_json(body, self.kind)
            if doc.get("type") == "url_verification" and same(
                str(doc.get("token", "")), self.config.secret("verification_token")
            ):
                return
            raise SignatureError("feishu: the request is not signed")
        self.check_timestamp(timestamp)
        digest = hashlib.sha256(
            (timestamp + nonce + self.config.secret("encrypt_key")).encode() + body
        ).hexdigest()
        if not same(digest, headers.get("x-lark-signature", "")):
            raise SignatureError("feishu: the X-Lark-Signature does not verify")

    def parse(self, body: bytes) -> Inbound:
        doc = load_json(body, self.kind)
        if doc.get("type") == "url_verification":
            return Inbound(body={"challenge": doc.get("challenge", "")})
        header: dict[str, Any] = doc.get("header") or {}
        if header.get("event_type") != "im.message.receive_v1":
            return Inbound()
        event: dict[str, Any] = doc.get("event") or {}
        msg: dict[str, Any] = event.get("message") or {}
        if msg.get("message_type") != "text":
            return Inbound()
        try:
            text = str(json.loads(msg.get("content", "{}")).get("text", ""))
        except ValueError:
            text = ""
        mentions = [
            chat_pb2.Mention(
                user_id=str((m.get("id") or {}).get("open_id", "")),
                name=str(m.get("name", "")),
                is_bot=(m.get("id") or {}).get("open_id") == self.config.bot_user_id,
            )
            for m in msg.get("mentions") or []
        ]
        sender = ((event.get("sender") or {}).get("sender_id") or {}).get("open_id", "")
        return Inbound(
            messages=[
                self.message(
                    account=str(header.get("app_id", "")) or self.config.account,
                    conversation=str(msg.get("chat_id", "")),
                    thread=str(msg.get("root_id", "")),
                    message_id=str(msg.get("message_id", "")),
                    sender_id=str(sender),
                    text=text,
                    mentions=mentions,
                    reply_to=str(msg.get("message_id", "")),
                    is_group=msg.get("chat_type") == "group",
                    sent_at_ms=int(msg.get("create_time", 0) or 0),
                )
            ]
        )

    async def send(self, reply: chat_pb2.ChannelReply) -> None:
        token = await self._access_token()
        content = json.dumps({"text": reply.text}, ensure_ascii=False)
        answer = await self._post(
            api_url(self.config, API, f"/open-apis/im/v1/messages/{reply.reply_to}/reply"),
            {"Authorization": f"Bearer {token}"},
            {"msg_type": "text", "content": content},
        )
        if isinstance(answer, dict) and answer.get("code", 0) != 0:
            raise RuntimeError(f"feishu: reply failed: {answer.get('msg', 'unknown error')}")

    async def _access_token(self) -> str:
        """The tenant access token, fetched with the app id and secret and reused until shortly before expiry."""
        if self._token and self._clock() < self._token_until:
            return self._token
        answer = await self._post(
            api_url(self.config, API, "/open-apis/auth/v3/tenant_access_token/internal"),
            {},
            {"app_id": self.config.secret("app_id"), "app_secret": self.config.secret("app_secret")},
        )
        if not isinstance(answer, dict) or answer.get("code", 0) != 0:
            raise RuntimeError("feishu: could not obtain a tenant access token")
        self._token = str(answer["tenant_access_token"])
        self._token_until = self._clock() + float(answer.get("expire", 7200)) - 300
        return self._token
