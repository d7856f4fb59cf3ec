"""A sample OpenClaw plugin: text statistics operations, registered as ``sample.<name>``."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from pydantic import Field

from services.executor.context import OpContext
from services.executor.ops import Operation, Params, operation
from services.executor.ops.base import input_or_prev

WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


class WordFrequenciesParams(Params):
    text: str | None = Field(
        None, max_length=1_000_000, description="The text; the previous output if omitted."
    )
    top: int = Field(10, ge=1, le=1000, description="How many of the most frequent words to return.")
    min_length: int = Field(1, ge=1, le=100, description="Ignore words shorter than this.")


@operation("word_frequencies", category="text", params=WordFrequenciesParams)
async def word_frequencies(p: WordFrequenciesParams, ctx: OpContext) -> dict[str, Any]:
    """The most frequent words (case-folded), most frequent first: {total, words: [{word, count}]}."""
    text = str(input_or_prev(p, "text", ctx))
    words = [w.casefold() for w in WORD.findall(text) if len(w) >= p.min_length]
    ranked = sorted(Counter(words).items(), key=lambda kv: (-kv[1], kv[0]))[: p.top]
    return {"total": len(words), "words": [{"word": w, "count": c} for w, c in ranked]}


class ReadingTimeParams(Params):
    text: str | None = Field(
        None, max_length=1_000_000, description="The text; the previous output if omitted."
    )
    words_per_minute: int = Field(230, ge=50, le=2000, description="Reading speed.")


@operation("reading_time", category="text", params=ReadingTimeParams)
async def reading_time(p: ReadingTimeParams, ctx: OpContext) -> dict[str, int]:
    """Estimated reading time of a text, rounded up to whole minutes: {words, minutes}."""
    words = len(WORD.findall(str(input_or_prev(p, "text", ctx))))
    return {"words": words, "minutes": math.ceil(words / p.words_per_minute) if words else 0}


OPERATIONS: tuple[Operation[Any], ...] = (word_frequencies, reading_time)
