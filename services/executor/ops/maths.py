"""Math operations: arithmetic on numbers and lists, safe expressions, units, number formatting and parsing.

The statistics operations live in ``_stats`` and are listed here, so the family registers as one module.
"""

from __future__ import annotations

import asyncio
import math
import re
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops import _stats
from services.executor.ops._mathexpr import ExpressionError, evaluate
from services.executor.ops._numbers import (
    MAX_ITEMS,
    FiniteNumber,
    ItemsParams,
    Number,
    NumberList,
    crunch,
    finite,
    kind,
    number,
    numbers,
)
from services.executor.ops.base import Params, input_or_prev, operation

MAX_INT_BITS = 4096
# Enough digits to quantize any finite float (1e308 has 309) or JSON integer without an InvalidOperation.
_EXACT = Context(prec=5000)
RoundingMode = Literal["half_even", "half_up", "half_down", "up", "down", "ceiling", "floor"]
_ROUNDING = {
    "half_even": "ROUND_HALF_EVEN",
    "half_up": "ROUND_HALF_UP",
    "half_down": "ROUND_HALF_DOWN",
    "up": "ROUND_UP",
    "down": "ROUND_DOWN",
    "ceiling": "ROUND_CEILING",
    "floor": "ROUND_FLOOR",
}
VariableName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


def _small_powers(unit: str) -> str:
    # Unit names and small powers only (m^2, km/h): 'm**99999999' would make pint compute 1000**99999999.
    if re.search(r"\d{3}", unit):
        raise ValueError("numbers in a unit have at most 2 digits")
    return unit


UnitName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_ /*^().°µ-]+$"),
    AfterValidator(_small_powers),
]


def _number_or_list(value: Any, param: str) -> Number | list[Number]:
    return numbers(value, param, at_least=0) if isinstance(value, list) else number(value, param)


def _each(value: Number | list[Number], fn: Any) -> Any:
    return [fn(item) for item in value] if isinstance(value, list) else fn(value)


class ValueParams(Params):
    value: FiniteNumber | NumberList | None = Field(
        None, description="A number or a list of numbers; the previous step's output when omitted."
    )


@operation("math_sum", category="math", params=ItemsParams)
async def math_sum(p: ItemsParams, ctx: OpContext) -> Number:
    """Sum a list of numbers (exact for integers, compensated float summation otherwise); [] sums to 0."""
    items = numbers(input_or_prev(p, "items", ctx), "items", at_least=0)
    if all(isinstance(x, int) for x in items):
        return sum(items)
    try:
        return finite(math.fsum(items), "sum", "items")
    except OverflowError:
        raise InvalidInputError("items: the sum is not a finite number (overflow)", param="items") from None


@operation("math_product", category="math", params=ItemsParams)
async def math_product(p: ItemsParams, ctx: OpContext) -> Number:
    """Multiply a list of numbers together; [] gives 1. Integer products past 4096 bits are refused."""
    items = numbers(input_or_prev(p, "items", ctx), "items", at_least=0)
    result: Number = 1
    for item in items:
        try:
            result *= item
        except OverflowError:
            raise InvalidInputError(
                "items: the product is not a finite number (overflow)", param="items"
            ) from None
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise InvalidInputError(f"items: the product is larger than {MAX_INT_BITS} bits", param="items")
    return finite(result, "product", "items")


class RoundParams(ValueParams):
    decimals: int = Field(
        0, ge=-15, le=15, description="Digits after the point (negative: round to tens...)."
    )
    mode: RoundingMode = Field("half_even", description="Rounding rule, as in Python's decimal module.")
    as_string: bool = Field(
        False, description="Return the exact decimal text (e.g. '2.50') instead of a number."
    )


@operation("math_round", category="math", params=RoundParams)
async def math_round(p: RoundParams, ctx: OpContext) -> Any:
    """Round a number or each number of a list to fixed decimals with a chosen rule (half_up for money),
    computed in decimal so 2.675 rounds as written."""
    value = _number_or_list(input_or_prev(p, "value", ctx), "value")
    quantum = Decimal(1).scaleb(-p.decimals)
    rounding = _ROUNDING[p.mode]

    def one(x: Number) -> Any:
        exact = Decimal(str(x)).quantize(quantum, rounding=rounding, context=_EXACT)
        if p.as_string:
            return format(exact, "f")
        return int(exact) if p.decimals <= 0 else float(exact)

    return _each(value, one)


@operation("math_abs", category="math", params=ValueParams)
async def math_abs(p: ValueParams, ctx: OpContext) -> Any:
    """The absolute value of a number, or of each number in a list."""
    return _each(_number_or_list(input_or_prev(p, "value", ctx), "value"), abs)


class ClampParams(ValueParams):
    min: FiniteNumber = Field(description="The lower bound.")
    max: FiniteNumber = Field(description="The upper bound (at least min).")

    @model_validator(mode="after")
    def _ordered(self) -> ClampParams:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not be greater than max ({self.max})")
        return self


@operation("math_clamp", category="math", params=ClampParams)
async def math_clamp(p: ClampParams, ctx: OpContext) -> Any:
    """Limit a number, or each number of a list, to the range [min, max]."""
    value = _number_or_list(input_or_prev(p, "value", ctx), "value")
    return _each(value, lambda x: min(max(x, p.min), p.max))


@operation("math_min_max", category="math", params=ItemsParams)
async def math_min_max(p: ItemsParams, ctx: OpContext) -> dict[str, Number]:
    """The smallest and largest number of a list: {min, max, min_index, max_index, range}."""
    items = numbers(input_or_prev(p, "items", ctx), "items")
    low = min(range(len(items)), key=items.__getitem__)
    high = max(range(len(items)), key=items.__getitem__)
    return {
        "min": items[low],
        "max": items[high],
        "min_index": low,
        "max_index": high,
        "range": finite(items[high] - items[low], "range", "items"),
    }


class EvaluateParams(Params):
    expression: str = Field(
        min_length=1,
        max_length=1000,
        description="Arithmetic: numbers, + - * / // % **, parentheses, "
        "variables, pi/e/tau, and math functions (sqrt, log, sin, round, min, max...).",
    )
    variables: dict[VariableName, FiniteNumber] = Field(
        default_factory=dict, max_length=100, description="Names the expression may use, with their values."
    )


@operation("math_evaluate", category="math", params=EvaluateParams)
async def math_evaluate(p: EvaluateParams, ctx: OpContext) -> Number:
    """Evaluate an arithmetic expression safely (no attribute access, no calls outside a math allow-list,
    bounded integer size); returns the number."""
    try:
        return evaluate(p.expression, p.variables)
    except ExpressionError as exc:
        raise InvalidInputError(f"expression: {exc}", param="expression") from None


class CosineParams(Params):
    a: NumberList = Field(min_length=1, description="The first vector.")
    b: NumberList = Field(min_length=1, description="The second vector, as long as a.")


@operation("vector_cosine_similarity", category="math", params=CosineParams)
async def vector_cosine_similarity(p: CosineParams, ctx: OpContext) -> float:
    """Cosine similarity of two equal-length vectors, from -1 (opposite) to 1 (same direction)."""
    if len(p.a) != len(p.b):
        raise InvalidInputError(f"b: has {len(p.b)} items but a has {len(p.a)}", param="b")

    def compute() -> float:
        norm_a, norm_b = math.hypot(*p.a), math.hypot(*p.b)
        for name, norm in (("a", norm_a), ("b", norm_b)):
            if norm == 0:
                raise InvalidInputError(f"{name}: a zero vector has no direction", param=name)
        dot = math.fsum(x * y for x, y in zip(p.a, p.b, strict=True))
        return max(-1.0, min(1.0, dot / norm_a / norm_b))

    return await crunch(compute, len(p.a))


class ConvertUnitsParams(ValueParams):
    from_unit: UnitName = Field(description="Unit of the value: 'km', 'mile', 'degC', 'kg', 'MiB', 'km/h'...")
    to_unit: UnitName = Field(description="Unit to convert to, of the same dimension.")


@lru_cache(maxsize=1)
def _units() -> Any:
    import pint  # imported on first use: the registry takes a few hundred ms to build

    return pint.UnitRegistry(autoconvert_offset_to_baseunit=True)


@operation("math_convert_units", category="math", params=ConvertUnitsParams)
async def math_convert_units(p: ConvertUnitsParams, ctx: OpContext) -> Any:
    """Convert a number, or each number of a list, between units of the same dimension (length, mass,
    time, temperature, volume, speed, data, energy... via pint); results keep 12 significant digits."""
    import pint

    value = _number_or_list(input_or_prev(p, "value", ctx), "value")
    registry = await asyncio.to_thread(_units)

    def unit(name: str, param: str) -> Any:
        try:
            return registry.Unit(name)
        except (pint.errors.UndefinedUnitError, pint.errors.DefinitionSyntaxError, ValueError, TypeError):
            raise InvalidInputError(f"{param}: unknown unit {name!r}", param=param) from None
        except Exception as exc:  # pint's parser raises assorted errors on odd text
            raise InvalidInputError(f"{param}: cannot read unit {name!r}: {exc}", param=param) from None

    source, target = unit(p.from_unit, "from_unit"), unit(p.to_unit, "to_unit")

    def one(x: Number) -> float:
        try:
            converted = registry.Quantity(x, source).to(target).magnitude
        except pint.errors.DimensionalityError:
            raise InvalidInputError(
                f"to_unit: cannot convert {p.from_unit!r} ({source.dimensionality}) to {p.to_unit!r} "
                f"({target.dimensionality})",
                param="to_unit",
            ) from None
        except (OverflowError, ZeroDivisionError, ValueError, TypeError):
            raise InvalidInputError(
                f"value: cannot convert {x} {p.from_unit} to {p.to_unit}", param="value"
            ) from None
        return float(f"{finite(float(converted), 'converted value', 'value'):.12g}")

    return await crunch(lambda: _each(value, one), len(value) if isinstance(value, list) else 1)


class FormatNumberParams(ValueParams):
    decimals: int | None = Field(
        None,
        ge=0,
        le=20,
        description="Fixed digits after the point (rounded half up); as needed when omitted.",
    )
    style: Literal["decimal", "percent", "scientific"] = Field(
        "decimal", description="percent multiplies by 100 and appends %; scientific uses an exponent."
    )
    thousands_separator: str = Field(",", max_length=1, description="Group separator ('' for none).")
    decimal_separator: str = Field(".", min_length=1, max_length=1, description="The decimal point.")
    prefix: str = Field("", max_length=16, description="Text before the number (e.g. a currency sign).")
    suffix: str = Field("", max_length=16, description="Text after the number (e.g. ' EUR').")

    @model_validator(mode="after")
    def _distinct(self) -> FormatNumberParams:
        if self.thousands_separator == self.decimal_separator:
            raise ValueError("thousands_separator and decimal_separator must differ")
        return self


@operation("math_format_number", category="math", params=FormatNumberParams)
async def math_format_number(p: FormatNumberParams, ctx: OpContext) -> Any:
    """Format a number (or each of a list) as text: thousands separators, fixed decimals, percent or
    scientific, with a prefix/suffix, e.g. 1234.5 -> '$1,234.50'."""
    value = _number_or_list(input_or_prev(p, "value", ctx), "value")

    def one(x: Number) -> str:
        exact = Decimal(str(x))
        if p.style == "scientific":
            spec = f".{p.decimals}e" if p.decimals is not None else "e"
            text = format(exact, spec)
        else:
            if p.style == "percent":
                exact = _EXACT.multiply(exact, 100)
            if p.decimals is not None:
                exact = exact.quantize(Decimal(1).scaleb(-p.decimals), rounding=ROUND_HALF_UP, context=_EXACT)
            text = format(exact, ",f")
        text = text.replace(",", "\0").replace(".", p.decimal_separator).replace("\0", p.thousands_separator)
        sign = "-" if text.startswith("-") else ""
        percent = "%" if p.style == "percent" else ""
        return f"{sign}{p.prefix}{text.removeprefix('-')}{percent}{p.suffix}"

    return _each(value, one)


class ParseNumberParams(Params):
    text: str | None = Field(
        None, max_length=100_000, description="The text; the previous step's output when omitted."
    )
    decimal_separator: Literal[".", ","] = Field(
        ".", description="The decimal point of the text: '.' (1,234.5) or ',' (1.234,5)."
    )


def _number_pattern(decimal_separator: str, group: str) -> re.Pattern[str]:
    point = re.escape(decimal_separator)
    groups = f"[{re.escape(group)}]"
    return re.compile(rf"[-+−]?(?:\d{{1,3}}(?:{groups}\d{{3}})+|\d+)?(?:{point}\d+)?(?:[eE][-+]?\d+)?")


# A whole-text number may group digits with spaces; inside prose "3 100-packs" must stay two numbers.
_WHOLE = {sep: _number_pattern(sep, ("," if sep == "." else ".") + "  '_") for sep in ".,"}
_INSIDE = {sep: _number_pattern(sep, ("," if sep == "." else ".") + "'") for sep in ".,"}
_DECORATED = re.compile(
    r"\s*(?P<sign>[-+−]?)\s*(?:[$€£¥₹]|[A-Z]{3})?\s*(?P<core>.*?)\s*(?:[$€£¥₹%]|[A-Z]{3})?\s*", re.DOTALL
)


def _to_number(raw: str, decimal_separator: str) -> Number:
    cleaned = raw.replace("−", "-")
    for sep in (",", ".", " ", " ", "'", "_"):
        if sep != decimal_separator:
            cleaned = cleaned.replace(sep, "")
    cleaned = cleaned.replace(decimal_separator, ".")
    try:
        exact = Decimal(cleaned)
    except InvalidOperation:
        raise InvalidInputError(f"text: {raw!r} is not a number", param="text") from None
    if exact == exact.to_integral_value() and "." not in cleaned and "e" not in cleaned.lower():
        return int(exact)
    return finite(float(exact), "number", "text")


def _numbers_in(text: str, decimal_separator: str) -> list[str]:
    found = _INSIDE[decimal_separator].finditer(text)
    return [m.group() for m in found if any(c.isdigit() for c in m.group())]


@operation("math_parse_number", category="math", params=ParseNumberParams)
async def math_parse_number(p: ParseNumberParams, ctx: OpContext) -> Number:
    """Read the one number a text holds: '1,234.50', '-$1 234', '1.234,50 EUR' (decimal_separator ','),
    '3e5', '12%' (-> 12); a currency sign or code and % around it are allowed. Int when there is no fraction."""
    text = input_or_prev(p, "text", ctx)
    if not isinstance(text, str):
        raise InvalidInputError(f"text: expected a string, got {kind(text)}", param="text")
    decorated = _DECORATED.fullmatch(text)
    core = decorated["core"] if decorated else ""
    if not any(c.isdigit() for c in core) or not _WHOLE[p.decimal_separator].fullmatch(core):
        raise InvalidInputError(f"text: {text[:80]!r} is not a number", param="text")
    return _to_number(f"{decorated['sign'] if decorated else ''}{core}", p.decimal_separator)


class ExtractNumbersParams(ParseNumberParams):
    limit: int = Field(1000, ge=1, le=MAX_ITEMS, description="At most this many numbers are returned.")


@operation("math_extract_numbers", category="math", params=ExtractNumbersParams)
async def math_extract_numbers(p: ExtractNumbersParams, ctx: OpContext) -> list[Number]:
    """Find every number in a text, in order ('3 items at 1,299.99' -> [3, 1299.99]); [] if there is none."""
    text = input_or_prev(p, "text", ctx)
    if not isinstance(text, str):
        raise InvalidInputError(f"text: expected a string, got {kind(text)}", param="text")
    found = await crunch(lambda: _numbers_in(text, p.decimal_separator)[: p.limit], len(text))
    return [_to_number(raw, p.decimal_separator) for raw in found]


OPERATIONS = (
    math_sum,
    math_product,
    math_round,
    math_abs,
    math_clamp,
    math_min_max,
    math_evaluate,
    vector_cosine_similarity,
    math_convert_units,
    math_format_number,
    math_parse_number,
    math_extract_numbers,
    *_stats.OPERATIONS,
)
