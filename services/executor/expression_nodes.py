"""What a parsed expression is: paths, literals, comparisons and boolean logic over JSON values only.

Evaluation indexes plain dicts and lists and compares JSON values; nothing reaches a Python attribute,
import or call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidInputError

Accessor = str | int


class ExpressionError(InvalidInputError):
    """An expression that cannot be parsed or resolved; the message quotes the expression."""


class Expr:
    """A parsed expression; ``evaluate`` reads JSON values only."""

    text: str

    def __str__(self) -> str:
        return f"${{{{ {self.text} }}}}"

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    @property
    def paths(self) -> tuple[Path, ...]:
        """The paths the expression reads (for the checks made before a run)."""
        return ()


@dataclass(frozen=True)
class Literal(Expr):
    """A JSON literal: a number, a quoted string, true, false or null."""

    text: str
    value: Any

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        return self.value


@dataclass(frozen=True)
class Not(Expr):
    """``not x``: the negated truthiness of x (null, false, 0, "", [] and {} are false)."""

    text: str
    operand: Expr

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        return not truthy(self.operand.evaluate(scope))

    @property
    def paths(self) -> tuple[Path, ...]:
        return self.operand.paths


@dataclass(frozen=True)
class BoolOp(Expr):
    """``a and b`` / ``a or b``, short-circuited, giving true or false."""

    text: str
    op: str
    operands: tuple[Expr, ...]

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        if self.op == "and":
            return all(truthy(o.evaluate(scope)) for o in self.operands)
        return any(truthy(o.evaluate(scope)) for o in self.operands)

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(p for o in self.operands for p in o.paths)


@dataclass(frozen=True)
class Compare(Expr):
    """``a == b`` and the other comparisons; ordering only between two numbers or two strings."""

    text: str
    op: str
    left: Expr
    right: Expr

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        a, b = self.left.evaluate(scope), self.right.evaluate(scope)
        if self.op == "==":
            return _equal(a, b)
        if self.op == "!=":
            return not _equal(a, b)
        if self.op in ("in", "not in"):
            return _contains(b, a, self) == (self.op == "in")
        numbers = _is_number(a) and _is_number(b)
        if not numbers and not (isinstance(a, str) and isinstance(b, str)):
            raise ExpressionError(
                f"{self}: cannot order {_kind(a)} and {_kind(b)} with {self.op!r}; "
                "only two numbers or two strings",
                expression=self.text,
            )
        if self.op == "<":
            return a < b
        if self.op == "<=":
            return a <= b
        if self.op == ">":
            return a > b
        return a >= b

    @property
    def paths(self) -> tuple[Path, ...]:
        return self.left.paths + self.right.paths


def truthy(value: Any) -> bool:
    """JSON truthiness: null, false, 0, "", [] and {} are false; everything else is true."""
    return bool(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else "a number"


def _equal(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1 (Python says it is).
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if type(a) is list and type(b) is list:
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict and type(b) is dict:
        return a.keys() == b.keys() and all(_equal(v, b[k]) for k, v in a.items())
    return bool(a == b)


def _contains(container: Any, value: Any, expr: Expr) -> bool:
    if type(container) is list:
        return any(_equal(value, x) for x in container)
    if isinstance(container, str) and isinstance(value, str):
        return value in container
    if type(container) is dict and isinstance(value, str):
        return value in container
    raise ExpressionError(
        f"{expr}: 'in' needs a list, a string in a string, or a key in an object; "
        f"got {_kind(value)} in {_kind(container)}",
        expression=expr.text,
    )


@dataclass(frozen=True)
class Path(Expr):
    """A path expression: ``root`` then accessors (str keys, int indexes)."""

    text: str
    root: str
    accessors: tuple[Accessor, ...]

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self,)

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """The value at this path in scope; ExpressionError naming the expression if there is none."""
        if self.root not in scope:
            raise ExpressionError(f"{self}: {_missing_root(self.root)}", expression=self.text)
        value: Any = scope[self.root]
        where = self.root
        for acc in self.accessors:
            value = _index(value, acc, where, self)
            where += f"[{acc}]" if isinstance(acc, int) else f".{acc}"
        return value


def _missing_root(root: str) -> str:
    if root == "prev":
        return "there is no previous step"
    return f"{root!r} is not available here"


def _index(value: Any, acc: Accessor, where: str, path: Path) -> Any:
    # Only plain JSON containers are ever indexed: no getattr, no __getitem__ of arbitrary objects.
    if type(value) is dict:
        if isinstance(acc, int):
            raise ExpressionError(f"{path}: {where} is an object; index it by key, not [{acc}]")
        if acc not in value:
            keys = ", ".join(sorted(str(k) for k in value)[:20]) or "none"
            raise ExpressionError(f"{path}: {where} has no key {acc!r} (keys: {keys})", expression=path.text)
        return value[acc]
    if type(value) is list:
        if not isinstance(acc, int):
            raise ExpressionError(f"{path}: {where} is a list; index it by position, not .{acc}")
        if not -len(value) <= acc < len(value):
            raise ExpressionError(
                f"{path}: index {acc} is out of range for {where} (length {len(value)})", expression=path.text
            )
        return value[acc]
    kind = "null" if value is None else type(value).__name__
    raise ExpressionError(f"{path}: {where} is {kind}, which has no {acc!r}", expression=path.text)
