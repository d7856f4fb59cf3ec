"""Expressions: parsing, resolution against JSON only, interpolation and its bounds, error messages."""

from __future__ import annotations

from typing import Any

import pytest

from services.executor.expressions import (
    ExpressionError,
    compile_template,
    parse_expression,
    resolve,
    walk,
)

SCOPE: dict[str, Any] = {
    "steps": {
        "fetch": {"output": {"rows": [{"a": 1}, {"a": 2}], "name": "data.csv", "weird-key": True}},
        "count": {"output": 3},
    },
    "inputs": {"city": "Paris", "n": 5, "flags": {"x": None}},
    "prev": {"output": {"text": "hello"}},
    "workflow": {"name": "wf"},
    "task": {"id": "t1", "attempt": 1},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps.fetch.output.rows[1].a", 2),
        ("steps.fetch.output.rows[-1]", {"a": 2}),
        ("steps.fetch.output['weird-key']", True),
        ('steps["fetch"].output.name', "data.csv"),
        ("inputs.city", "Paris"),
        ("inputs.flags.x", None),
        ("prev.output.text", "hello"),
        ("workflow.name", "wf"),
        ("task.id", "t1"),
        ("  steps.count.output  ", 3),
    ],
)
def test_paths_resolve(text: str, expected: Any) -> None:
    assert parse_expression(text).evaluate(SCOPE) == expected


def test_whole_string_keeps_the_json_type() -> None:
    assert resolve("${{ steps.fetch.output.rows }}", SCOPE) == [{"a": 1}, {"a": 2}]
    assert resolve("${{inputs.n}}", SCOPE) == 5
    assert resolve({"deep": ["${{ inputs.flags }}", 1]}, SCOPE) == {"deep": [{"x": None}, 1]}


def test_interpolation_makes_text() -> None:
    assert resolve("Weather in ${{ inputs.city }} x${{ inputs.n }}", SCOPE) == "Weather in Paris x5"
    assert resolve("rows: ${{ steps.fetch.output.rows }}", SCOPE) == 'rows: [{"a":1},{"a":2}]'
    assert resolve(" ${{ inputs.n }}", SCOPE) == " 5"


def test_escape_and_plain_strings() -> None:
    assert resolve("literal $${{ inputs.city }}", SCOPE) == "literal ${{ inputs.city }}"
    assert resolve("no expressions", SCOPE) == "no expressions"
    assert resolve(42, SCOPE) == 42


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("steps.__class__", "'__' are not allowed"),
        ("steps.fetch.__dict__", "'__' are not allowed"),
        ("inputs.city.__len__", "'__' are not allowed"),
        ("__import__('os')", "unknown name '__import__'"),
        ("(1", "missing ')'"),
        ("1 +", "unexpected '+'"),
        ("os.system", "unknown name 'os'"),
        ("steps.fetch.output.name()", "unexpected '('"),
        ("inputs.n + 1", "unexpected '+'"),
        ("inputs.n ==", "ends too early"),
        ("inputs.city.lower() == 'x'", "unexpected '('"),
        ("not", "ends too early"),
        ("(" * 40 + "1" + ")" * 40, "nested deeper than 32"),
        ("steps[x]", "expected an integer or a quoted key"),
        ("steps[0", "missing ']'"),
        ("steps['a'", "missing ']'"),
        ("", "empty expression"),
    ],
)
def test_anything_but_the_language_is_refused(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as err:
        parse_expression(text)
    assert fragment in err.value.message


def test_bracket_keys_are_dict_lookups_only() -> None:
    with pytest.raises(ExpressionError, match="has no key '__class__'"):
        resolve("${{ steps['__class__'] }}", SCOPE)
    # A string value is not indexable, so no Python attribute is ever reachable through one.
    with pytest.raises(ExpressionError, match="is str, which has no 'upper'"):
        resolve("${{ inputs.city.upper }}", SCOPE)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("${{ steps.missing.output }}", "steps has no key 'missing' (keys: count, fetch)"),
        (
            "${{ steps.fetch.output.rows[5] }}",
            "index 5 is out of range for steps.fetch.output.rows (length 2)",
        ),
        ("${{ steps.fetch.output.rows.a }}", "is a list; index it by position"),
        ("${{ steps.fetch.output[0] }}", "is an object; index it by key"),
        ("${{ inputs.flags.x.y }}", "inputs.flags.x is null"),
    ],
)
def test_resolution_errors_name_the_expression(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as err:
        resolve(text, SCOPE)
    assert fragment in err.value.message
    assert text.replace("${{ ", "").replace(" }}", "") in err.value.message


def test_missing_root_is_explained() -> None:
    with pytest.raises(ExpressionError, match="there is no previous step"):
        resolve("${{ prev.output }}", {"steps": {}})


def test_interpolated_text_is_bounded() -> None:
    scope = {"inputs": {"big": "x" * 1000}}
    with pytest.raises(ExpressionError, match="longer than 1500"):
        compile_template("${{ inputs.big }}${{ inputs.big }}").render(scope, max_chars=1500)  # type: ignore[union-attr]
    # A whole-value expression is a reference, not text: it is not subject to the text bound.
    assert len(resolve("${{ inputs.big }}", scope, max_chars=10)) == 1000


def test_unclosed_expression() -> None:
    with pytest.raises(ExpressionError, match="unclosed"):
        compile_template("a ${{ inputs.x ")


def test_walk_finds_expressions_with_their_paths() -> None:
    found = [
        (p, [str(e) for e in t.paths])
        for p, t in walk({"a": ["x", "${{ inputs.n }}"], "b": {"c": "${{ prev.output }} ok"}})
    ]
    assert found == [(".a[1]", ["${{ inputs.n }}"]), (".b.c", ["${{ prev.output }}"])]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("inputs.n == 5", True),
        ("inputs.n != 5", False),
        ("inputs.n > 4 and inputs.n <= 5", True),
        ("inputs.city == 'Paris' or inputs.missing_is_never_read", True),
        ("not inputs.flags.x", True),
        ('not (inputs.n < 3 or inputs.city == "Rome")', True),
        ("'a' in steps.fetch.output.rows[0]", True),
        ("inputs.city in 'Paris, Rome'", True),
        ("'ari' in inputs.city", True),
        ("steps.count.output in steps.fetch.output.rows", False),
        ("'b' not in steps.fetch.output.rows[0]", True),
        ("true == 1", False),
        ("null == inputs.flags.x", True),
        ("-1.5e1 < 0", True),
        ("'b' > 'a'", True),
        ("steps.fetch.output.rows == steps.fetch.output.rows", True),
        ("42", 42),
        ("'text'", "text"),
    ],
)
def test_comparisons_and_boolean_logic(text: str, expected: Any) -> None:
    assert parse_expression(text).evaluate(SCOPE) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("inputs.n < 'x'", "cannot order a number and a string with '<'"),
        ("inputs.flags > 1", "cannot order an object and a number"),
        ("true < false", "cannot order a boolean and a boolean"),
        ("1 in inputs.city", "got a number in a string"),
    ],
)
def test_comparison_type_errors_name_the_expression(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as err:
        parse_expression(text).evaluate(SCOPE)
    assert fragment in err.value.message


def test_operators_expose_every_path_they_read() -> None:
    expr = parse_expression("not (steps.fetch.output.name == inputs.city) and prev.output.text in 'x'")
    assert [str(p) for p in expr.paths] == [
        "${{ steps.fetch.output.name }}",
        "${{ inputs.city }}",
        "${{ prev.output.text }}",
    ]
    template = compile_template("n=${{ inputs.n > 1 }}")
    assert template is not None and template.render(SCOPE) == "n=true"
