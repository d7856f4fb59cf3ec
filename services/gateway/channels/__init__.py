"""Chat platform adapters: each verifies its platform's webhooks, normalizes messages and sends replies."""

from __future__ import annotations

from services.gateway.channels.base import Channel, ChannelConfig, Inbound, Post, SignatureError
from services.gateway.channels.discord import DiscordChannel
from services.gateway.channels.feishu import FeishuChannel
from services.gateway.channels.onebot import OneBotChannel
from services.gateway.channels.slack import SlackChannel
from services.gateway.channels.telegram import TelegramChannel
from services.gateway.channels.webhook import WebhookChannel

KINDS: dict[str, type[Channel]] = {
    cls.kind: cls
    for cls in (SlackChannel, TelegramChannel, DiscordChannel, FeishuChannel, OneBotChannel, WebhookChannel)
}

__all__ = ["KINDS", "Channel", "ChannelConfig", "Inbound", "Post", "SignatureError"]
