"""LLM operations, through the router (hop "executor.router": breaker, metrics, trace context)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from openclaw.v1 import router_pb2
from services.executor.context import OpContext
from services.executor.ops.base import Params, operation

CONTEXT_CHARS = 64 * 1024


class LlmCallParams(Params):
    model: str = Field(min_length=1, max_length=200, description="A model name known to the router.")
    prompt: str = Field(min_length=1, description="The user message.")
    system: str | None = Field(None, description="An optional system message.")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0, le=1_000_000)
    input: Any = Field(
        None,
        description="Context appended to the prompt. When omitted, the previous step's output is used "
        "(its text or content field if it has one); set it to null to send the prompt alone.",
    )
    timeout_s: float | None = Field(None, gt=0, le=1800)


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


def build_prompt(p: LlmCallParams, ctx: OpContext) -> str:
    """The prompt, with the explicit input or (pipeline convenience) the previous output appended."""
    if "input" in p.model_fields_set:
        context = p.input
    elif ctx.has_prev:
        context = ctx.prev_output
    else:
        context = None
    if context is None:
        return p.prompt
    label = "Input"
    if isinstance(context, dict) and isinstance(context.get("path"), str):
        label = f"Input ({context['path']})"
    return f"{p.prompt}\n\n{label}:\n{context_text(context)}"


@operation("llm_call", category="llm", params=LlmCallParams)
async def llm_call(p: LlmCallParams, ctx: OpContext) -> dict[str, Any]:
    """Ask a model through the router; returns content, model, finish_reason, usage and route (which model
    and provider served it, and the attempts made)."""
    router = ctx.services.require_router()
    messages = []
    if p.system:
        messages.append(router_pb2.ChatMessage(role="system", content=p.system))
    messages.append(router_pb2.ChatMessage(role="user", content=build_prompt(p, ctx)))
    request = router_pb2.ChatRequest(
        model=p.model,
        messages=messages,
        tenant=ctx.tenant,
        request_id=f"{ctx.task_id}:{ctx.step_id}:{ctx.attempt}",
    )
    if p.temperature is not None:
        request.temperature = p.temperature
    if p.max_tokens is not None:
        request.max_tokens = p.max_tokens
    response = await router.chat(request, timeout_s=p.timeout_s or ctx.services.router_timeout_s)
    route = response.route
    return {
        "content": response.message.content,
        "model": response.model,
        "finish_reason": response.finish_reason,
        "usage": {
            "prompt_tokens": response.usage.prompt_tokens,
            "completion_tokens": response.usage.completion_tokens,
            "total_tokens": response.usage.total_tokens,
        },
        "route": {
            "model": route.model,
            "provider": route.provider,
            "simulated": route.simulated,
            "queue_ms": route.queue_ms,
            "attempts": [
                {"model": a.model, "provider": a.provider, "outcome": a.outcome, "error": a.error}
                for a in route.attempts
            ],
        },
    }


OPERATIONS = (llm_call,)
