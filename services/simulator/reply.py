"""Deterministic reply text, word-sized stream pieces, word-based token counts and bag-of-words embeddings."""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FIRST_LINE_MAX = 200
"""The summary quotes at most this many characters of the first line."""

_PIECE = re.compile(r"\s*\S+\s*")
_WORD = re.compile(r"\w+")
_FEATURES_PER_WORD = 2


@dataclass(frozen=True, slots=True)
class Reply:
    """What the simulated model says: the text and the same text cut into word-sized pieces."""

    text: str
    pieces: tuple[str, ...]
    truncated: bool

    @property
    def tokens(self) -> int:
        """Completion tokens: one per word, i.e. one per streamed piece."""
        return len(self.pieces)


def text_of(content: object) -> str:
    """Plain text of a message's content: a string, or a list of OpenAI parts / Anthropic blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
            elif part.get("type") == "tool_result":
                parts.append(text_of(part.get("content")))
    return "\n".join(part for part in parts if part)


def last_user_text(messages: Sequence[object]) -> str:
    """Text of the last message whose role is ``user`` (empty if there is none)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


SCRIPT_PREFIX = "sim-call:"
"""A line ``sim-call: <tool> <arguments>`` in a system or user message scripts one tool call (see below)."""


def scripted_call(messages: Sequence[object]) -> tuple[str, str] | None:
    """The next scripted tool call (name, arguments as written), or None when the script is done or absent.

    The script is every ``sim-call:`` line of the system and user messages, in order; the n-th is answered
    once the conversation holds n - 1 assistant turns with tool calls. Arguments are the rest of the line,
    verbatim (invalid JSON included, so tests can script a bad call), ``{}`` when empty.
    """
    script: list[tuple[str, str]] = []
    calls_made = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls_made += 1
        if role not in ("system", "user"):
            continue
        for line in text_of(message.get("content")).splitlines():
            line = line.strip()
            if line.startswith(SCRIPT_PREFIX):
                name, _, arguments = line[len(SCRIPT_PREFIX) :].strip().partition(" ")
                if name:
                    script.append((name, arguments.strip() or "{}"))
    return script[calls_made] if calls_made < len(script) else None


def tool_call(
    messages: Sequence[object], *, forced: str | None = None, scripted: bool = False
) -> tuple[str, str] | None:
    """The tool call to answer with in any format, (name, arguments as JSON text), or None for a text reply.

    A forced call (the request's tool choice names or requires a tool) carries the arguments of the next
    scripted call when that names the same tool, else ``{}``; when the request lets the model choose
    (``scripted``), the next scripted call is the answer. ``messages`` are role/content dicts whose assistant
    turns with tool calls have a truthy ``tool_calls`` (each format converts its own conversation so).
    """
    script = scripted_call(messages)
    if forced is not None:
        return forced, script[1] if script is not None and script[0] == forced else "{}"
    return script if scripted else None


def arguments_object(arguments: str) -> dict[str, Any]:
    """Arguments for the formats that carry them as a JSON object (Anthropic, Gemini, Ollama).

    A script whose arguments are not a JSON object (invalid JSON included) gives ``{"_raw": <text>}``, the
    router's own spelling of unparseable arguments, so a bad call can still be scripted in every format.
    """
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_raw": arguments}


def without_script(text: str) -> str:
    """The text minus its ``sim-call:`` lines (so a script line does not also read as prose naming a tool)."""
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith(SCRIPT_PREFIX))


def last_turn_text(messages: Sequence[object]) -> str:
    """What the model answers: the tool result the conversation ends with, else the last user message."""
    if messages:
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") == "tool":
            return text_of(last.get("content"))
    return last_user_text(messages)


def count_tokens(text: str) -> int:
    """Simulated token count: whitespace-separated words."""
    return len(text.split())


def prompt_tokens(messages: Sequence[object], system: object = None) -> int:
    """Simulated prompt tokens of a conversation and its optional system prompt."""
    total = count_tokens(text_of(system))
    for message in messages:
        if isinstance(message, dict):
            total += count_tokens(text_of(message.get("content")))
    return total


def reply_text(model: str, user_text: str) -> str:
    """The labelled summary of ``user_text``; models named ``*echo*`` return it unchanged."""
    if "echo" in model.lower():
        return user_text
    words = len(user_text.split())
    if words == 0:
        return f"[simulated {model}] received no user text."
    lines = user_text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    if len(first) > FIRST_LINE_MAX:
        first = first[:FIRST_LINE_MAX] + "…"
    return (
        f"[simulated {model}] received {words} {'word' if words == 1 else 'words'} in {len(lines)} "
        f'{"line" if len(lines) == 1 else "lines"}; first line: "{first}"'
    )


def compose(
    model: str, messages: Sequence[object], max_tokens: int | None = None, *, text_of_turn: str | None = None
) -> Reply:
    """The reply to a conversation (or to ``text_of_turn``), cut short after ``max_tokens`` words if given."""
    text = reply_text(model, last_user_text(messages) if text_of_turn is None else text_of_turn)
    pieces = tuple(_PIECE.findall(text))
    if max_tokens is not None and len(pieces) > max_tokens:
        pieces = pieces[:max_tokens]
        return Reply("".join(pieces), pieces, truncated=True)
    return Reply(text, pieces, truncated=False)


def embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector of hashed word counts: same text, same vector; texts sharing words point alike."""
    raw = [0.0] * dimensions
    for word in _WORD.findall(text.lower()):
        digest = hashlib.blake2b(word.encode("utf-8"), digest_size=4 * _FEATURES_PER_WORD).digest()
        for k in range(0, len(digest), 4):
            # Several signed buckets per word keep collisions from making unrelated words identical.
            index = int.from_bytes(digest[k : k + 3], "little") % dimensions
            raw[index] += 1.0 if digest[k + 3] & 1 else -1.0
    norm = math.sqrt(sum(value * value for value in raw))
    if not norm:  # no words (or they cancelled out): fall back to a hash of the whole text
        digest = hashlib.shake_256(text.encode("utf-8")).digest(2 * dimensions)
        raw = [value / 32767.5 - 1.0 for value in struct.unpack(f"<{dimensions}H", digest)]
        norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [value / norm for value in raw]
