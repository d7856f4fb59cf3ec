"""Expressions in step params: ``${{ steps.fetch.output.rows[0] }}``, parsed and resolved without eval.

An expression is a path: a root name, then ``.name``, ``[index]`` or ``["key"]`` accessors. Resolution
only ever indexes JSON values (dict keys, list positions), so nothing can reach a Python attribute,
import or call. A string that is exactly one ``${{ expr }}`` yields the value itself (any JSON type);
expressions inside a longer string are interpolated as text (JSON for non-strings), with the result's
size bounded. ``$${{`` writes a literal ``${{``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidInputError

ROOTS = ("steps", "inputs", "prev", "workflow", "task")
OPEN, CLOSE, ESCAPED_OPEN = "${{", "}}", "$${{"
MAX_EXPRESSION_CHARS = 500
MAX_PATH_DEPTH = 32
MAX_PARTS = 200
MAX_TEXT_CHARS = 1024 * 1024

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"-?[0-9]+")
_STRING = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'")

Accessor = str | int


class ExpressionError(InvalidInputError):
    """An expression that cannot be parsed or resolved; the message quotes the expression."""


@dataclass(frozen=True)
class Path:
    """A parsed expression: ``root`` then accessors (str keys, int indexes)."""

    text: str
    root: str
    accessors: tuple[Accessor, ...]

    def __str__(self) -> str:
        return f"${{{{ {self.text} }}}}"

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


def parse_expression(text: str) -> Path:
    """Parse the inside of ``${{ }}``; ExpressionError says what is wrong and where."""
    src = text.strip()
    if not src:
        raise ExpressionError("empty expression ${{ }}", expression=text)
    if len(src) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"expression longer than {MAX_EXPRESSION_CHARS} characters", expression=src[:80]
        )
    m = _IDENT.match(src)
    if not m:
        raise ExpressionError(
            f"${{{{ {src} }}}}: expected a name such as steps, inputs or prev", expression=src
        )
    root = m.group()
    if root not in ROOTS:
        raise ExpressionError(
            f"${{{{ {src} }}}}: unknown name {root!r}; expressions start with one of {', '.join(ROOTS)}",
            expression=src,
        )
    pos = m.end()
    accessors: list[Accessor] = []
    while pos < len(src):
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
    return Path(src, root, tuple(accessors))


def _name(name: str, src: str) -> str:
    if name.startswith("__"):
        raise ExpressionError(f"${{{{ {src} }}}}: names starting with '__' are not allowed", expression=src)
    return name


@dataclass(frozen=True)
class Template:
    """A string with expressions: literal text and Paths, in order."""

    parts: tuple[str | Path, ...]

    @property
    def whole(self) -> Path | None:
        """The Path when the string is exactly one expression (its value keeps its JSON type)."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Path):
            return self.parts[0]
        return None

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(p for p in self.parts if isinstance(p, Path))

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
    parts: list[str | Path] = []
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
    if not any(isinstance(p, Path) for p in parts):
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
        if template is not None and template.paths:
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
