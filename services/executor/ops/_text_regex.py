"""Regular-expression text operations (match, search, find all, replace, split), extraction of URLs and
e-mail addresses, and redaction of personal data.

Patterns run on the ``regex`` package with a timeout, in a worker thread: a catastrophic pattern fails its
step with a clear error instead of hanging the executor.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import regex
from pydantic import Field, field_validator

from services.common.errors import InvalidInputError, PayloadTooLargeError
from services.executor.context import OpContext
from services.executor.expressions import OPEN
from services.executor.ops._text_params import MAX_TEXT, output_limit, text_field, text_input
from services.executor.ops.base import Params, operation

T = TypeVar("T")
MAX_PATTERN = 2000
MAX_MATCHES = 100_000
MAX_EXPANDED = 20_000


_QUANTIFIER = re.compile(r"\{(\d*),?(\d*)\}")
_NAMED_ESCAPE = re.compile(r"\\[pPNgk]\{[^}]*\}|\\.", re.DOTALL)
# Alternatives that cannot overlap, so an unclosed class costs one scan, never backtracking.
_CHAR_CLASS = re.compile(r"\[\^?\]?(?:\\.|\[:\w+:\]|\[(?!:)|[^\]\\\[])*+\]", re.DOTALL)


def expanded_size(pattern: str) -> int:
    """Roughly how many nodes compiling a pattern makes: counted repeats multiply what they repeat.

    `regex` unrolls ``{n,m}`` repeats when compiling, so ``(x{1000}){1000}`` costs seconds and nesting one
    more level exhausts memory: such patterns are refused before they reach the compiler.
    """
    frames = [[0]]  # per open group: the sizes of its atoms so far
    i = 0
    while i < len(pattern):
        atom = 0
        m = _NAMED_ESCAPE.match(pattern, i) or _CHAR_CLASS.match(pattern, i)
        if m:
            atom, i = 1, m.end()
        elif pattern[i] == "(":
            frames.append([0])
            i += 1
        elif pattern[i] == ")" and len(frames) > 1:
            atom, i = sum(frames.pop()), i + 1
        elif (q := _QUANTIFIER.match(pattern, i)) and (q.group(1) or q.group(2)):
            bound = max(int(q.group(1) or 0), int(q.group(2) or 0))
            last = frames[-1]
            last[-1] = last[-1] * max(bound, 1)
            i = q.end()
        else:
            atom, i = 1, i + 1
        if atom:
            frames[-1].append(atom)
    return sum(sum(frame) for frame in frames)


class RegexParams(Params):
    pattern: str = Field(
        min_length=1, max_length=MAX_PATTERN, description="The regular expression (Python/`regex` syntax)."
    )
    text: str | None = text_field()
    ignore_case: bool = Field(False, description="Match letters regardless of case.")
    multiline: bool = Field(False, description="`^` and `$` match at every line, not only the text's ends.")
    dot_all: bool = Field(False, description="`.` also matches a newline.")
    timeout_s: float = Field(
        1.0, gt=0, le=10, description="Give up (and fail the step) if matching takes longer than this."
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        if OPEN not in value:
            check_pattern_size(value)
            try:
                regex.compile(value)
            except regex.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


def check_pattern_size(pattern: str) -> None:
    """Refuse a pattern whose counted repeats would make compiling it slow or exhaust memory."""
    size = expanded_size(pattern)
    if size > MAX_EXPANDED:
        raise ValueError(
            f"its counted repeats expand to about {size} elements when compiled; the limit is {MAX_EXPANDED}"
        )


def _compile(p: RegexParams) -> regex.Pattern[str]:
    flags = regex.V0
    flags |= regex.IGNORECASE if p.ignore_case else 0
    flags |= regex.MULTILINE if p.multiline else 0
    flags |= regex.DOTALL if p.dot_all else 0
    try:
        check_pattern_size(p.pattern)
        return regex.compile(p.pattern, flags)
    except ValueError as exc:
        raise InvalidInputError(f"pattern: {exc}", param="pattern") from exc
    except regex.error as exc:
        raise InvalidInputError(f"pattern: not a valid regular expression: {exc}", param="pattern") from exc


async def _run(p: RegexParams, work: Callable[[], T]) -> T:
    """Run regex work off the event loop; a timeout or a bad replacement becomes a named input error."""
    try:
        return await asyncio.to_thread(work)
    except TimeoutError as exc:
        raise InvalidInputError(
            f"pattern: matching took longer than {p.timeout_s:g} s (a pattern with nested repetition "
            "can backtrack catastrophically; simplify it or raise timeout_s)",
            param="pattern",
        ) from exc


def match_json(m: regex.Match[str]) -> dict[str, Any]:
    """A match as JSON: the matched text, its span, positional groups and named groups."""
    return {
        "match": m.group(0),
        "start": m.start(),
        "end": m.end(),
        "groups": list(m.groups()),
        "named": m.groupdict(),
    }


class RegexMatchParams(RegexParams):
    whole: bool = Field(True, description="The whole text must match (true) or only its beginning (false).")


@operation("text_regex_match", category="text", params=RegexMatchParams)
async def text_regex_match(p: RegexMatchParams, ctx: OpContext) -> Any:
    """Match a pattern against the whole text (or its start): {match, start, end, groups, named}, or null."""
    text, pattern = text_input(p, ctx), _compile(p)
    how = pattern.fullmatch if p.whole else pattern.match
    m = await _run(p, lambda: how(text, concurrent=True, timeout=p.timeout_s))
    return None if m is None else match_json(m)


@operation("text_regex_search", category="text", params=RegexParams)
async def text_regex_search(p: RegexParams, ctx: OpContext) -> Any:
    """Find the first match of a pattern anywhere in the text: {match, start, end, groups, named}, or null."""
    text, pattern = text_input(p, ctx), _compile(p)
    m = await _run(p, lambda: pattern.search(text, concurrent=True, timeout=p.timeout_s))
    return None if m is None else match_json(m)


class RegexFindAllParams(RegexParams):
    max_matches: int = Field(1000, ge=1, le=MAX_MATCHES, description="Stop after this many matches.")


@operation("text_regex_findall", category="text", params=RegexFindAllParams)
async def text_regex_findall(p: RegexFindAllParams, ctx: OpContext) -> list[dict[str, Any]]:
    """Find every non-overlapping match of a pattern: a list of {match, start, end, groups, named}."""
    text, pattern = text_input(p, ctx), _compile(p)

    def find() -> list[dict[str, Any]]:
        found = []
        for m in pattern.finditer(text, concurrent=True, timeout=p.timeout_s):
            found.append(match_json(m))
            if len(found) >= p.max_matches:
                break
        return found

    return await _run(p, find)


class RegexReplaceParams(RegexParams):
    replacement: str = Field(
        max_length=10_000,
        description=r"The replacement; `\1` or `\g<name>` insert a group, `\\` a backslash.",
    )
    count: int = Field(0, ge=0, le=MAX_TEXT, description="Replace at most this many matches; 0 replaces all.")


@operation("text_regex_replace", category="text", params=RegexReplaceParams)
async def text_regex_replace(p: RegexReplaceParams, ctx: OpContext) -> str:
    r"""Replace matches of a pattern (groups by `\1` or `\g<name>`); the output is the new text."""
    text, pattern, limit = text_input(p, ctx), _compile(p), output_limit(ctx)
    grown = 0

    def expand(m: regex.Match[str]) -> str:
        nonlocal grown
        try:
            piece: str = m.expand(p.replacement)
        except (regex.error, IndexError) as exc:
            raise InvalidInputError(f"replacement: {exc}", param="replacement") from exc
        grown += len(piece) - (m.end() - m.start())
        if len(text) + grown > limit:
            raise PayloadTooLargeError(f"replacement: the result would exceed {limit} characters")
        return piece

    return await _run(
        p, lambda: pattern.sub(expand, text, count=p.count, concurrent=True, timeout=p.timeout_s)
    )


class RegexSplitParams(RegexParams):
    max_splits: int = Field(
        0, ge=0, le=MAX_TEXT, description="Split at most this many times; 0 splits at all."
    )


@operation("text_regex_split", category="text", params=RegexSplitParams)
async def text_regex_split(p: RegexSplitParams, ctx: OpContext) -> list[str | None]:
    """Split the text at each match of a pattern; captured groups are kept between the pieces."""
    text, pattern = text_input(p, ctx), _compile(p)
    return await _run(
        p, lambda: pattern.split(text, maxsplit=p.max_splits, concurrent=True, timeout=p.timeout_s)
    )


class ExtractParams(Params):
    text: str | None = text_field()
    unique: bool = Field(True, description="Drop repeats, keeping the first occurrence's position.")
    max_items: int = Field(1000, ge=1, le=MAX_MATCHES, description="Stop after this many items.")


_URL = regex.compile(r"\b(?:https?|ftp)://[^\s<>\"'`{}|\\^]+", regex.IGNORECASE)
# Lengths are bounded (RFC 5321: 64-character local part, 63-character labels) so that text which only
# almost holds an address cannot make the pattern backtrack for long.
_EMAIL = regex.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}@(?:[\p{L}\p{N}](?:[\p{L}\p{N}-]{0,61}[\p{L}\p{N}])?\.){1,8}\p{L}{2,63}(?![\w-])"
)
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _trim_url(url: str) -> str:
    """Drop trailing punctuation that belongs to the sentence, keeping balanced brackets (wiki links)."""
    while url:
        last = url[-1]
        unbalanced = last in _CLOSERS and url.count(last) > url.count(_CLOSERS[last])
        if last in ".,;:!?'\"*" or unbalanced:
            url = url[:-1]
        else:
            break
    return url


def _collect(items: Any, p: ExtractParams) -> list[Any]:
    out: list[Any] = []
    seen: set[Any] = set()
    for item in items:
        if p.unique:
            if item in seen:
                continue
            seen.add(item)
        out.append(item)
        if len(out) >= p.max_items:
            break
    return out


@operation("text_extract_urls", category="text", params=ExtractParams)
async def text_extract_urls(p: ExtractParams, ctx: OpContext) -> list[str]:
    """Extract the http, https and ftp URLs in the text, in order of appearance (trailing punctuation dropped)."""
    text = text_input(p, ctx)
    urls = (_trim_url(m.group(0)) for m in _URL.finditer(text))
    return _collect((u for u in urls if "://" in u and not u.endswith("://")), p)


@operation("text_extract_emails", category="text", params=ExtractParams)
async def text_extract_emails(p: ExtractParams, ctx: OpContext) -> list[str]:
    """Extract the e-mail addresses in the text, in order of appearance."""
    text = text_input(p, ctx)
    return _collect((m.group(0) for m in _EMAIL.finditer(text)), p)


_PII: dict[str, regex.Pattern[str]] = {
    "email": _EMAIL,
    "url": _URL,
    # 13-19 digits, optionally grouped by spaces or dashes; only those passing the Luhn check count.
    "credit_card": regex.compile(r"(?<!\w|\d[ -])\d(?:[ -]?\d){12,18}(?!\w|[ -]\d)"),
    "ip": regex.compile(
        r"(?<!\w|\d\.)(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?!\w|\.\d)"
    ),
    # An optional +country code, then 7-15 digits grouped by spaces, dots, dashes or parentheses.
    "phone": regex.compile(
        r"(?<![\w+]|\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\d){6,14}(?!\w|[ .-]\d)"
    ),
}
_DATE = regex.compile(r"\d{4}([./-])\d{1,2}\1\d{1,2}|\d{1,2}([./-])\d{1,2}\2\d{2,4}")
PiiKind = Literal["email", "url", "credit_card", "ip", "phone"]
_ALL_KINDS: list[PiiKind] = ["email", "url", "credit_card", "ip", "phone"]


def luhn_valid(number: str) -> bool:
    """Whether a digit string passes the Luhn checksum (payment card numbers do)."""
    digits = [int(d) for d in reversed(number)]
    total = sum(digits[0::2]) + sum(sum(divmod(2 * d, 10)) for d in digits[1::2])
    return total % 10 == 0


class RedactParams(Params):
    text: str | None = text_field()
    kinds: list[PiiKind] = Field(
        default_factory=lambda: list(_ALL_KINDS),
        min_length=1,
        max_length=5,
        description="What to redact: email, url, credit_card (Luhn-checked), ip (IPv4), phone.",
    )
    replacement: str = Field(
        "[{kind}]",
        max_length=100,
        description="What replaces each item; `{kind}` becomes EMAIL, URL, PHONE...",
    )


@operation("text_redact", category="text", params=RedactParams)
async def text_redact(p: RedactParams, ctx: OpContext) -> str:
    """Mask personal data (e-mails, URLs, card numbers, IP addresses, phone numbers) before text is shared."""
    text, limit = text_input(p, ctx), output_limit(ctx)

    def redact(text: str) -> str:
        for kind, pattern in _PII.items():  # card numbers before phone numbers, addresses before URLs
            if kind in p.kinds:
                text = str(pattern.sub(_masker(kind, p.replacement.replace("{kind}", kind.upper())), text))
                if len(text) > limit:
                    raise PayloadTooLargeError(f"replacement: the result would exceed {limit} characters")
        return text

    return await asyncio.to_thread(redact, text)


def _masker(kind: str, label: str) -> Callable[[Any], str]:
    def mask(m: Any) -> str:
        raw = str(m.group(0))
        if kind == "credit_card" and not luhn_valid("".join(c for c in raw if c.isdigit())):
            return raw
        if kind == "phone" and (_DATE.fullmatch(raw) or _PII["ip"].fullmatch(raw)):
            return raw
        if kind == "url":  # keep the sentence's punctuation after the address
            return label + raw[len(_trim_url(raw)) :]
        return label

    return mask


OPERATIONS = (
    text_regex_match,
    text_regex_search,
    text_regex_findall,
    text_regex_replace,
    text_regex_split,
    text_extract_urls,
    text_extract_emails,
    text_redact,
)
