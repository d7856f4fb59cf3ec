"""Azure OpenAI: OpenAI's bodies and streams at deployment URLs with an ``api-version`` and an ``api-key``."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from services.router.providers.openai import OpenAIAdapter
from services.router.registry import ModelSpec

API_VERSION = "2024-10-21"
"""The GA data-plane version used when the endpoint's query string does not name one."""


def deployment_url(endpoint: str, deployment: str, operation: str) -> str:
    """``{resource}/openai/deployments/{deployment}/{operation}?api-version=...``.

    The endpoint is the resource URL (``https://{name}.openai.azure.com``), optionally with
    ``?api-version=...``; the deployment is the model's ``provider_model``.
    """
    parts = urlsplit(endpoint)
    query = dict(parse_qsl(parts.query))
    query.setdefault("api-version", API_VERSION)
    path = parts.path.rstrip("/")
    if not path.endswith("/openai"):
        path += "/openai"
    path += f"/deployments/{quote(deployment, safe='-._~')}/{operation}"
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


class AzureOpenAIAdapter(OpenAIAdapter):
    """OpenAI's wire format at Azure's deployment URLs; the key goes in ``api-key``."""

    name = "azure"

    def url(self, spec: ModelSpec, *, stream: bool) -> str:
        """The deployment's chat completions URL."""
        return deployment_url(spec.endpoint, spec.provider_model, "chat/completions")

    def embeddings_url(self, spec: ModelSpec) -> str:
        """The deployment's embeddings URL."""
        return deployment_url(spec.endpoint, spec.provider_model, "embeddings")

    def headers(self, spec: ModelSpec) -> dict[str, str]:
        """JSON, and the key in ``api-key`` when the model has one."""
        out = {"Content-Type": "application/json", "Accept": "application/json"}
        if spec.credential:
            out["api-key"] = spec.credential
        return out
