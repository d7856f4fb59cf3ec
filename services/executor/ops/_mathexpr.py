"""A small arithmetic evaluator over Python's AST: numbers, operators, named variables and a math allow-list."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

MAX_INT_BITS = 4096
"""Integer results larger than this are refused: ``9**9**9`` must not eat a worker's memory and CPU."""
MAX_FACTORIAL = 170
"""The largest factorial that still fits a float (171! overflows one)."""

MAX_ROUND_DIGITS = 100

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _factorial(n: Number) -> int:
    if isinstance(n, float):
        if not n.is_integer():
            raise ExpressionError("factorial() takes a whole number")
        n = int(n)
    if not 0 <= n <= MAX_FACTORIAL:
        raise ExpressionError(f"factorial() takes 0..{MAX_FACTORIAL}")
    return math.factorial(n)


def _round(x: Number, ndigits: Number = 0) -> Number:
    # int.__round__ computes 10**-ndigits: round(5, -10**9) would take a worker for hours.
    if not isinstance(ndigits, int) or not -MAX_ROUND_DIGITS <= ndigits <= MAX_ROUND_DIGITS:
        raise ExpressionError(
            f"round() takes a whole number of digits in -{MAX_ROUND_DIGITS}..{MAX_ROUND_DIGITS}"
        )
    return round(x, ndigits)


FUNCTIONS: dict[str, Callable[..., Number]] = {
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "exp": math.exp,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "floor": math.floor,
    "ceil": math.ceil,
    "trunc": math.trunc,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "asin": math.asin,
    "acos": math.acos,
    "atan": math.atan,
    "atan2": math.atan2,
    "hypot": math.hypot,
    "degrees": math.degrees,
    "radians": math.radians,
    "factorial": _factorial,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


class ExpressionError(ValueError):
    """The expression uses something outside the allowed grammar, or its value cannot be computed."""


def evaluate(expression: str, variables: Mapping[str, Number]) -> Number:
    """The value of ``expression``; raises ExpressionError naming what is wrong."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not a valid expression: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ExpressionError("the expression is nested too deeply") from None
    try:
        value = _eval(tree.body, variables)
    except ZeroDivisionError:
        raise ExpressionError("division by zero") from None
    except OverflowError:
        raise ExpressionError("the result is too large") from None
    except RecursionError:
        raise ExpressionError("the expression is nested too deeply") from None
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ExpressionError):
            raise
        raise ExpressionError(f"cannot compute: {exc}") from None
    return _checked(value)


def _checked(value: Any) -> Number:
    if isinstance(value, complex):
        raise ExpressionError("the result is a complex number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionError(f"an intermediate result is larger than {MAX_INT_BITS} bits")
    if isinstance(value, float) and not math.isfinite(value):
        raise ExpressionError("the result is not a finite number")
    return int(value) if isinstance(value, bool) else value


def _eval(node: ast.AST, variables: Mapping[str, Number]) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ExpressionError(f"only numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id in variables:
            return variables[node.id]
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise ExpressionError(f"unknown name {node.id!r} (pass it in variables)")
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, variables), _eval(node.right, variables)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        binary = _BINARY.get(type(node.op))
        if binary is None:
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
        return _checked(binary(left, right))
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed")
        return _checked(unary(_eval(node.operand, variables)))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise ExpressionError(f"only these functions may be called, positionally: {allowed}")
        if len(node.args) > 16:
            raise ExpressionError("a call takes at most 16 arguments")
        args = [_eval(arg, variables) for arg in node.args]
        return _checked(FUNCTIONS[node.func.id](*args))
    raise ExpressionError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def _power(base: Number, exponent: Number) -> Number:
    # Estimate the size before computing: an int power is exact and can be astronomically large.
    exact = isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
    if exact and exponent * math.log2(abs(base)) > MAX_INT_BITS:
        raise ExpressionError(f"an intermediate result is larger than {MAX_INT_BITS} bits")
    return _checked(math.pow(base, exponent) if isinstance(exponent, float) else base**exponent)
