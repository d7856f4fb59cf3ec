"""What a chat platform adapter is: verify a webhook, normalize its messages, send replies through the API."""

from __future__ import annotations

import hmac
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openclaw.v1 import chat_pb2
from services.common.errors import InvalidInputError, UnauthenticatedError

MAX_SKEW_S = (
    300.0  # Slack's rule, applied to every timestamped signature: replays older than this are refused
)

# post(url, headers, json body) -> the platform's JSON answer; the pipeline supplies it (a Hop around aiohttp).
Post = Callable[[str, Mapping[str, str], Mapping[str, Any]], Awaitable[Any]]


class SignatureError(UnauthenticatedError):
    """A webhook whose signature (or secret token) does not verify: rejected and logged, never processed."""

    code = "invalid_signature"


@dataclass(frozen=True)
class ChannelConfig:
    """One configured chat account: which platform, which tenant it belongs to, its secrets and API base URL."""

    name: str
    kind: str
    tenant: str
    account: str = ""
    api_base: str = ""
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    bot_user_id: str = ""
    allow_senders: tuple[str, ...] = ()
    groups_require_mention: bool = True

    def secret(self, key: str) -> str:
        value = self.secrets.get(key, "")
        if not value:
            raise InvalidInputError(
                f"channel {self.name!r}: secret {key!r} is not configured", channel=self.name
            )
        return value


@dataclass
class Inbound:
    """What a webhook carried: messages to process, and what to answer the platform right away."""

    messages: list[chat_pb2.ChannelMessage] = field(default_factory=list)
    status: int = 200
    body: Any = None  # JSON to answer with (a challenge, an acknowledgement), or None for an empty 200


class Channel(ABC):
    """One platform's adapter; stateless apart from its configuration."""

    kind: str = ""

    def __init__(self, config: ChannelConfig, post: Post, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._post = post
        self._clock = clock

    @abstractmethod
    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Raise SignatureError unless the request really comes from the platform (headers lower-cased)."""

    @abstractmethod
    def parse(self, body: bytes) -> Inbound:
        """The normalized messages of a verified request, and the immediate answer."""

    @abstractmethod
    async def send(self, reply: chat_pb2.ChannelReply) -> None:
        """Deliver a reply through the platform's API."""

    def message(self, **fields: Any) -> chat_pb2.ChannelMessage:
        """A ChannelMessage stamped with this channel's name, account and tenant (never the platform's say)."""
        fields.setdefault("account", self.config.account)
        fields["account"] = fields["account"] or self.config.account
        return chat_pb2.ChannelMessage(channel=self.config.name, tenant=self.config.tenant, **fields)

    def check_timestamp(self, raw: str) -> float:
        try:
            ts = float(raw)
        except ValueError:
            raise SignatureError(f"{self.kind}: the signature timestamp is missing or not a number") from None
        if abs(self._clock() - ts) > MAX_SKEW_S:
            raise SignatureError(
                f"{self.kind}: the signature timestamp is too old or in the future (replay?)"
            )
        return ts


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two signatures."""
    return hmac.compare_digest(a.encode(), b.encode())


def load_json(body: bytes, kind: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise InvalidInputError(f"{kind}: the request body is not JSON: {exc}") from None


def api_url(config: ChannelConfig, default: str, path: str) -> str:
    return (config.api_base or default).rstrip("/") + path
