"""Provider adapters: one module per wire format, all behind the ProviderAdapter protocol."""

from __future__ import annotations

from services.router.providers.anthropic import AnthropicAdapter
from services.router.providers.base import (
    ErrorKind,
    HttpPool,
    ProviderAdapter,
    ProviderError,
    ProviderRejectedError,
    ProviderUnavailableError,
)
from services.router.providers.openai import OpenAIAdapter


def build_adapters(pool: HttpPool) -> dict[str, ProviderAdapter]:
    """One adapter per provider name a ModelSpec may use, sharing the process's HTTP pool."""
    return {"openai": OpenAIAdapter(pool), "anthropic": AnthropicAdapter(pool)}


__all__ = [
    "AnthropicAdapter",
    "ErrorKind",
    "HttpPool",
    "OpenAIAdapter",
    "ProviderAdapter",
    "ProviderError",
    "ProviderRejectedError",
    "ProviderUnavailableError",
    "build_adapters",
]
