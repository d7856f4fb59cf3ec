"""Expressions in step fields: ``${{ steps.fetch.output.rows[0] }}``, parsed and resolved without eval.

An expression is a path (a root name, then ``.name``, ``[index]`` or ``["key"]`` accessors), a JSON literal,
a comparison (``== != < <= > >= in``, ``not in``) or ``and``/``or``/``not`` over those, with parentheses
(the nodes are in ``expression_nodes.py``). Resolution only ever indexes JSON values (dict keys, list
positions), so nothing can reach a Python attribute, import or call; the source is at most 500 characters,
so evaluation is bounded too. A string that is exactly one ``${{ expr }}`` yields the value itself (any JSON
type); expressions inside a longer string are interpolated as text (JSON for non-strings), with the result's
size bounded. ``$${{`` writes a literal ``${{``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from services.executor.expression_nodes import (
    Accessor,
    BoolOp,
    Compare,
    Expr,
    ExpressionError,
    Literal,
    Not,
    Path,
    truthy,
)

__all__ = [
    "Accessor",
    "BoolOp",
    "Compare",
    "Expr",
    "ExpressionError",
    "Literal",
    "Not",
    "Path",
    "Template",
    "compile_template",
    "has_expression",
    "parse_expression",
    "resolve",
    "strings",
    "truthy",
    "walk",
]

ROOTS = ("steps", "inputs", "prev", "workflow", "task", "item", "index", "error")
OPEN, CLOSE, ESCAPED_OPEN = "${{", "}}", "$${{"
MAX_EXPRESSION_CHARS = 500
MAX_PATH_DEPTH = 32
MAX_PARTS = 200
MAX_TEXT_CHARS = 1024 * 1024

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"-?[0-9]+")
_STRING = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'")

_PATH_END = frozenset(" \t\r\n=!<>()")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
_WORDS = {"true": True, "false": False, "null": None}
MAX_NESTING = 32


def parse_expression(text: str) -> Expr:
    """Parse the inside of ``${{ }}``; ExpressionError says what is wrong and where."""
    src = text.strip()
    if not src:
        raise ExpressionError("empty expression ${{ }}", expression=text)
    if len(src) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"expression longer than {MAX_EXPRESSION_CHARS} characters", expression=src[:80]
        )
    parser = _Parser(src)
    expr = parser.expression()
    parser.skip_space()
    if parser.pos < len(src):
        raise parser.error(
            f"unexpected {src[parser.pos]!r} at {parser.pos}; expressions are paths like "
            "steps.id.output.key[0], literals, comparisons, and/or/not and parentheses"
        )
    return expr


def _parse_path(src: str, pos: int) -> tuple[Path, int]:
    """A path starting at pos, and where it ends (at a space, operator or parenthesis)."""
    m = _IDENT.match(src, pos)
    if not m:
        raise ExpressionError(
            f"${{{{ {src} }}}}: expected a name such as steps, inputs or prev at {pos}", expression=src
        )
    root = m.group()
    if root not in ROOTS:
        raise ExpressionError(
            f"${{{{ {src} }}}}: unknown name {root!r}; expressions start with one of {', '.join(ROOTS)}",
            expression=src,
        )
    start, pos = pos, m.end()
    accessors: list[Accessor] = []
    while pos < len(src) and src[pos] not in _PATH_END:
        if len(accessors) >= MAX_PATH_DEPTH:
            raise ExpressionError(f"${{{{ {src} }}}}: deeper than {MAX_PATH_DEPTH} accessors", expression=src)
        ch = src[pos]
        if ch == ".":
            m = _IDENT.match(src, pos + 1)
            if not m:
                raise ExpressionError(
                    f"${{{{ {src} }}}}: expected a name after '.' at {pos + 1}", expression=src
                )
            accessors.append(_name(m.group(), src))
            pos = m.end()
        elif ch == "[":
            inner = pos + 1
            if (m := _INT.match(src, inner)) is not None:
                accessors.append(int(m.group()))
            elif (m := _STRING.match(src, inner)) is not None:
                raw = m.group(1) if m.group(1) is not None else m.group(2)
                accessors.append(re.sub(r"\\(.)", r"\1", raw))
            else:
                raise ExpressionError(
                    f"${{{{ {src} }}}}: expected an integer or a quoted key after '[' at {pos}",
                    expression=src,
                )
            if m.end() >= len(src) or src[m.end()] != "]":
                raise ExpressionError(f"${{{{ {src} }}}}: missing ']' at {m.end()}", expression=src)
            pos = m.end() + 1
        else:
            raise ExpressionError(
                f"${{{{ {src} }}}}: unexpected {ch!r} at {pos}; only paths like steps.id.output.key[0] are supported",
                expression=src,
            )
    return Path(src[start:pos], root, tuple(accessors)), pos


class _Parser:
    """Recursive descent over the expression source: or > and > not > comparison > primary."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.pos = 0
        self.depth = 0

    def error(self, message: str) -> ExpressionError:
        return ExpressionError(f"${{{{ {self.src} }}}}: {message}", expression=self.src)

    def skip_space(self) -> None:
        while self.pos < len(self.src) and self.src[self.pos] in " \t\r\n":
            self.pos += 1

    def word(self, word: str) -> bool:
        """Consume a keyword if it comes next (as a whole word)."""
        self.skip_space()
        end = self.pos + len(word)
        if self.src.startswith(word, self.pos) and (end >= len(self.src) or self.src[end] in _PATH_END):
            self.pos = end
            return True
        return False

    def expression(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"nested deeper than {MAX_NESTING} levels")
        out = self._chain("or", self._and)
        self.depth -= 1
        return out

    def _chain(self, op: str, operand: Callable[[], Expr]) -> Expr:
        self.skip_space()
        start = self.pos
        items = [operand()]
        while self.word(op):
            items.append(operand())
        if len(items) == 1:
            return items[0]
        return BoolOp(self.src[start : self.pos].strip(), op, tuple(items))

    def _and(self) -> Expr:
        return self._chain("and", self._not)

    def _not(self) -> Expr:
        self.skip_space()
        start = self.pos
        if self.word("not"):
            operand = self._not()
            return Not(self.src[start : self.pos].strip(), operand)
        return self._comparison()

    def _comparison(self) -> Expr:
        self.skip_space()
        start = self.pos
        left = self._primary()
        self.skip_space()
        op = next((c for c in _COMPARISONS if self.src.startswith(c, self.pos)), "")
        if op:
            self.pos += len(op)
        elif self.word("in"):
            op = "in"
        else:
            save = self.pos
            if self.word("not") and self.word("in"):
                op = "not in"
            else:
                self.pos = save
                return left
        right = self._primary()
        return Compare(self.src[start : self.pos].strip(), op, left, right)

    def _primary(self) -> Expr:
        self.skip_space()
        src, pos = self.src, self.pos
        if pos >= len(src):
            raise self.error("the expression ends too early: expected a value")
        if src[pos] == "(":
            self.pos += 1
            inner = self.expression()
            self.skip_space()
            if self.pos >= len(src) or src[self.pos] != ")":
                raise self.error(f"missing ')' at {self.pos}")
            self.pos += 1
            return inner
        if (m := _NUMBER.match(src, pos)) is not None and (m.end() >= len(src) or src[m.end()] in _PATH_END):
            self.pos = m.end()
            text = m.group()
            value = float(text) if any(c in text for c in ".eE") else int(text)
            return Literal(text, value)
        if (m := _STRING.match(src, pos)) is not None:
            self.pos = m.end()
            raw = m.group(1) if m.group(1) is not None else m.group(2)
            return Literal(m.group(), re.sub(r"\\(.)", r"\1", raw))
        if (m := _IDENT.match(src, pos)) is not None and m.group() in _WORDS:
            end = m.end()
            if end >= len(src) or src[end] in _PATH_END:
                self.pos = end
                return Literal(m.group(), _WORDS[m.group()])
        if _IDENT.match(src, pos) is None:
            raise self.error(
                f"unexpected {src[pos]!r} at {pos}; expected a name such as steps, inputs or prev"
            )
        path, self.pos = _parse_path(src, pos)
        return path


def _name(name: str, src: str) -> str:
    if name.startswith("__"):
        raise ExpressionError(f"${{{{ {src} }}}}: names starting with '__' are not allowed", expression=src)
    return name


@dataclass(frozen=True)
class Template:
    """A string with expressions: literal text and expressions, in order."""

    parts: tuple[str | Expr, ...]

    @property
    def whole(self) -> Expr | None:
        """The expression when the string is exactly one (its value keeps its JSON type)."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Expr):
            return self.parts[0]
        return None

    @property
    def expressions(self) -> tuple[Expr, ...]:
        return tuple(p for p in self.parts if isinstance(p, Expr))

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(p for e in self.expressions for p in e.paths)

    def render(self, scope: Mapping[str, Any], *, max_chars: int = MAX_TEXT_CHARS) -> Any:
        """The value (whole expression) or the interpolated text."""
        if (whole := self.whole) is not None:
            return whole.evaluate(scope)
        out: list[str] = []
        size = 0
        for part in self.parts:
            text = part if isinstance(part, str) else _as_text(part.evaluate(scope))
            size += len(text)
            if size > max_chars:
                raise ExpressionError(f"interpolated text is longer than {max_chars} characters")
            out.append(text)
        return "".join(out)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def compile_template(text: str) -> Template | None:
    """Split a string into literal text and expressions; None when it has none (after unescaping)."""
    if OPEN not in text:
        return None
    if len(text) <= _CACHED_CHARS:  # workflows run again and again: parse each short string once
        return _compile_cached(text)
    return _compile(text)


# Templates are immutable, so runs share them; long strings are parsed each time rather than kept.
_CACHED_CHARS = 2048


@functools.lru_cache(maxsize=4096)
def _compile_cached(text: str) -> Template:
    return _compile(text)


def _compile(text: str) -> Template:
    parts: list[str | Expr] = []
    literal: list[str] = []
    pos = 0
    while True:
        start = text.find(OPEN, pos)
        if start < 0:
            literal.append(text[pos:])
            break
        if start > 0 and text[start - 1] == "$" and text.startswith(ESCAPED_OPEN, start - 1):
            literal.append(text[pos : start - 1] + OPEN)
            pos = start + len(OPEN)
            continue
        literal.append(text[pos:start])
        end = text.find(CLOSE, start + len(OPEN))
        if end < 0:
            raise ExpressionError(
                f"unclosed '${{{{' at {start}: expected '}}}}'", expression=text[start:][:80]
            )
        if literal and any(literal):
            parts.append("".join(literal))
        literal = []
        parts.append(parse_expression(text[start + len(OPEN) : end]))
        if len(parts) > MAX_PARTS:
            raise ExpressionError(f"more than {MAX_PARTS} expressions in one string")
        pos = end + len(CLOSE)
    if any(literal):
        parts.append("".join(literal))
    if not any(isinstance(p, Expr) for p in parts):
        return Template(tuple(parts)) if parts else Template(("",))
    return Template(tuple(parts))


def has_expression(value: Any) -> bool:
    """Whether a string (or any string inside a JSON value) contains ``${{``."""
    if isinstance(value, str):
        return OPEN in value
    if isinstance(value, dict):
        return any(has_expression(v) for v in value.values())
    if isinstance(value, list):
        return any(has_expression(v) for v in value)
    return False


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string inside a JSON value with its path (``.url``, ``.headers.auth``, ``[2]``)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings(item, f"{path}[{i}]")


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Template]]:
    """Every templated string inside a JSON value, with its path; raises on the first bad one."""
    for where, text in strings(value, path):
        template = compile_template(text)
        if template is not None and template.expressions:
            yield where, template


def resolve(value: Any, scope: Mapping[str, Any], *, max_chars: int = MAX_TEXT_CHARS) -> Any:
    """A copy of a JSON value with every expression replaced by its value."""
    if isinstance(value, str):
        template = compile_template(value)
        return value if template is None else template.render(scope, max_chars=max_chars)
    if isinstance(value, dict):
        return {k: resolve(v, scope, max_chars=max_chars) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, scope, max_chars=max_chars) for v in value]
    return value
