"""OpenAI-compatible ``POST /v1/embeddings`` over the router's Embed RPC (the openai SDK's default base64 too)."""

from __future__ import annotations

import base64
import struct
from typing import Any

from openclaw.v1 import router_pb2
from services.gateway.openai_wire import OpenAIError, route_info

MAX_INPUTS = 2048
MAX_DIMENSIONS = 65536


def to_embed_request(body: Any, *, tenant: str, request_id: str) -> router_pb2.EmbedRequest:
    """Translate an OpenAI embeddings body; OpenAIError naming the parameter if it is malformed."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "'model' is required and must be a string", param="model")
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts:
        raise OpenAIError(400, "'input' must be a string or a non-empty array of strings", param="input")
    if not all(isinstance(text, str) for text in texts):
        # Token arrays name tokens of one provider's tokenizer; the router cannot know which.
        raise OpenAIError(400, "'input' must be text: token arrays are not supported", param="input")
    if len(texts) > MAX_INPUTS:
        raise OpenAIError(400, f"'input' may hold at most {MAX_INPUTS} texts", param="input")
    for index, text in enumerate(texts):
        if not text:
            raise OpenAIError(400, f"'input[{index}]' must not be empty", param="input")
    request = router_pb2.EmbedRequest(model=model, input=texts, tenant=tenant, request_id=request_id)
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if (
            isinstance(dimensions, bool)
            or not isinstance(dimensions, int)
            or not 0 < dimensions <= MAX_DIMENSIONS
        ):
            raise OpenAIError(
                400, f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}", param="dimensions"
            )
        request.dimensions = dimensions
    if body.get("encoding_format", "float") not in ("float", "base64", None):
        raise OpenAIError(400, "'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise OpenAIError(400, "'user' must be a string", param="user")
    request.user = user or ""
    return request


def embeddings_body(response: router_pb2.EmbedResponse, *, as_base64: bool) -> dict[str, Any]:
    """A router EmbedResponse as an OpenAI embeddings ``list``."""
    data = []
    for index, item in enumerate(response.data):
        values = list(item.values)
        vector: list[float] | str = (
            base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode() if as_base64 else values
        )
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = response.usage.prompt_tokens
    body: dict[str, Any] = {
        "object": "list",
        "data": data,
        "model": response.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    if response.HasField("route"):
        body["openclaw"] = {"route": route_info(response.route)}
    return body
