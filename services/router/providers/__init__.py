"""Provider adapters: one module per wire format, all behind the ProviderAdapter protocol."""

from __future__ import annotations

from services.router.providers.anthropic import AnthropicAdapter
from services.router.providers.azure import AzureOpenAIAdapter
from services.router.providers.base import (
    EmbeddingAdapter,
    ErrorKind,
    HttpPool,
    ProviderAdapter,
    ProviderError,
    ProviderRejectedError,
    ProviderUnavailableError,
)
from services.router.providers.cohere import CohereAdapter
from services.router.providers.gemini import GeminiAdapter
from services.router.providers.ollama import OllamaAdapter
from services.router.providers.openai import OpenAIAdapter


def build_adapters(pool: HttpPool) -> dict[str, ProviderAdapter]:
    """One adapter per provider name a ModelSpec may use, sharing the process's HTTP pool."""
    adapters: list[ProviderAdapter] = [
        OpenAIAdapter(pool),
        AnthropicAdapter(pool),
        GeminiAdapter(pool),
        OllamaAdapter(pool),
        AzureOpenAIAdapter(pool),
        CohereAdapter(pool),
    ]
    return {adapter.name: adapter for adapter in adapters}


__all__ = [
    "AnthropicAdapter",
    "AzureOpenAIAdapter",
    "CohereAdapter",
    "EmbeddingAdapter",
    "ErrorKind",
    "GeminiAdapter",
    "HttpPool",
    "OllamaAdapter",
    "OpenAIAdapter",
    "ProviderAdapter",
    "ProviderError",
    "ProviderRejectedError",
    "ProviderUnavailableError",
    "build_adapters",
]
