"""Math and statistics operations: results, edge cases and the errors bad input gets."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from tests.unit.ops.harness import ctx_for, run_op


@pytest.fixture
def ctx(tmp_path: Path) -> OpContext:
    return ctx_for(tmp_path)


def prev(tmp_path: Path, value: Any) -> OpContext:
    return ctx_for(tmp_path, prev=value, has_prev=True)


# -- arithmetic -------------------------------------------------------------------------------------


async def test_sum_is_exact_for_ints_and_compensated_for_floats(ctx: OpContext) -> None:
    assert await run_op("math_sum", {"items": [1, 2, 3]}, ctx) == 6
    assert await run_op("math_sum", {"items": [0.1] * 10}, ctx) == 1.0
    assert await run_op("math_sum", {"items": []}, ctx) == 0
    assert await run_op("math_sum", {"items": [10**30, 1]}, ctx) == 10**30 + 1


async def test_sum_takes_the_previous_output_and_names_a_bad_item(tmp_path: Path) -> None:
    assert await run_op("math_sum", {}, prev(tmp_path, [1.5, 2.5])) == 4.0
    with pytest.raises(InvalidInputError, match=r"items\[1\]: expected a number, got a string"):
        await run_op("math_sum", {}, prev(tmp_path, [1, "2"]))
    with pytest.raises(InvalidInputError, match=r"items\[0\]: nan is not a finite number"):
        await run_op("math_sum", {}, prev(tmp_path, [math.nan]))
    with pytest.raises(InvalidInputError, match="items: expected a list of numbers, got an object"):
        await run_op("math_sum", {}, prev(tmp_path, {"a": 1}))
    with pytest.raises(InvalidInputError, match="items: required"):
        await run_op("math_sum", {}, ctx_for(tmp_path))


async def test_sum_overflow_and_params_refuse_booleans(ctx: OpContext) -> None:
    with pytest.raises(InvalidInputError, match="sum is not a finite number"):
        await run_op("math_sum", {"items": [1e308, 1e308]}, ctx)
    with pytest.raises(ValidationError, match="items"):
        await run_op("math_sum", {"items": [True, 1]}, ctx)


async def test_product_bounds_huge_integers(ctx: OpContext) -> None:
    assert await run_op("math_product", {"items": [2, 3, 4]}, ctx) == 24
    assert await run_op("math_product", {"items": []}, ctx) == 1
    assert await run_op("math_product", {"items": [0.5, 4]}, ctx) == 2.0
    with pytest.raises(InvalidInputError, match="larger than 4096 bits"):
        await run_op("math_product", {"items": [10**300] * 5}, ctx)


@pytest.mark.parametrize(
    ("value", "params", "expected"),
    [
        (2.675, {"decimals": 2, "mode": "half_up"}, 2.68),
        (2.5, {}, 2),
        (3.5, {}, 4),
        (2.5, {"mode": "half_up"}, 3),
        (-2.5, {"mode": "floor"}, -3),
        (1234, {"decimals": -2}, 1200),
        (1.005, {"decimals": 2, "mode": "half_up"}, 1.01),
        (2.5, {"decimals": 2, "as_string": True}, "2.50"),
        ([1.26, 1.24], {"decimals": 1}, [1.3, 1.2]),
        (1e30, {"decimals": 2, "as_string": True}, "1000000000000000000000000000000.00"),
        (10**40 + 7, {"decimals": -1}, 10**40 + 10),
    ],
)
async def test_round_in_decimal(ctx: OpContext, value: Any, params: dict[str, Any], expected: Any) -> None:
    assert await run_op("math_round", {"value": value, **params}, ctx) == expected


async def test_round_refuses_bad_mode_and_non_numbers(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="mode"):
        await run_op("math_round", {"value": 1, "mode": "bankers"}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match="value: expected a number, got a string"):
        await run_op("math_round", {}, prev(tmp_path, "1.5"))


async def test_abs_and_clamp(ctx: OpContext) -> None:
    assert await run_op("math_abs", {"value": -3.5}, ctx) == 3.5
    assert await run_op("math_abs", {"value": [-1, 2, -3]}, ctx) == [1, 2, 3]
    assert await run_op("math_clamp", {"value": [-5, 5, 50], "min": 0, "max": 10}, ctx) == [0, 5, 10]
    assert await run_op("math_clamp", {"value": 7.5, "min": 0, "max": 10}, ctx) == 7.5
    with pytest.raises(ValidationError, match=r"min .* must not be greater than max"):
        await run_op("math_clamp", {"value": 1, "min": 5, "max": 1}, ctx)


async def test_min_max(ctx: OpContext) -> None:
    assert await run_op("math_min_max", {"items": [3, -1, 7, 7]}, ctx) == {
        "min": -1,
        "max": 7,
        "min_index": 1,
        "max_index": 2,
        "range": 8,
    }
    with pytest.raises(InvalidInputError, match="items: needs at least 1 number, got 0"):
        await run_op("math_min_max", {"items": []}, ctx)


# -- expressions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "variables", "expected"),
    [
        ("1 + 2 * 3", {}, 7),
        ("(1 + 2) * 3", {}, 9),
        ("2 ** 10 // 3 % 7", {}, 341 % 7),
        ("-x + y / 4", {"x": 1, "y": 10}, 1.5),
        ("round(sqrt(2), 3)", {}, 1.414),
        ("max(1, min(5, 3), 2)", {}, 3),
        ("2 * pi", {}, 2 * math.pi),
        ("factorial(5)", {}, 120),
    ],
)
async def test_evaluate(ctx: OpContext, expression: str, variables: dict[str, Any], expected: Any) -> None:
    assert await run_op("math_evaluate", {"expression": expression, "variables": variables}, ctx) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('id')", "only these functions may be called"),
        ("(1).real", "Attribute is not allowed"),
        ("[1, 2]", "List is not allowed"),
        ("'a' * 10", "only numbers are allowed"),
        ("x + 1", "unknown name 'x'"),
        ("9 ** 9 ** 9", "larger than 4096 bits"),
        ("10.0 ** 400", "too large"),
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "cannot compute"),
        ("factorial(1000)", "factorial"),
        ("round(5, -10 ** 9)", "round\\(\\) takes a whole number of digits"),
        ("1 +", "not a valid expression"),
        ("1 < 2", "Compare is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("-" * 900 + "1", None),
    ],
)
async def test_evaluate_refuses_what_is_not_arithmetic(
    ctx: OpContext, expression: str, message: str | None
) -> None:
    if message is None:  # deep but legal nesting still evaluates
        assert await run_op("math_evaluate", {"expression": expression}, ctx) == 1
        return
    with pytest.raises(InvalidInputError, match=f"expression: .*{message}"):
        await run_op("math_evaluate", {"expression": expression}, ctx)


async def test_evaluate_refuses_bad_variable_names(ctx: OpContext) -> None:
    with pytest.raises(ValidationError, match="variables"):
        await run_op("math_evaluate", {"expression": "1", "variables": {"not a name": 1}}, ctx)


# -- vectors, units, formatting, parsing ------------------------------------------------------------


async def test_cosine_similarity(ctx: OpContext) -> None:
    assert await run_op("vector_cosine_similarity", {"a": [1, 0], "b": [0, 5]}, ctx) == 0
    assert await run_op("vector_cosine_similarity", {"a": [1, 2, 3], "b": [2, 4, 6]}, ctx) == pytest.approx(1)
    assert await run_op("vector_cosine_similarity", {"a": [1, 1], "b": [-1, -1]}, ctx) == pytest.approx(-1)
    with pytest.raises(InvalidInputError, match="b: has 3 items but a has 2"):
        await run_op("vector_cosine_similarity", {"a": [1, 2], "b": [1, 2, 3]}, ctx)
    with pytest.raises(InvalidInputError, match="a: a zero vector"):
        await run_op("vector_cosine_similarity", {"a": [0, 0], "b": [1, 2]}, ctx)


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (100, "degC", "degF", 212),
        (5, "km", "mile", 3.10685596119),
        (36, "km/h", "m/s", 10),
        (1, "GiB", "MiB", 1024),
        ([1, 2], "kg", "g", [1000, 2000]),
        (90, "minute", "hour", 1.5),
    ],
)
async def test_convert_units(ctx: OpContext, value: Any, source: str, target: str, expected: Any) -> None:
    result = await run_op("math_convert_units", {"value": value, "from_unit": source, "to_unit": target}, ctx)
    assert result == pytest.approx(expected)


async def test_convert_units_errors_name_the_param(ctx: OpContext) -> None:
    with pytest.raises(InvalidInputError, match=r"to_unit: cannot convert 'km' .* to 'kg'"):
        await run_op("math_convert_units", {"value": 1, "from_unit": "km", "to_unit": "kg"}, ctx)
    with pytest.raises(InvalidInputError, match="from_unit: unknown unit 'parsec2'"):
        await run_op("math_convert_units", {"value": 1, "from_unit": "parsec2", "to_unit": "m"}, ctx)
    with pytest.raises(ValidationError, match="from_unit"):
        await run_op("math_convert_units", {"value": 1, "from_unit": "__import__('os')", "to_unit": "m"}, ctx)
    with pytest.raises(ValidationError, match="to_unit"):
        await run_op("math_convert_units", {"value": 1, "from_unit": "m", "to_unit": "km**999"}, ctx)
    assert (
        await run_op("math_convert_units", {"value": 1, "from_unit": "m^2", "to_unit": "cm**2"}, ctx) == 10000
    )


@pytest.mark.parametrize(
    ("value", "params", "expected"),
    [
        (1234567.891, {"decimals": 2}, "1,234,567.89"),
        (1234.5, {"decimals": 2, "prefix": "$"}, "$1,234.50"),
        (-1234.5, {"decimals": 2, "prefix": "$"}, "-$1,234.50"),
        (
            1234.5,
            {"decimals": 2, "thousands_separator": ".", "decimal_separator": ",", "suffix": " €"},
            "1.234,50 €",
        ),
        (0.1234, {"style": "percent", "decimals": 1}, "12.3%"),
        (1234, {"thousands_separator": ""}, "1234"),
        (123456, {"style": "scientific", "decimals": 2}, "1.23e+5"),
        ([1, 2.5], {"decimals": 1}, ["1.0", "2.5"]),
        (1e30, {"decimals": 0, "thousands_separator": ""}, "1" + "0" * 30),
    ],
)
async def test_format_number(ctx: OpContext, value: Any, params: dict[str, Any], expected: Any) -> None:
    assert await run_op("math_format_number", {"value": value, **params}, ctx) == expected


async def test_format_number_refuses_same_separators(ctx: OpContext) -> None:
    with pytest.raises(ValidationError, match="must differ"):
        await run_op("math_format_number", {"value": 1, "thousands_separator": "."}, ctx)


@pytest.mark.parametrize(
    ("text", "separator", "expected"),
    [
        ("1,234.50", ".", 1234.5),
        ("  42 ", ".", 42),
        ("-$1 234", ".", -1234),
        ("1.234,50 EUR", ",", 1234.5),
        ("3e5", ".", 300000.0),
        ("12%", ".", 12),
        ("−7.5", ".", -7.5),
    ],
)
async def test_parse_number(ctx: OpContext, text: str, separator: str, expected: Any) -> None:
    result = await run_op("math_parse_number", {"text": text, "decimal_separator": separator}, ctx)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("text", ["abc", "", "1.5k", "12 apples", "1,23,4", "--5"])
async def test_parse_number_refuses_text_that_is_not_one_number(ctx: OpContext, text: str) -> None:
    with pytest.raises(InvalidInputError, match=r"text: .* is not a number"):
        await run_op("math_parse_number", {"text": text}, ctx)


async def test_extract_numbers(tmp_path: Path) -> None:
    text = "3 items at 1,299.99 each, 2 100-packs, -4 and 1e3"
    assert await run_op("math_extract_numbers", {}, prev(tmp_path, text)) == [3, 1299.99, 2, 100, -4, 1000.0]
    assert await run_op("math_extract_numbers", {"text": "none here"}, ctx_for(tmp_path)) == []
    assert await run_op("math_extract_numbers", {"text": "1 2 3", "limit": 2}, ctx_for(tmp_path)) == [1, 2]
    with pytest.raises(InvalidInputError, match="text: expected a string, got a list"):
        await run_op("math_extract_numbers", {}, prev(tmp_path, [1]))


# -- statistics -------------------------------------------------------------------------------------

DATA = [2, 4, 4, 4, 5, 5, 7, 9]


async def test_describe(ctx: OpContext) -> None:
    out = await run_op("stats_describe", {"items": DATA}, ctx)
    assert out["count"] == 8 and out["sum"] == 40 and out["mean"] == 5 and out["median"] == 4.5
    assert out["min"] == 2 and out["max"] == 9 and out["range"] == 7
    assert out["stdev"] == pytest.approx(statistics.stdev(DATA))
    assert out["variance"] == pytest.approx(statistics.variance(DATA))
    assert (out["q1"], out["q3"]) == (4, 5.5)
    single = await run_op("stats_describe", {"items": [3]}, ctx)
    assert single["stdev"] is None and single["q1"] == 3


async def test_means(ctx: OpContext) -> None:
    assert await run_op("stats_mean", {"items": DATA}, ctx) == 5
    assert await run_op("stats_mean", {"items": [1, 3], "weights": [3, 1]}, ctx) == 1.5
    assert await run_op("stats_mean", {"items": [1, 4, 16], "kind": "geometric"}, ctx) == pytest.approx(4)
    assert await run_op("stats_mean", {"items": [40, 60], "kind": "harmonic"}, ctx) == 48
    with pytest.raises(InvalidInputError, match="weights: 1 weights for 2 items"):
        await run_op("stats_mean", {"items": [1, 2], "weights": [1]}, ctx)
    with pytest.raises(InvalidInputError, match="items: the geometric mean needs positive numbers"):
        await run_op("stats_mean", {"items": [1, -2], "kind": "geometric"}, ctx)


async def test_median_and_mode(ctx: OpContext) -> None:
    assert await run_op("stats_median", {"items": [1, 3, 2, 4]}, ctx) == 2.5
    assert await run_op("stats_median", {"items": [1, 3, 2, 4], "kind": "low"}, ctx) == 2
    assert await run_op("stats_median", {"items": [1, 3, 2, 4], "kind": "high"}, ctx) == 3
    assert await run_op("stats_mode", {"items": ["a", "b", "b", "a", "c"]}, ctx) == ["a", "b"]
    assert await run_op("stats_mode", {"items": DATA}, ctx) == [4]
    with pytest.raises(InvalidInputError, match="items: expected a non-empty list"):
        await run_op("stats_mode", {"items": []}, ctx)


async def test_stdev_and_variance(ctx: OpContext) -> None:
    assert await run_op("stats_stdev", {"items": DATA, "population": True}, ctx) == 2
    assert await run_op("stats_variance", {"items": DATA, "population": True}, ctx) == 4
    assert await run_op("stats_variance", {"items": DATA}, ctx) == pytest.approx(32 / 7)
    with pytest.raises(InvalidInputError, match="items: needs at least 2 numbers, got 1"):
        await run_op("stats_stdev", {"items": [1]}, ctx)


async def test_quantiles_and_percentiles(ctx: OpContext) -> None:
    assert await run_op("stats_quantiles", {"items": list(range(1, 11)), "n": 4}, ctx) == [2.75, 5.5, 8.25]
    assert await run_op("stats_quantiles", {"items": [1, 2, 3, 4, 5], "method": "inclusive"}, ctx) == [
        2,
        3,
        4,
    ]
    pcts = await run_op("stats_percentile", {"items": [1, 2, 3, 4, 5], "percentiles": [0, 50, 90, 100]}, ctx)
    assert pcts == [1, 3, pytest.approx(4.6), 5]
    with pytest.raises(ValidationError, match="percentiles"):
        await run_op("stats_percentile", {"items": [1, 2], "percentiles": [101]}, ctx)


async def test_histogram(ctx: OpContext) -> None:
    out = await run_op("stats_histogram", {"items": [0, 1, 2, 3, 4, 10], "bins": 2}, ctx)
    assert [(b["start"], b["end"], b["count"]) for b in out["bins"]] == [(0, 5, 5), (5, 10, 1)]
    edged = await run_op("stats_histogram", {"items": [-1, 0, 5, 9, 10, 11], "edges": [0, 5, 10]}, ctx)
    assert [b["count"] for b in edged["bins"]] == [1, 3] and edged["below"] == 1 and edged["above"] == 1
    flat = await run_op("stats_histogram", {"items": [3, 3], "bins": 1}, ctx)
    assert flat["bins"][0]["count"] == 2
    with pytest.raises(ValidationError, match="strictly increasing"):
        await run_op("stats_histogram", {"items": [1], "edges": [0, 0]}, ctx)


async def test_zscores(ctx: OpContext) -> None:
    assert await run_op("stats_zscores", {"items": DATA}, ctx) == [-1.5, -0.5, -0.5, -0.5, 0, 0, 1, 2]
    with pytest.raises(InvalidInputError, match="all numbers are equal"):
        await run_op("stats_zscores", {"items": [2, 2, 2]}, ctx)


async def test_correlation(ctx: OpContext) -> None:
    x = [1, 2, 3, 4, 5]
    assert await run_op("stats_correlation", {"x": x, "y": [2, 4, 6, 8, 10]}, ctx) == pytest.approx(1)
    assert await run_op("stats_correlation", {"x": x, "y": [1, 4, 9, 16, 100]}, ctx) < 1
    assert (
        await run_op("stats_correlation", {"x": x, "y": [1, 4, 9, 16, 100], "method": "spearman"}, ctx) == 1
    )
    with pytest.raises(InvalidInputError, match="x: at least one of the inputs is constant"):
        await run_op("stats_correlation", {"x": x, "y": [1, 1, 1, 1, 1]}, ctx)
    with pytest.raises(ValidationError, match="same length"):
        await run_op("stats_correlation", {"x": x, "y": [1, 2]}, ctx)


async def test_linear_regression(ctx: OpContext) -> None:
    out = await run_op(
        "stats_linear_regression", {"x": [0, 1, 2, 3], "y": [1, 3, 5, 7], "predict": [10]}, ctx
    )
    assert out == {"slope": 2, "intercept": 1, "r_squared": 1, "predictions": [21]}
    through_origin = await run_op(
        "stats_linear_regression", {"x": [1, 2, 3], "y": [2, 4, 7], "proportional": True}, ctx
    )
    assert through_origin["intercept"] == 0 and through_origin["slope"] == pytest.approx(31 / 14)
    with pytest.raises(InvalidInputError, match="x: x is constant"):
        await run_op("stats_linear_regression", {"x": [1, 1], "y": [1, 2]}, ctx)


async def test_moving_average(tmp_path: Path) -> None:
    assert await run_op("stats_moving_average", {"window": 2}, prev(tmp_path, [1, 3, 5, 7])) == [2, 4, 6]
    with pytest.raises(InvalidInputError, match="items: needs at least 5 numbers, got 4"):
        await run_op("stats_moving_average", {"items": [1, 2, 3, 4], "window": 5}, ctx_for(tmp_path))


async def test_big_lists_are_crunched_off_the_loop_with_the_same_result(ctx: OpContext) -> None:
    items = list(range(20_000))
    assert await run_op("stats_median", {"items": items}, ctx) == 9999.5
    assert (await run_op("stats_moving_average", {"items": items, "window": 10_000}, ctx))[-1] == 14999.5
