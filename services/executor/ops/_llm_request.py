"""What every LLM operation shares: model params, one call to the router, and the reply as a JSON value."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from openclaw.v1 import router_pb2
from services.common.errors import InvalidInputError, InvalidModelOutputError
from services.executor.context import OpContext
from services.executor.ops.base import Params

CONTEXT_CHARS = 64 * 1024
"""Step outputs used as prompt context are cut here: a 1 MiB output must not become a 1 MiB prompt."""
REPLY_CHARS = 500
"""How much of a model's unusable reply an error message quotes."""


class ModelParams(Params):
    """Params every LLM operation takes."""

    model: str = Field(min_length=1, max_length=200, description="A model name known to the router.")
    temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature (model default if unset)."
    )
    max_tokens: int | None = Field(None, gt=0, le=1_000_000, description="Upper bound on the reply's tokens.")
    timeout_s: float | None = Field(
        None, gt=0, le=1800, description="Seconds to wait for the router (the executor's default if unset)."
    )


def context_text(value: Any, limit: int = CONTEXT_CHARS) -> str:
    """A step output as prompt context: its text or content if it has one, else JSON; bounded."""
    if isinstance(value, dict):
        for key in ("text", "content", "body"):
            if isinstance(value.get(key), str):
                value = value[key]
                break
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=1)
    if len(text) > limit:
        text = text[:limit] + f"\n[... truncated, {len(text) - limit} more characters]"
    return text


def input_text(value: Any, param: str) -> str:
    """The text an LLM operation works on (a string, or a step output reduced by context_text); never empty."""
    if value is None:
        raise InvalidInputError(f"{param}: required (and the previous step produced nothing)", param=param)
    text = context_text(value)
    if not text.strip():
        raise InvalidInputError(f"{param}: is empty", param=param)
    return text


Message = tuple[str, str]
"""(role, content)."""


async def ask(
    p: ModelParams, ctx: OpContext, messages: Sequence[Message], *, attempt: str = ""
) -> router_pb2.ChatResponse:
    """One chat completion through the router (hop ``executor.router``); ``attempt`` tags a follow-up call."""
    router = ctx.services.require_router()
    request = router_pb2.ChatRequest(
        model=p.model,
        messages=[router_pb2.ChatMessage(role=role, content=content) for role, content in messages],
        tenant=ctx.tenant,
        request_id=f"{ctx.task_id}:{ctx.step_id}:{ctx.attempt}{':' + attempt if attempt else ''}",
        # Workflow steps queue behind people waiting on a chat reply, not beside them (router QoS classes).
        priority="agent",
    )
    if p.temperature is not None:
        request.temperature = p.temperature
    if p.max_tokens is not None:
        request.max_tokens = p.max_tokens
    return await router.chat(request, timeout_s=p.timeout_s or ctx.services.router_timeout_s)


def usage(*responses: router_pb2.ChatResponse) -> dict[str, int]:
    """Token usage summed over one or more responses (a repair attempt costs tokens too)."""
    return {
        "prompt_tokens": sum(r.usage.prompt_tokens for r in responses),
        "completion_tokens": sum(r.usage.completion_tokens for r in responses),
        "total_tokens": sum(r.usage.total_tokens for r in responses),
    }


def route(response: router_pb2.ChatResponse) -> dict[str, Any]:
    """Which model and provider served the response, and the attempts the router made."""
    info = response.route
    return {
        "model": info.model,
        "provider": info.provider,
        "simulated": info.simulated,
        "queue_ms": info.queue_ms,
        "attempts": [
            {"model": a.model, "provider": a.provider, "outcome": a.outcome, "error": a.error}
            for a in info.attempts
        ],
    }


def reply(*responses: router_pb2.ChatResponse) -> dict[str, Any]:
    """The last response as an operation's output: content, model, finish_reason, usage (summed) and route."""
    last = responses[-1]
    return {
        "content": last.message.content,
        "model": last.model,
        "finish_reason": last.finish_reason,
        "usage": usage(*responses),
        "route": route(last),
    }


def unusable(what: str, response: router_pb2.ChatResponse, **details: Any) -> InvalidModelOutputError:
    """The error for a reply that does not have the asked-for shape (not the caller's input, not retryable)."""
    content = response.message.content
    quoted = content if len(content) <= REPLY_CHARS else content[:REPLY_CHARS] + "…"
    return InvalidModelOutputError(
        f"model {response.model or '?'!r} {what}; its reply was: {quoted!r}",
        model=response.model,
        reply=quoted,
        **details,
    )
