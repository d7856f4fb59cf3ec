"""Text operations: splitting, joining, case, shaping, regex (with timeouts), templates (with the sandbox's
bounds), measures, diffs and extraction; plus the pipeline convenience and bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInputError, PayloadTooLargeError, PermissionDeniedError
from services.executor.context import OpContext
from tests.unit.ops.harness import ctx_for, run_op


@pytest.fixture
def ctx(tmp_path: Path) -> OpContext:
    return ctx_for(tmp_path)


def prev(tmp_path: Path, value: Any, **services: Any) -> OpContext:
    """A context whose previous step returned ``value``."""
    return ctx_for(tmp_path, prev=value, has_prev=True, **services)


# ---- input, split, join, replace -------------------------------------------------------------------------


async def test_text_comes_from_the_previous_step_when_omitted(tmp_path: Path) -> None:
    assert await run_op("text_split", {"separator": ","}, prev(tmp_path, "a,b")) == ["a", "b"]


async def test_missing_or_non_string_text_is_an_error_naming_the_param(
    tmp_path: Path, ctx: OpContext
) -> None:
    with pytest.raises(InvalidInputError, match="text: required"):
        await run_op("text_split", {}, ctx)
    with pytest.raises(InvalidInputError, match="text: must be a string, not an object"):
        await run_op("text_split", {}, prev(tmp_path, {"a": 1}))
    with pytest.raises(ValidationError, match="separator"):
        await run_op("text_split", {"text": "a", "separator": ""}, ctx)


async def test_text_split(ctx: OpContext) -> None:
    assert await run_op("text_split", {"text": " a  b\tc\n"}, ctx) == ["a", "b", "c"]
    assert await run_op("text_split", {"text": "a,b,c,d", "separator": ",", "max_splits": 2}, ctx) == [
        "a",
        "b",
        "c,d",
    ]
    assert await run_op(
        "text_split", {"text": " a , ,b ", "separator": ",", "strip": True, "skip_empty": True}, ctx
    ) == ["a", "b"]


async def test_text_join(tmp_path: Path, ctx: OpContext) -> None:
    assert (
        await run_op("text_join", {"items": ["a", 1, 2.5, True], "separator": ", "}, ctx) == "a, 1, 2.5, true"
    )
    assert await run_op("text_join", {"separator": "-"}, prev(tmp_path, ["x", "y"])) == "x-y"
    assert await run_op("text_join", {"items": ["a", None, "b"], "skip_null": True}, ctx) == "ab"
    with pytest.raises(InvalidInputError, match=r"items\[1\]: must be a string, number or boolean, not null"):
        await run_op("text_join", {"items": ["a", None]}, ctx)
    with pytest.raises(InvalidInputError, match="items: must be a list, not a string"):
        await run_op("text_join", {}, prev(tmp_path, "abc"))


async def test_text_join_refuses_a_result_over_the_output_limit(tmp_path: Path) -> None:
    small = ctx_for(tmp_path, max_output_bytes=100)
    with pytest.raises(PayloadTooLargeError, match="items: the result would be 1090 characters"):
        await run_op("text_join", {"items": ["x"] * 100, "separator": "-" * 10}, small)


async def test_text_replace(tmp_path: Path, ctx: OpContext) -> None:
    assert await run_op("text_replace", {"text": "a.b.c", "old": ".", "new": "::"}, ctx) == "a::b::c"
    assert await run_op("text_replace", {"text": "a.b.c", "old": ".", "new": "", "count": 1}, ctx) == "ab.c"
    with pytest.raises(PayloadTooLargeError, match="new:"):
        await run_op(
            "text_replace",
            {"text": "aaaa", "old": "a", "new": "b" * 50},
            ctx_for(tmp_path, max_output_bytes=100),
        )


# ---- case, trim, pad, truncate, slug ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        ("upper", "HTTPSERVER ERROR_CODE 2 IN PARSEJSON"),
        ("lower", "httpserver error_code 2 in parsejson"),
        ("snake", "http_server_error_code_2_in_parse_json"),
        ("kebab", "http-server-error-code-2-in-parse-json"),
        ("camel", "httpServerErrorCode2InParseJson"),
        ("pascal", "HttpServerErrorCode2InParseJson"),
        ("constant", "HTTP_SERVER_ERROR_CODE_2_IN_PARSE_JSON"),
    ],
)
async def test_text_case_identifiers(ctx: OpContext, to: str, expected: str) -> None:
    assert (
        await run_op("text_case", {"text": "HTTPServer error_code 2 in parseJSON", "to": to}, ctx) == expected
    )


async def test_text_case_prose(ctx: OpContext) -> None:
    text = "they're HERE. is it? yes"
    assert await run_op("text_case", {"text": text, "to": "title"}, ctx) == "They're Here. Is It? Yes"
    assert await run_op("text_case", {"text": text, "to": "sentence"}, ctx) == "They're here. Is it? Yes"
    assert await run_op("text_case", {"text": "sha256Sum über", "to": "snake"}, ctx) == "sha256_sum_über"
    with pytest.raises(ValidationError, match="to"):
        await run_op("text_case", {"text": "x", "to": "sarcastic"}, ctx)


async def test_text_trim(ctx: OpContext) -> None:
    assert await run_op("text_trim", {"text": "  a b \n"}, ctx) == "a b"
    assert await run_op("text_trim", {"text": "  a ", "side": "start"}, ctx) == "a "
    assert await run_op("text_trim", {"text": "--a--", "side": "end", "characters": "-"}, ctx) == "--a"


async def test_text_pad(tmp_path: Path, ctx: OpContext) -> None:
    assert await run_op("text_pad", {"text": "7", "width": 3, "fill": "0", "side": "start"}, ctx) == "007"
    assert await run_op("text_pad", {"text": "ab", "width": 4}, ctx) == "ab  "
    assert await run_op("text_pad", {"text": "ab", "width": 6, "fill": "*", "side": "both"}, ctx) == "**ab**"
    assert await run_op("text_pad", {"text": "long", "width": 2}, ctx) == "long"
    with pytest.raises(ValidationError, match="fill"):
        await run_op("text_pad", {"text": "a", "width": 3, "fill": "ab"}, ctx)
    with pytest.raises(PayloadTooLargeError, match="width"):
        await run_op("text_pad", {"text": "a", "width": 5000}, ctx_for(tmp_path, max_output_bytes=1024))


async def test_text_truncate(ctx: OpContext) -> None:
    text = "The quick brown fox"
    assert await run_op("text_truncate", {"text": text, "max_length": 100}, ctx) == text
    assert await run_op("text_truncate", {"text": text, "max_length": 12}, ctx) == "The quick b…"
    assert (
        await run_op("text_truncate", {"text": text, "max_length": 12, "at_word": True}, ctx) == "The quick…"
    )
    assert (
        await run_op("text_truncate", {"text": text, "max_length": 8, "ellipsis": "..."}, ctx) == "The q..."
    )
    with pytest.raises(InvalidInputError, match="ellipsis: is 3 characters, longer than max_length 2"):
        await run_op("text_truncate", {"text": text, "max_length": 2, "ellipsis": "..."}, ctx)


async def test_text_slugify(ctx: OpContext) -> None:
    assert await run_op("text_slugify", {"text": "Hello, Wörld! 2024"}, ctx) == "hello-world-2024"
    assert (
        await run_op("text_slugify", {"text": "The Big Cat", "separator": "_", "stopwords": ["the"]}, ctx)
        == "big_cat"
    )
    assert await run_op("text_slugify", {"text": "one two three", "max_length": 9}, ctx) == "one-two"


# ---- lines, wrapping, indentation, pieces ------------------------------------------------------------------


async def test_text_lines(ctx: OpContext) -> None:
    text = "a\r\n  b \n\n c"
    assert await run_op("text_lines", {"text": text}, ctx) == ["a", "  b ", "", " c"]
    assert await run_op("text_lines", {"text": text, "strip": True, "skip_empty": True}, ctx) == [
        "a",
        "b",
        "c",
    ]


async def test_text_wrap_keeps_paragraphs(ctx: OpContext) -> None:
    text = "one two three four five\n\nsix seven"
    assert (
        await run_op("text_wrap", {"text": text, "width": 10}, ctx)
        == "one two\nthree four\nfive\n\nsix seven"
    )


async def test_text_indent_and_dedent(tmp_path: Path, ctx: OpContext) -> None:
    assert await run_op("text_indent", {"text": "a\n\nb", "prefix": "> "}, ctx) == "> a\n\n> b"
    assert (
        await run_op("text_indent", {"text": "a\n\nb", "prefix": "> ", "skip_blank": False}, ctx)
        == "> a\n> \n> b"
    )
    assert await run_op("text_dedent", {"text": "    a\n      b\n"}, ctx) == "a\n  b\n"
    with pytest.raises(PayloadTooLargeError, match="prefix"):
        await run_op(
            "text_indent", {"text": "\n" * 100, "prefix": "#" * 20}, ctx_for(tmp_path, max_output_bytes=1024)
        )


async def test_text_reverse_keeps_grapheme_clusters(ctx: OpContext) -> None:
    assert await run_op("text_reverse", {"text": "abc"}, ctx) == "cba"
    # e + combining acute, and a flag made of two regional indicators, each stay one character.
    assert await run_op("text_reverse", {"text": "e\u0301x🇫🇷"}, ctx) == "🇫🇷xe\u0301"


async def test_text_substring(ctx: OpContext) -> None:
    assert await run_op("text_substring", {"text": "abcdef", "start": 1, "end": 3}, ctx) == "bc"
    assert await run_op("text_substring", {"text": "abcdef", "start": -2}, ctx) == "ef"
    assert await run_op("text_substring", {"text": "abc", "start": 10}, ctx) == ""


async def test_text_chunk_at_word_ends_with_overlap(ctx: OpContext) -> None:
    text = "alpha beta gamma delta epsilon"
    chunks = await run_op("text_chunk", {"text": text, "size": 12}, ctx)
    assert chunks == ["alpha beta", "gamma delta", "epsilon"]
    overlapping = await run_op("text_chunk", {"text": text, "size": 16, "overlap": 6}, ctx)
    assert overlapping == ["alpha beta gamma", "gamma delta", "delta epsilon"]
    assert all(len(c) <= 16 for c in overlapping)
    assert await run_op("text_chunk", {"text": "abcdefgh", "size": 3, "at_word": False}, ctx) == [
        "abc",
        "def",
        "gh",
    ]
    with pytest.raises(InvalidInputError, match=r"overlap: must be smaller than size \(5\)"):
        await run_op("text_chunk", {"text": text, "size": 5, "overlap": 5}, ctx)


# ---- tests and counts ------------------------------------------------------------------------------------------


async def test_text_contains_starts_ends(ctx: OpContext) -> None:
    assert await run_op("text_contains", {"text": "Hello World", "substring": "o W"}, ctx) is True
    assert await run_op("text_contains", {"text": "Hello World", "substring": "world"}, ctx) is False
    assert (
        await run_op("text_contains", {"text": "STRASSE", "substring": "straße", "ignore_case": True}, ctx)
        is True
    )
    assert await run_op("text_starts_with", {"text": "Hello", "substring": "He"}, ctx) is True
    assert await run_op("text_starts_with", {"text": "Hello", "substring": "he"}, ctx) is False
    assert (
        await run_op("text_ends_with", {"text": "report.PDF", "substring": ".pdf", "ignore_case": True}, ctx)
        is True
    )
    with pytest.raises(ValidationError, match="substring"):
        await run_op("text_contains", {"text": "a", "substring": ""}, ctx)


async def test_text_count(ctx: OpContext) -> None:
    assert await run_op("text_count", {"text": "aaaa", "substring": "aa"}, ctx) == 2
    assert await run_op("text_count", {"text": "aaaa", "substring": "aa", "overlapping": True}, ctx) == 3
    assert await run_op("text_count", {"text": "Aa aA", "substring": "aa", "ignore_case": True}, ctx) == 2


async def test_text_stats(ctx: OpContext) -> None:
    text = "Hello world. It's a test!\nSecond line?\n\nNew paragraph"
    assert await run_op("text_stats", {"text": text}, ctx) == {
        "characters": len(text),
        "characters_no_whitespace": len(text.replace(" ", "").replace("\n", "")),
        "words": 9,
        "lines": 4,
        "sentences": 4,
        "paragraphs": 2,
    }
    empty = await run_op("text_stats", {"text": ""}, ctx)
    assert empty["words"] == empty["lines"] == empty["sentences"] == empty["paragraphs"] == 0


# ---- normalisation and HTML ---------------------------------------------------------------------------------


async def test_text_normalize_whitespace(ctx: OpContext) -> None:
    text = "  a \t b\n\n\n\n  c  d \n"
    assert await run_op("text_normalize_whitespace", {"text": text}, ctx) == "a b c d"
    assert (
        await run_op("text_normalize_whitespace", {"text": text, "keep_newlines": True}, ctx) == "a b\n\nc d"
    )


async def test_text_normalize_unicode(ctx: OpContext) -> None:
    decomposed = "Cafe\u0301"
    assert await run_op("text_normalize_unicode", {"text": decomposed}, ctx) == "Café"
    assert await run_op("text_normalize_unicode", {"text": "ﬁ ２²", "form": "NFKC"}, ctx) == "fi 22"
    assert (
        await run_op("text_normalize_unicode", {"text": "Crème brûlée", "strip_accents": True}, ctx)
        == "Creme brulee"
    )
    assert (
        await run_op("text_normalize_unicode", {"text": "Straße Ωmega", "ascii": True}, ctx)
        == "Strasse Omega"
    )
    with pytest.raises(ValidationError, match="form"):
        await run_op("text_normalize_unicode", {"text": "a", "form": "NFX"}, ctx)


async def test_text_strip_html(tmp_path: Path, ctx: OpContext) -> None:
    html = (
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        "<h1>Title</h1><p>Fish &amp; chips&nbsp;<b>now</b>.</p><script>alert(1)</script>"
        "<ul><li>one</li><li>two</li></ul>line<br>break</body></html>"
    )
    assert (
        await run_op("text_strip_html", {"text": html}, ctx)
        == "Title\n\nFish & chips now.\n\n- one\n\n- two\n\nline\nbreak"
    )
    assert await run_op("text_strip_html", {}, prev(tmp_path, "<i>x</i> &lt;y&gt;")) == "x <y>"


# ---- diff and similarity -----------------------------------------------------------------------------------------


async def test_text_diff(ctx: OpContext) -> None:
    diff = await run_op(
        "text_diff",
        {"before": "a\nb\nc\n", "after": "a\nB\nc\nd\n", "before_label": "v1", "after_label": "v2"},
        ctx,
    )
    assert diff == "--- v1\n+++ v2\n@@ -1,3 +1,4 @@\n a\n-b\n+B\n c\n+d"
    assert await run_op("text_diff", {"before": "same", "after": "same"}, ctx) == ""


async def test_text_similarity(ctx: OpContext) -> None:
    assert await run_op("text_similarity", {"first": "abcd", "second": "abcd"}, ctx) == 1.0
    assert await run_op("text_similarity", {"first": "abcd", "second": "wxyz"}, ctx) == 0.0
    assert await run_op("text_similarity", {"first": "abcd", "second": "abce"}, ctx) == 0.75
    assert await run_op("text_similarity", {"first": "ABC", "second": "abc", "ignore_case": True}, ctx) == 1.0
    names = {"first": "Lee Ann", "second": "Ann Lee"}
    assert await run_op("text_similarity", {**names, "method": "token_sort_ratio"}, ctx) == 1.0
    assert await run_op("text_similarity", names, ctx) < 0.8
    partial = {"first": "ACME Ltd", "second": "Invoice from ACME Ltd, London", "method": "partial_ratio"}
    assert await run_op("text_similarity", partial, ctx) == 1.0
    together = {"first": "red red apple", "second": "apple red", "method": "token_set_ratio"}
    assert await run_op("text_similarity", together, ctx) == 1.0
    with pytest.raises(InvalidInputError, match="method: partial_ratio compares a text of at most 1000"):
        await run_op(
            "text_similarity", {"first": "a" * 2000, "second": "b" * 3000, "method": "partial_ratio"}, ctx
        )
    with pytest.raises(ValidationError, match="first"):
        await run_op("text_similarity", {"first": "a" * 100_001, "second": "b"}, ctx)


async def test_text_levenshtein(ctx: OpContext) -> None:
    assert await run_op("text_levenshtein", {"first": "kitten", "second": "sitting"}, ctx) == 3
    assert await run_op("text_levenshtein", {"first": "", "second": "abc"}, ctx) == 3
    assert (
        await run_op("text_levenshtein", {"first": "Flaw", "second": "lawn", "ignore_case": True}, ctx) == 2
    )
    assert (
        await run_op("text_levenshtein", {"first": "a" * 50_000, "second": "a" * 49_990 + "b" * 10}, ctx)
        == 10
    )


# ---- regular expressions ---------------------------------------------------------------------------------------


async def test_text_regex_match_and_search_with_named_groups(ctx: OpContext) -> None:
    pattern = r"(?P<user>\w+)@(?P<host>[\w.]+)"
    whole = await run_op("text_regex_match", {"pattern": pattern, "text": "ann@example.org"}, ctx)
    assert whole == {
        "match": "ann@example.org",
        "start": 0,
        "end": 15,
        "groups": ["ann", "example.org"],
        "named": {"user": "ann", "host": "example.org"},
    }
    assert await run_op("text_regex_match", {"pattern": pattern, "text": "ann@example.org!"}, ctx) is None
    start = await run_op("text_regex_match", {"pattern": pattern, "text": "ann@x.org!", "whole": False}, ctx)
    assert start["match"] == "ann@x.org"
    found = await run_op("text_regex_search", {"pattern": pattern, "text": "mail bob@y.net now"}, ctx)
    assert found["named"] == {"user": "bob", "host": "y.net"} and found["start"] == 5
    assert await run_op("text_regex_search", {"pattern": "z+", "text": "abc"}, ctx) is None
    assert await run_op(
        "text_regex_search", {"pattern": "^B", "text": "a\nb", "ignore_case": True, "multiline": True}, ctx
    ) == {
        "match": "b",
        "start": 2,
        "end": 3,
        "groups": [],
        "named": {},
    }


async def test_text_regex_findall(ctx: OpContext) -> None:
    found = await run_op("text_regex_findall", {"pattern": r"(\d+)(x)?", "text": "1x 22 333x"}, ctx)
    assert [m["match"] for m in found] == ["1x", "22", "333x"]
    assert found[1]["groups"] == ["22", None]
    capped = await run_op("text_regex_findall", {"pattern": r"\d", "text": "12345", "max_matches": 2}, ctx)
    assert [m["match"] for m in capped] == ["1", "2"]


async def test_text_regex_replace(tmp_path: Path, ctx: OpContext) -> None:
    params = {
        "pattern": r"(?P<y>\d{4})-(\d\d)-(\d\d)",
        "replacement": r"\3/\2/\g<y>",
        "text": "on 2024-05-17, 2025-01-02",
    }
    assert await run_op("text_regex_replace", params, ctx) == "on 17/05/2024, 02/01/2025"
    assert await run_op("text_regex_replace", {**params, "count": 1}, ctx) == "on 17/05/2024, 2025-01-02"
    with pytest.raises(InvalidInputError, match="replacement:"):
        await run_op("text_regex_replace", {**params, "replacement": r"\g<nope>"}, ctx)
    # An empty pattern matches between every character: the growth is refused before it fills memory.
    with pytest.raises(PayloadTooLargeError, match="replacement: the result would exceed 1024"):
        await run_op(
            "text_regex_replace",
            {"pattern": "x*", "replacement": "x" * 100, "text": "a" * 100},
            ctx_for(tmp_path, max_output_bytes=1024),
        )


async def test_text_regex_split(ctx: OpContext) -> None:
    assert await run_op("text_regex_split", {"pattern": r"\s*[,;]\s*", "text": "a , b;c"}, ctx) == [
        "a",
        "b",
        "c",
    ]
    assert await run_op("text_regex_split", {"pattern": r"(-)", "text": "a-b-c", "max_splits": 1}, ctx) == [
        "a",
        "-",
        "b-c",
    ]


async def test_a_bad_pattern_is_refused_by_validation_and_at_run_time(ctx: OpContext) -> None:
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        await run_op("text_regex_search", {"pattern": "(unclosed", "text": "x"}, ctx)


async def test_a_pattern_whose_repeats_would_explode_when_compiled_is_refused(ctx: OpContext) -> None:
    for pattern in (r"(?:x{65535}){65535}", r"((a{100}){100}){100}"):
        with pytest.raises(ValidationError, match="counted repeats expand to about"):
            await run_op("text_regex_search", {"pattern": pattern, "text": "x"}, ctx)
    ordinary = r"(?P<user>\w{1,64})@(?P<host>\w{1,255}(?:\.\w{2,63})+)"
    assert (await run_op("text_regex_search", {"pattern": ordinary, "text": "to a@b.co"}, ctx))[
        "match"
    ] == "a@b.co"


async def test_a_catastrophic_pattern_times_out_instead_of_hanging(ctx: OpContext) -> None:
    params = {"pattern": r"(a|aa)+$", "text": "a" * 5000 + "!", "timeout_s": 0.2}
    with pytest.raises(InvalidInputError, match=r"pattern: matching took longer than 0.2 s"):
        await run_op("text_regex_search", params, ctx)
    with pytest.raises(InvalidInputError, match="pattern: matching took longer"):
        await run_op("text_regex_replace", {**params, "replacement": "b"}, ctx)


# ---- extraction ---------------------------------------------------------------------------------------------------


async def test_text_extract_urls(ctx: OpContext) -> None:
    text = (
        "See https://example.com/a?b=1&c=2. Also (http://x.org/wiki/Foo_(bar)), "
        "ftp://files.net/f.zip, and again https://example.com/a?b=1&c=2!"
    )
    assert await run_op("text_extract_urls", {"text": text}, ctx) == [
        "https://example.com/a?b=1&c=2",
        "http://x.org/wiki/Foo_(bar)",
        "ftp://files.net/f.zip",
    ]
    assert len(await run_op("text_extract_urls", {"text": text, "unique": False}, ctx)) == 4


async def test_text_extract_emails(ctx: OpContext) -> None:
    text = "Write to ann.lee+news@mail.example.com or BOB@x.io. Not: a@b, @c.com, me@localhost."
    assert await run_op("text_extract_emails", {"text": text}, ctx) == [
        "ann.lee+news@mail.example.com",
        "BOB@x.io",
    ]


async def test_text_redact_masks_personal_data(ctx: OpContext) -> None:
    text = (
        "Mail ann@x.io or see https://x.io/p. Card 4111 1111 1111 1111, not 1234 5678 9012 3456. "
        "Server 10.0.0.255. Call +44 20 7946 0958 or (555) 123-4567 on 2024-05-17. Order 12345."
    )
    assert await run_op("text_redact", {"text": text}, ctx) == (
        "Mail [EMAIL] or see [URL]. Card [CREDIT_CARD], not 1234 5678 9012 3456. "
        "Server [IP]. Call [PHONE] or [PHONE] on 2024-05-17. Order 12345."
    )
    only_phones = await run_op("text_redact", {"text": text, "kinds": ["phone"], "replacement": "***"}, ctx)
    assert "Call *** or *** on 2024-05-17" in only_phones
    assert "ann@x.io" in only_phones and "10.0.0.255" in only_phones
    with pytest.raises(ValidationError, match="kinds"):
        await run_op("text_redact", {"text": text, "kinds": ["ssn"]}, ctx)


# ---- templates ---------------------------------------------------------------------------------------------------------


async def test_text_template_renders_variables_filters_loops_and_prev(tmp_path: Path) -> None:
    template = "Hi {{ user.name|title }}: {% for i in items %}{{ loop.index }}={{ i }}{{ ', ' if not loop.last }}{% endfor %} ({{ prev.total }})"
    out = await run_op(
        "text_template",
        {"template": template, "variables": {"user": {"name": "ann lee"}, "items": ["a", "b"]}},
        prev(tmp_path, {"total": 2}),
    )
    assert out == "Hi Ann Lee: 1=a, 2=b (2)"


async def test_text_template_undefined_variable_is_an_error_naming_it(ctx: OpContext) -> None:
    with pytest.raises(InvalidInputError, match=r"template: line 2: 'missing' is undefined"):
        await run_op("text_template", {"template": "ok\n{{ missing }}"}, ctx)
    assert await run_op("text_template", {"template": "{{ missing|default('-') }}"}, ctx) == "-"


async def test_text_template_syntax_and_runtime_errors_are_input_errors(ctx: OpContext) -> None:
    with pytest.raises(ValidationError, match=r"line 1: .*'endfor'"):
        await run_op("text_template", {"template": "{% for x in y %}"}, ctx)
    # A template holding a workflow expression is only checked once the engine has resolved it.
    with pytest.raises(InvalidInputError, match="template: line 2: Expected an expression"):
        await run_op("text_template", {"template": "${{ inputs.x }}\n{% if %}"}, ctx)
    with pytest.raises(InvalidInputError, match="ZeroDivisionError"):
        await run_op("text_template", {"template": "{{ 1 / 0 }}"}, ctx)
    with pytest.raises(InvalidInputError, match="RecursionError"):
        await run_op("text_template", {"template": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"}, ctx)


async def test_text_template_string_methods_and_formatting_work_within_bounds(ctx: OpContext) -> None:
    template = "{{ '{}: {:>6.2f}'.format(10**12, 3.14159) }}|{{ 'x'.zfill(3) }}|{{ '%-4s|' % 'ab' }}{{ ', '.join(['a', 'b']) }}"
    assert await run_op("text_template", {"template": template}, ctx) == "1000000000000:   3.14|00x|ab  |a, b"


async def test_text_template_autoescape(ctx: OpContext) -> None:
    params = {"template": "<b>{{ v }}</b>", "variables": {"v": "<i>&"}}
    assert await run_op("text_template", params, ctx) == "<b><i>&</b>"
    assert await run_op("text_template", {**params, "autoescape": True}, ctx) == "<b>&lt;i&gt;&amp;</b>"


@pytest.mark.parametrize(
    "template",
    [
        "{{ x.__class__.__mro__ }}",
        "{{ items.append(1) }}",
        "{{ '%*d' % (5, 1) }}",
        "{{ '{0:{1}}'.format(1, 2) }}",
    ],
)
async def test_text_template_sandbox_refuses_unsafe_access(ctx: OpContext, template: str) -> None:
    with pytest.raises(PermissionDeniedError, match="template: line 1:"):
        await run_op("text_template", {"template": template, "variables": {"x": "s", "items": []}}, ctx)


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'a' * 5000 }}",
        "{{ [0] * 5000 }}",
        "{{ 'x'|center(5000) }}",
        "{{ 'x'.ljust(5000) }}",
        "{{ '%5000d' % 1 }}",
        "{{ '{:>5000}'.format(1) }}",
        "{{ 'ab'.replace('', big) }}",
        "{{ big ~ big }}",
        "{{ [big, big]|join }}",
        "{% set ns = namespace(s=big) %}{% for i in range(3) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "{% set s %}{{ big }}{{ big }}{% endset %}",
        "{% for i in range(100) %}{{ big }}{% endfor %}",
    ],
)
async def test_text_template_refuses_to_build_values_over_the_limit(tmp_path: Path, template: str) -> None:
    small = ctx_for(tmp_path, max_output_bytes=4096)
    with pytest.raises(PayloadTooLargeError, match="the limit is 4096"):
        await run_op("text_template", {"template": template, "variables": {"big": "b" * 3000}}, small)


async def test_text_template_refuses_huge_integers(ctx: OpContext) -> None:
    for template in ("{{ 2 ** 200000 }}", "{% set n = 2 ** 60000 %}{{ n * n }}"):
        with pytest.raises(PayloadTooLargeError, match="over the limit of 100000 bits"):
            await run_op("text_template", {"template": template}, ctx)
    assert await run_op("text_template", {"template": "{{ 2 ** 64 }}"}, ctx) == "18446744073709551616"


async def test_text_template_runaway_loop_hits_the_deadline(ctx: OpContext) -> None:
    template = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(InvalidInputError, match=r"rendering took longer than 0\.2 s"):
        await run_op("text_template", {"template": template, "timeout_s": 0.2}, ctx)
    exponential = "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}"
    with pytest.raises(InvalidInputError, match="rendering took longer"):
        await run_op("text_template", {"template": exponential, "timeout_s": 0.2}, ctx)


async def test_text_template_loop_variable_cannot_shadow_the_guards(tmp_path: Path) -> None:
    """The guards are environment attributes: a template variable of the same name changes nothing."""
    template = "{% set bounded_concat = 1 %}{{ big ~ big }}"
    with pytest.raises(PayloadTooLargeError):
        await run_op(
            "text_template",
            {"template": template, "variables": {"big": "b" * 3000}},
            ctx_for(tmp_path, max_output_bytes=4096),
        )
