"""LLM operations, through the router (hop "executor.router": breaker, metrics, trace context).

Free-text operations live here; the ones whose reply must have a shape (a label, JSON matching a schema)
live in ``_llm_structured`` and are listed here, so the family registers as one module. There is no
llm_embed yet: the executor's router client (``ChatClient``) offers chat only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, TypeAdapter, ValidationError, model_validator

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops import _llm_structured
from services.executor.ops._llm_request import (
    Message,
    ModelParams,
    ask,
    context_text,
    input_text,
    reply,
)
from services.executor.ops.base import Params, input_or_prev, operation

MAX_MESSAGE_CHARS = 256 * 1024
MAX_CONVERSATION_CHARS = 1024 * 1024
Language = Annotated[str, StringConstraints(min_length=2, max_length=64)]


class LlmCallParams(ModelParams):
    prompt: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS, description="The user message.")
    system: str | None = Field(None, max_length=MAX_MESSAGE_CHARS, description="An optional system message.")
    input: Any = Field(
        None,
        description="Context appended to the prompt. When omitted, the previous step's output is used "
        "(its text or content field if it has one); set it to null to send the prompt alone.",
    )


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
    messages: list[Message] = [("system", p.system)] if p.system else []
    messages.append(("user", build_prompt(p, ctx)))
    return reply(await ask(p, ctx, messages))


class ChatMessage(Params):
    role: Literal["system", "user", "assistant"] = Field(description="Who says it.")
    content: str = Field(max_length=MAX_MESSAGE_CHARS, description="What is said.")


_CONVERSATION = TypeAdapter(Annotated[list[ChatMessage], Field(min_length=1, max_length=500)])


class ChatParams(ModelParams):
    messages: list[ChatMessage] | None = Field(
        None,
        min_length=1,
        max_length=500,
        description="The conversation so far. When omitted, the previous step's output if it is one: a list "
        "of messages, or an llm_chat output (whose messages include its reply), so chats can be chained.",
    )
    prompt: str | None = Field(
        None, min_length=1, max_length=MAX_MESSAGE_CHARS, description="A user message appended to messages."
    )
    system: str | None = Field(None, max_length=MAX_MESSAGE_CHARS, description="A system message put first.")


def _conversation(p: ChatParams, ctx: OpContext) -> list[ChatMessage]:
    if "messages" in p.model_fields_set and p.messages is not None:
        return list(p.messages)
    raw = ctx.prev_output if ctx.has_prev else None
    if isinstance(raw, dict) and isinstance(raw.get("messages"), list):
        raw = raw["messages"]
    if isinstance(raw, list):
        try:
            return list(_CONVERSATION.validate_python(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
            raise InvalidInputError(
                f"messages{where}: {first['msg']} (in the previous step's output)", param="messages"
            ) from None
    if p.prompt is not None:
        return []
    raise InvalidInputError(
        "messages: required (give messages or prompt; the previous step's output is not a conversation)",
        param="messages",
    )


@operation("llm_chat", category="llm", params=ChatParams)
async def llm_chat(p: ChatParams, ctx: OpContext) -> dict[str, Any]:
    """Continue a conversation (a list of system/user/assistant messages, plus an optional new prompt); returns
    the reply like llm_call, and messages: the conversation including the reply, ready for the next llm_chat."""
    conversation = _conversation(p, ctx)
    if p.system is not None:
        conversation.insert(0, ChatMessage(role="system", content=p.system))
    if p.prompt is not None:
        conversation.append(ChatMessage(role="user", content=p.prompt))
    if sum(len(m.content) for m in conversation) > MAX_CONVERSATION_CHARS:
        raise InvalidInputError(
            f"messages: more than {MAX_CONVERSATION_CHARS} characters in all", param="messages"
        )
    if not any(m.role == "user" for m in conversation):
        raise InvalidInputError("messages: the conversation has no user message", param="messages")
    response = await ask(p, ctx, [(m.role, m.content) for m in conversation])
    history = [m.model_dump() for m in conversation]
    return {
        **reply(response),
        "messages": [*history, {"role": "assistant", "content": response.message.content}],
    }


class TextParams(ModelParams):
    text: Any = Field(
        None,
        description="The text (or a step output, its text/content field used); the previous step's when omitted.",
    )


class SummarizeParams(TextParams):
    length: Literal["short", "medium", "long"] = Field(
        "medium", description="About 1-2, 3-5 or 6-10 sentences."
    )
    max_words: int | None = Field(None, ge=5, le=5000, description="A hard limit on the summary's words.")
    style: Literal["paragraph", "bullets", "headline", "tldr"] = Field(
        "paragraph", description="Shape of the summary."
    )
    focus: str | None = Field(None, max_length=500, description="What the summary should concentrate on.")
    language: Language | None = Field(
        None, description="Language of the summary (the text's own when omitted)."
    )


_LENGTH = {"short": "1 to 2 sentences", "medium": "3 to 5 sentences", "long": "6 to 10 sentences"}
_STYLE = {
    "paragraph": "as one paragraph of prose",
    "bullets": "as a bulleted list, one point per line starting with '- '",
    "headline": "as a single headline of at most 12 words",
    "tldr": "as a one-line TL;DR",
}


@operation("llm_summarize", category="llm", params=SummarizeParams)
async def llm_summarize(p: SummarizeParams, ctx: OpContext) -> dict[str, Any]:
    """Summarise a text with a model: length (short/medium/long or max_words), style (paragraph, bullets,
    headline, tldr), optional focus and language; returns the summary as content, like llm_call."""
    text = input_text(input_or_prev(p, "text", ctx), "text")
    rules = [f"Summarise the user's text {_STYLE[p.style]}"]
    if p.style in ("paragraph", "bullets"):
        rules.append(f"in {_LENGTH[p.length]}")
    if p.max_words:
        rules.append(f"using at most {p.max_words} words")
    instruction = " ".join(rules) + "."
    if p.focus:
        instruction += f" Concentrate on: {p.focus}."
    if p.language:
        instruction += f" Write the summary in {p.language}."
    instruction += " Reply with the summary only; add nothing that is not in the text."
    return reply(await ask(p, ctx, [("system", instruction), ("user", text)]))


class TranslateParams(TextParams):
    target_language: Language = Field(description="Language to translate into, e.g. 'French' or 'pt-BR'.")
    source_language: Language | None = Field(
        None, description="Language of the text (detected when omitted)."
    )
    glossary: dict[
        Annotated[str, StringConstraints(max_length=200)], Annotated[str, StringConstraints(max_length=200)]
    ] = Field(default_factory=dict, max_length=200, description="Terms and the translation they must get.")


@operation("llm_translate", category="llm", params=TranslateParams)
async def llm_translate(p: TranslateParams, ctx: OpContext) -> dict[str, Any]:
    """Translate a text into a target language with a model, keeping its formatting, with an optional glossary;
    returns the translation as content, like llm_call."""
    text = input_text(input_or_prev(p, "text", ctx), "text")
    source = f" from {p.source_language}" if p.source_language else ""
    instruction = (
        f"Translate the user's text{source} into {p.target_language}. Keep its meaning, tone, line breaks and "
        "formatting (Markdown, lists, placeholders such as {name}). Reply with the translation only."
    )
    if p.glossary:
        terms = "\n".join(f"- {term} -> {target}" for term, target in p.glossary.items())
        instruction += f"\nTranslate these terms exactly as given:\n{terms}"
    return reply(await ask(p, ctx, [("system", instruction), ("user", text)]))


_TONES = {
    "formal": "more formal",
    "casual": "more casual and relaxed",
    "friendly": "warmer and friendlier",
    "professional": "professional and polished",
    "concise": "shorter and more concise, without losing information",
    "simple": "simpler, in plain words a teenager would understand",
    "fix_grammar": "correct in spelling, grammar and punctuation, changing nothing else",
}


class RewriteParams(TextParams):
    style: (
        Literal["formal", "casual", "friendly", "professional", "concise", "simple", "fix_grammar"] | None
    ) = Field(None, description="A preset rewrite.")
    instruction: str | None = Field(
        None, min_length=1, max_length=2000, description="How to rewrite, in words."
    )

    @model_validator(mode="after")
    def _something(self) -> RewriteParams:
        if self.style is None and self.instruction is None:
            raise ValueError("give style or instruction")
        return self


@operation("llm_rewrite", category="llm", params=RewriteParams)
async def llm_rewrite(p: RewriteParams, ctx: OpContext) -> dict[str, Any]:
    """Rewrite a text with a model in a preset style (formal, concise, simple, fix_grammar...) and/or by a
    free instruction, keeping its language and meaning; returns the new text as content, like llm_call."""
    text = input_text(input_or_prev(p, "text", ctx), "text")
    wanted = [f"make it {_TONES[p.style]}"] if p.style else []
    if p.instruction:
        wanted.append(p.instruction)
    instruction = (
        f"Rewrite the user's text: {'; '.join(wanted)}. Keep its language and meaning. "
        "Reply with the rewritten text only."
    )
    return reply(await ask(p, ctx, [("system", instruction), ("user", text)]))


OPERATIONS = (llm_call, llm_chat, llm_summarize, llm_translate, llm_rewrite, *_llm_structured.OPERATIONS)
