"""Text tests and measures: contains/starts/ends, counts, unified diffs, similarity, edit distance; and HTML
to plain text."""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any, Literal

import regex
from pydantic import Field

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops._text_params import check_size, text_field, text_input
from services.executor.ops.base import Params, operation

# difflib and the fuzzy scorers are quadratic in the worst case: these bounds keep a step under a second.
MAX_DIFF_TEXT = 200_000
MAX_COMPARE_TEXT = 100_000
MAX_PARTIAL_TEXT = 1000

_WORDS = regex.compile(r"[\p{L}\p{N}]+(?:['’\-][\p{L}\p{N}]+)*")
_SENTENCE_END = re.compile(r"[.!?]+")
_WORD_CHAR = regex.compile(r"[\p{L}\p{N}]")
_PARAGRAPHS = regex.compile(r"\n\s*\n")


# ---- substring tests and counts -----------------------------------------------------------------------------------


class ContainsParams(Params):
    text: str | None = text_field()
    substring: str = Field(min_length=1, max_length=10_000, description="The text to look for.")
    ignore_case: bool = Field(False, description="Compare case-insensitively (Unicode case folding).")


def _folded(p: ContainsParams, text: str) -> tuple[str, str]:
    return (text.casefold(), p.substring.casefold()) if p.ignore_case else (text, p.substring)


@operation("text_contains", category="text", params=ContainsParams)
async def text_contains(p: ContainsParams, ctx: OpContext) -> bool:
    """Whether the text contains the substring: true or false."""
    text, needle = _folded(p, text_input(p, ctx))
    return needle in text


@operation("text_starts_with", category="text", params=ContainsParams)
async def text_starts_with(p: ContainsParams, ctx: OpContext) -> bool:
    """Whether the text starts with the substring: true or false."""
    text, needle = _folded(p, text_input(p, ctx))
    return text.startswith(needle)


@operation("text_ends_with", category="text", params=ContainsParams)
async def text_ends_with(p: ContainsParams, ctx: OpContext) -> bool:
    """Whether the text ends with the substring: true or false."""
    text, needle = _folded(p, text_input(p, ctx))
    return text.endswith(needle)


class CountParams(ContainsParams):
    overlapping: bool = Field(False, description="Count overlapping occurrences (`aa` in `aaa` is 2, not 1).")


@operation("text_count", category="text", params=CountParams)
async def text_count(p: CountParams, ctx: OpContext) -> int:
    """How many times the substring occurs in the text (non-overlapping unless asked)."""
    text, needle = _folded(p, text_input(p, ctx))
    if not p.overlapping:
        return text.count(needle)
    count, at = 0, text.find(needle)
    while at >= 0:
        count += 1
        at = text.find(needle, at + 1)
    return count


# ---- counts, diffs, similarity -------------------------------------------------------------------------


class StatsParams(Params):
    text: str | None = text_field()


@operation("text_stats", category="text", params=StatsParams)
async def text_stats(p: StatsParams, ctx: OpContext) -> dict[str, int]:
    """Count the text's characters (with and without whitespace), words, lines, sentences and paragraphs."""
    text = text_input(p, ctx)
    stripped = text.strip()
    return {
        "characters": len(text),
        "characters_no_whitespace": sum(1 for c in text if not c.isspace()),
        "words": sum(1 for _ in _WORDS.finditer(text)),
        "lines": len(text.splitlines()),
        "sentences": sum(1 for part in _SENTENCE_END.split(text) if _WORD_CHAR.search(part)),
        "paragraphs": sum(1 for part in _PARAGRAPHS.split(stripped) if part.strip()) if stripped else 0,
    }


class DiffParams(Params):
    before: str = Field(max_length=MAX_DIFF_TEXT, description="The original text.")
    after: str = Field(max_length=MAX_DIFF_TEXT, description="The changed text.")
    context_lines: int = Field(3, ge=0, le=1000, description="Unchanged lines shown around each change.")
    before_label: str = Field("before", max_length=200, description="The name of the original in the header.")
    after_label: str = Field(
        "after", max_length=200, description="The name of the changed text in the header."
    )


@operation("text_diff", category="text", params=DiffParams)
async def text_diff(p: DiffParams, ctx: OpContext) -> str:
    """A unified diff (as `diff -u` writes it) from before to after; '' when they are the same."""

    def diff() -> str:
        lines = difflib.unified_diff(
            p.before.splitlines(),
            p.after.splitlines(),
            fromfile=p.before_label,
            tofile=p.after_label,
            n=p.context_lines,
            lineterm="",
        )
        return "\n".join(lines)

    out = await asyncio.to_thread(diff)
    check_size(len(out), ctx, "after")
    return out


class CompareParams(Params):
    first: str = Field(max_length=MAX_COMPARE_TEXT, description="One text.")
    second: str = Field(max_length=MAX_COMPARE_TEXT, description="The other text.")
    ignore_case: bool = Field(False, description="Compare case-insensitively.")


def _pair(p: CompareParams) -> tuple[str, str]:
    return (p.first.casefold(), p.second.casefold()) if p.ignore_case else (p.first, p.second)


class SimilarityParams(CompareParams):
    method: Literal["ratio", "partial_ratio", "token_sort_ratio", "token_set_ratio"] = Field(
        "ratio",
        description="ratio: whole texts (2 × common subsequence ÷ total length); partial_ratio: the shorter "
        "against its best-matching part of the longer; token_sort_ratio: word order ignored; "
        "token_set_ratio: word order and repeated words ignored.",
    )


@operation("text_similarity", category="text", params=SimilarityParams)
async def text_similarity(p: SimilarityParams, ctx: OpContext) -> float:
    """How alike two texts are, from 0.0 (nothing in common) to 1.0 (identical); fuzzy matching by RapidFuzz."""
    first, second = _pair(p)
    shorter = min(len(first), len(second))
    if p.method == "partial_ratio" and shorter > MAX_PARTIAL_TEXT:
        raise InvalidInputError(
            f"method: partial_ratio compares a text of at most {MAX_PARTIAL_TEXT} characters with a longer one; "
            f"the shorter here has {shorter}",
            param="method",
        )
    from rapidfuzz import fuzz  # imported when used: it takes a while to load

    scorer: Callable[[str, str], float] = getattr(fuzz, p.method)
    score = await asyncio.to_thread(scorer, first, second)
    return round(score / 100, 6)


@operation("text_levenshtein", category="text", params=CompareParams)
async def text_levenshtein(p: CompareParams, ctx: OpContext) -> int:
    """The Levenshtein edit distance between two texts: how many single-character edits turn one into the other."""
    from rapidfuzz.distance import Levenshtein  # imported when used: it takes a while to load

    first, second = _pair(p)
    return int(await asyncio.to_thread(Levenshtein.distance, first, second))


_SKIPPED = frozenset({"script", "style", "head", "template", "noscript", "svg", "iframe", "object"})
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure",
        "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
        "pre", "section", "table", "tr", "ul",
    }
)  # fmt: skip


class _TextExtractor(HTMLParser):
    """Collects an HTML document's visible text, with line breaks where block elements begin and end."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skipping += 1
        elif tag in _BLOCKS:
            self.parts.append("\n- " if tag == "li" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCKS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


_INLINE_SPACE = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def html_to_text(html: str) -> str:
    """The visible text of an HTML document or fragment: tags removed, entities decoded, tidy line breaks."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (_INLINE_SPACE.sub(" ", line).strip() for line in "".join(parser.parts).splitlines())
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


class StripHtmlParams(Params):
    text: str | None = text_field("The HTML; the previous step's output when omitted.")


@operation("text_strip_html", category="text", params=StripHtmlParams)
async def text_strip_html(p: StripHtmlParams, ctx: OpContext) -> str:
    """Turn HTML into plain text: tags, scripts and styles removed, entities decoded, blocks on their own lines."""
    html = text_input(p, ctx)
    return await asyncio.to_thread(html_to_text, html)


OPERATIONS: tuple[Any, ...] = (
    text_contains,
    text_starts_with,
    text_ends_with,
    text_count,
    text_stats,
    text_diff,
    text_similarity,
    text_levenshtein,
    text_strip_html,
)
