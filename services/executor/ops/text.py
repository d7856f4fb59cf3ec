"""Text operations: split, join, replace, case, trim, pad, truncate, slugs, lines, wrapping, chunks and
normalisation; the family's regular expressions, templates and measures (counts, diffs, similarity) are in
_text_regex, _text_template and _text_measure, and its OPERATIONS gathers them all.

Every op takes its ``text`` from the previous step when the param is omitted, and refuses to build a result
larger than the engine would accept as a step output.
"""

from __future__ import annotations

import re
import textwrap
import unicodedata
from typing import Any, Literal

import regex
from pydantic import Field
from slugify import slugify
from text_unidecode import unidecode

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops import _text_measure, _text_regex, _text_template
from services.executor.ops._text_params import (
    MAX_ITEMS,
    MAX_TEXT,
    check_size,
    json_kind,
    text_field,
    text_input,
)
from services.executor.ops.base import Params, input_or_prev, operation

# ---- split, join, replace ---------------------------------------------------------------------------


class SplitParams(Params):
    text: str | None = text_field()
    separator: str | None = Field(
        None, min_length=1, max_length=1000, description="Where to split; runs of whitespace when omitted."
    )
    max_splits: int | None = Field(
        None,
        ge=0,
        le=MAX_ITEMS,
        description="Split at most this many times (the rest stays in the last item).",
    )
    strip: bool = Field(False, description="Strip whitespace from each item.")
    skip_empty: bool = Field(False, description="Drop empty items (after stripping).")


@operation("text_split", category="text", params=SplitParams)
async def text_split(p: SplitParams, ctx: OpContext) -> list[str]:
    """Split text by a separator (or whitespace) into a list of strings; text_regex_split splits by pattern."""
    text = text_input(p, ctx)
    items = text.split(p.separator, -1 if p.max_splits is None else p.max_splits)
    if p.strip:
        items = [item.strip() for item in items]
    if p.skip_empty:
        items = [item for item in items if item]
    return items


class JoinParams(Params):
    items: list[Any] | None = Field(
        None,
        max_length=MAX_ITEMS,
        description="Strings, numbers or booleans; the previous output when omitted.",
    )
    separator: str = Field("", max_length=1000, description="Put between items.")
    skip_null: bool = Field(False, description="Leave out null items instead of failing.")


def _piece(item: Any, index: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int | float):
        return str(item)
    raise InvalidInputError(
        f"items[{index}]: must be a string, number or boolean, not {json_kind(item)}", param="items"
    )


@operation("text_join", category="text", params=JoinParams)
async def text_join(p: JoinParams, ctx: OpContext) -> str:
    """Join a list of strings (numbers and booleans as JSON writes them) with a separator into one string."""
    items = input_or_prev(p, "items", ctx)
    if not isinstance(items, list):
        raise InvalidInputError(f"items: must be a list, not {json_kind(items)}", param="items")
    pieces = [_piece(item, i) for i, item in enumerate(items) if not (p.skip_null and item is None)]
    check_size(sum(map(len, pieces)) + len(p.separator) * max(len(pieces) - 1, 0), ctx, "items")
    return p.separator.join(pieces)


class ReplaceParams(Params):
    text: str | None = text_field()
    old: str = Field(min_length=1, max_length=10_000, description="The exact text to find.")
    new: str = Field(max_length=10_000, description="What to put in its place.")
    count: int | None = Field(
        None, ge=1, le=MAX_TEXT, description="Replace at most this many; all when omitted."
    )


@operation("text_replace", category="text", params=ReplaceParams)
async def text_replace(p: ReplaceParams, ctx: OpContext) -> str:
    """Replace occurrences of a literal substring (all, or the first `count`); text_regex_replace takes patterns."""
    text = text_input(p, ctx)
    found = text.count(p.old)
    if p.count is not None:
        found = min(found, p.count)
    check_size(len(text) + found * (len(p.new) - len(p.old)), ctx, "new")
    return text.replace(p.old, p.new, -1 if p.count is None else p.count)


# ---- case, trim, pad, truncate, slug ------------------------------------------------------------------

_WORD = regex.compile(r"\p{Lu}+(?=\p{Lu}\p{Ll})|\p{Lu}?[\p{Ll}\p{Lm}\p{Lo}\p{M}]+\p{N}*|\p{Lu}+\p{N}*|\p{N}+")
_TITLE_WORD = regex.compile(r"[\p{L}\p{N}]+(?:['’][\p{L}]+)?")
_SENTENCE_START = regex.compile(r"(^|[.!?]\s+)(\p{Ll})")
Case = Literal["upper", "lower", "title", "sentence", "snake", "camel", "pascal", "kebab", "constant"]


class CaseParams(Params):
    text: str | None = text_field()
    to: Case = Field(
        description="upper, lower, title (Each Word), sentence (First word of each sentence), snake "
        "(snake_case), camel (camelCase), pascal (PascalCase), kebab (kebab-case), constant (CONSTANT_CASE)."
    )


def convert_case(text: str, to: Case) -> str:
    """Text in another case; the identifier cases split words at spaces, punctuation and case changes."""
    if to == "upper":
        return text.upper()
    if to == "lower":
        return text.lower()
    if to == "title":
        return str(_TITLE_WORD.sub(lambda m: m.group(0)[:1].upper() + m.group(0)[1:].lower(), text))
    if to == "sentence":
        return str(_SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text.lower()))
    words = [w.lower() for w in _WORD.findall(text)]
    if to == "snake":
        return "_".join(words)
    if to == "kebab":
        return "-".join(words)
    if to == "constant":
        return "_".join(words).upper()
    capitalised = [w[:1].upper() + w[1:] for w in words]
    if to == "pascal":
        return "".join(capitalised)
    return "".join(words[:1] + capitalised[1:])


@operation("text_case", category="text", params=CaseParams)
async def text_case(p: CaseParams, ctx: OpContext) -> str:
    """Convert text to upper, lower, title or sentence case, or to a snake/camel/pascal/kebab/constant name."""
    return convert_case(text_input(p, ctx), p.to)


Side = Literal["both", "start", "end"]


class TrimParams(Params):
    text: str | None = text_field()
    side: Side = Field("both", description="Trim both ends, only the start, or only the end.")
    characters: str | None = Field(
        None, min_length=1, max_length=1000, description="The characters to remove; whitespace when omitted."
    )


@operation("text_trim", category="text", params=TrimParams)
async def text_trim(p: TrimParams, ctx: OpContext) -> str:
    """Remove whitespace (or the given characters) from both ends of the text, or from one end."""
    text = text_input(p, ctx)
    if p.side == "start":
        return text.lstrip(p.characters)
    if p.side == "end":
        return text.rstrip(p.characters)
    return text.strip(p.characters)


class PadParams(Params):
    text: str | None = text_field()
    width: int = Field(ge=0, le=MAX_ITEMS, description="The length to pad to; longer text is left as it is.")
    fill: str = Field(" ", min_length=1, max_length=1, description="The padding character.")
    side: Side = Field(
        "end",
        description="Where the padding goes: end (left-aligned), start (right-aligned) or both (centred).",
    )


@operation("text_pad", category="text", params=PadParams)
async def text_pad(p: PadParams, ctx: OpContext) -> str:
    """Pad text to a width with a fill character at the end, the start or both sides (centring it)."""
    text = text_input(p, ctx)
    check_size(max(len(text), p.width), ctx, "width")
    if p.side == "start":
        return text.rjust(p.width, p.fill)
    if p.side == "both":
        return text.center(p.width, p.fill)
    return text.ljust(p.width, p.fill)


class TruncateParams(Params):
    text: str | None = text_field()
    max_length: int = Field(ge=1, le=MAX_TEXT, description="The longest result, ellipsis included.")
    ellipsis: str = Field("…", max_length=100, description="Appended when the text is cut.")
    at_word: bool = Field(False, description="Cut at the last word boundary rather than mid-word.")


@operation("text_truncate", category="text", params=TruncateParams)
async def text_truncate(p: TruncateParams, ctx: OpContext) -> str:
    """Shorten text to at most max_length characters, ending in an ellipsis when it was cut."""
    text = text_input(p, ctx)
    if len(text) <= p.max_length:
        return text
    room = p.max_length - len(p.ellipsis)
    if room < 0:
        raise InvalidInputError(
            f"ellipsis: is {len(p.ellipsis)} characters, longer than max_length {p.max_length}",
            param="ellipsis",
        )
    cut = text[:room]
    if p.at_word and not text[room].isspace():
        last_space = max((i for i in range(len(cut) - 1, -1, -1) if cut[i].isspace()), default=-1)
        if last_space > 0:
            cut = cut[:last_space]
    return cut.rstrip() + p.ellipsis


class SlugifyParams(Params):
    text: str | None = text_field()
    separator: str = Field("-", max_length=10, description="Put between words.")
    max_length: int = Field(0, ge=0, le=10_000, description="Cut the slug to this length; 0 means no limit.")
    word_boundary: bool = Field(True, description="When cutting, cut at a word boundary.")
    lowercase: bool = Field(True, description="Lower-case the slug.")
    allow_unicode: bool = Field(False, description="Keep non-ASCII letters instead of transliterating them.")
    stopwords: list[str] = Field(
        default_factory=list, max_length=1000, description="Words to leave out (e.g. a, the)."
    )


@operation("text_slugify", category="text", params=SlugifyParams)
async def text_slugify(p: SlugifyParams, ctx: OpContext) -> str:
    """Turn text into a URL- and file-name-safe slug (`Hello, Wörld!` → `hello-world`)."""
    return slugify(
        text_input(p, ctx),
        separator=p.separator,
        max_length=p.max_length,
        word_boundary=p.word_boundary,
        lowercase=p.lowercase,
        allow_unicode=p.allow_unicode,
        stopwords=p.stopwords,
    )


# ---- lines, wrapping, indentation, pieces --------------------------------------------------------------


class LinesParams(Params):
    text: str | None = text_field()
    strip: bool = Field(False, description="Strip whitespace from each line.")
    skip_empty: bool = Field(False, description="Drop empty lines (after stripping).")


@operation("text_lines", category="text", params=LinesParams)
async def text_lines(p: LinesParams, ctx: OpContext) -> list[str]:
    """Split text into its lines (any line ending), optionally stripped and without the empty ones."""
    lines = text_input(p, ctx).splitlines()
    if p.strip:
        lines = [line.strip() for line in lines]
    return [line for line in lines if line] if p.skip_empty else lines


class WrapParams(Params):
    text: str | None = text_field()
    width: int = Field(80, ge=1, le=10_000, description="The longest line, in characters.")
    break_long_words: bool = Field(True, description="Break words longer than the width.")


@operation("text_wrap", category="text", params=WrapParams)
async def text_wrap(p: WrapParams, ctx: OpContext) -> str:
    """Re-wrap each paragraph of the text to lines of at most width characters (blank lines are kept)."""
    wrapper = textwrap.TextWrapper(width=p.width, break_long_words=p.break_long_words)
    wrapped = "\n".join(
        wrapper.fill(line) if line.strip() else "" for line in text_input(p, ctx).splitlines()
    )
    check_size(len(wrapped), ctx, "width")
    return wrapped


class IndentParams(Params):
    text: str | None = text_field()
    prefix: str = Field("    ", min_length=1, max_length=100, description="Put at the start of each line.")
    skip_blank: bool = Field(True, description="Leave lines holding only whitespace alone.")


@operation("text_indent", category="text", params=IndentParams)
async def text_indent(p: IndentParams, ctx: OpContext) -> str:
    """Put a prefix (four spaces by default) at the start of every line of the text."""
    text = text_input(p, ctx)
    check_size(len(text) + len(p.prefix) * (text.count("\n") + 1), ctx, "prefix")
    return textwrap.indent(text, p.prefix, None if p.skip_blank else (lambda _line: True))


class TextParams(Params):
    text: str | None = text_field()


@operation("text_dedent", category="text", params=TextParams)
async def text_dedent(p: TextParams, ctx: OpContext) -> str:
    """Remove the whitespace that every line of the text starts with (common leading indentation)."""
    return textwrap.dedent(text_input(p, ctx))


_GRAPHEME = regex.compile(r"\X")


@operation("text_reverse", category="text", params=TextParams)
async def text_reverse(p: TextParams, ctx: OpContext) -> str:
    """Reverse the text by user-perceived characters, so accents and emoji sequences stay whole."""
    return "".join(reversed(_GRAPHEME.findall(text_input(p, ctx))))


class SubstringParams(Params):
    text: str | None = text_field()
    start: int = Field(
        0, ge=-MAX_TEXT, le=MAX_TEXT, description="First character (0-based; negative counts from the end)."
    )
    end: int | None = Field(
        None,
        ge=-MAX_TEXT,
        le=MAX_TEXT,
        description="Stop before this character; the end of the text when omitted.",
    )


@operation("text_substring", category="text", params=SubstringParams)
async def text_substring(p: SubstringParams, ctx: OpContext) -> str:
    """The part of the text from start up to (not including) end, like a Python slice; '' when out of range."""
    return text_input(p, ctx)[p.start : p.end]


class ChunkParams(Params):
    text: str | None = text_field()
    size: int = Field(1000, ge=1, le=MAX_TEXT, description="The longest chunk, in characters.")
    overlap: int = Field(
        0, ge=0, le=MAX_TEXT, description="Characters each chunk repeats from the previous one."
    )
    at_word: bool = Field(True, description="End chunks at whitespace where possible instead of mid-word.")


def chunk_text(text: str, size: int, overlap: int, at_word: bool) -> list[str]:
    """Consecutive pieces of at most ``size`` characters, each starting ``overlap`` before the last end."""
    chunks: list[str] = []
    start, n = 0, len(text)
    while start < n:
        end = min(start + size, n)
        if at_word and end < n and not text[end].isspace():
            cut = end
            while cut > start and not text[cut - 1].isspace():
                cut -= 1
            end = cut if cut > start else end
        piece = text[start:end].strip()
        if piece:
            chunks.append(piece)
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        if at_word and overlap:  # begin the overlap at a word start, not mid-word
            while nxt < end and not text[nxt - 1].isspace():
                nxt += 1
        while nxt < n and text[nxt].isspace():
            nxt += 1
        start = nxt
    return chunks


@operation("text_chunk", category="text", params=ChunkParams)
async def text_chunk(p: ChunkParams, ctx: OpContext) -> list[str]:
    """Split long text into chunks of at most size characters (at word ends), optionally overlapping (for LLMs)."""
    text = text_input(p, ctx)
    if p.overlap >= p.size:
        raise InvalidInputError(f"overlap: must be smaller than size ({p.size})", param="overlap")
    check_size(len(text) * p.size // (p.size - p.overlap), ctx, "overlap")
    return chunk_text(text, p.size, p.overlap, p.at_word)


# ---- normalisation ----------------------------------------------------------------------------------------

_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class WhitespaceParams(Params):
    text: str | None = text_field()
    keep_newlines: bool = Field(
        False, description="Keep line breaks (at most one blank line in a row) instead of joining lines."
    )


@operation("text_normalize_whitespace", category="text", params=WhitespaceParams)
async def text_normalize_whitespace(p: WhitespaceParams, ctx: OpContext) -> str:
    """Collapse runs of whitespace to one space and trim the ends (optionally keeping line breaks)."""
    text = text_input(p, ctx)
    if not p.keep_newlines:
        return " ".join(text.split())
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")


class UnicodeParams(Params):
    text: str | None = text_field()
    form: Literal["NFC", "NFKC", "NFD", "NFKD"] = Field(
        "NFC", description="NFC composes; NFKC also folds compatibility forms (ligatures, full-width, ²)."
    )
    strip_accents: bool = Field(False, description="Remove accents and other combining marks (é → e).")
    ascii: bool = Field(
        False, description="Transliterate to plain ASCII (Straße → Strasse, 東京 → Dong Jing)."
    )


@operation("text_normalize_unicode", category="text", params=UnicodeParams)
async def text_normalize_unicode(p: UnicodeParams, ctx: OpContext) -> str:
    """Normalise Unicode (NFC, NFKC, NFD, NFKD), optionally removing accents or transliterating to ASCII."""
    text = text_input(p, ctx)
    if p.strip_accents:
        decomposed = unicodedata.normalize("NFKD" if "K" in p.form else "NFD", text)
        text = "".join(c for c in decomposed if not unicodedata.combining(c))
    if p.ascii:
        text = str(unidecode(text))
    return unicodedata.normalize(p.form, text)


OPERATIONS = (
    text_split,
    text_join,
    text_replace,
    text_case,
    text_trim,
    text_pad,
    text_truncate,
    text_slugify,
    text_lines,
    text_wrap,
    text_indent,
    text_dedent,
    text_reverse,
    text_substring,
    text_chunk,
    text_normalize_whitespace,
    text_normalize_unicode,
    *_text_regex.OPERATIONS,
    *_text_template.OPERATIONS,
    *_text_measure.OPERATIONS,
)
