"""The text_template operation: Jinja2 templates rendered in a sandbox that bounds output, memory and time.

Jinja2's ImmutableSandboxedEnvironment already refuses unsafe attributes and mutation of lists and dicts.
On top of it, every way a template can grow a value is size-checked before the value is built (``*``, ``+``,
``%``, ``~``, captured blocks and macro output, padding and joining filters and string methods), every loop
iteration and call checks a deadline, and the rendered output stops at the step-output limit.
"""

from __future__ import annotations

import asyncio
import re
import string
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from types import TracebackType
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import sync_do_join, sync_do_slice
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_eval_context
from jinja2.visitor import NodeTransformer
from pydantic import Field, field_validator

from services.common.errors import InvalidInputError, PayloadTooLargeError, PermissionDeniedError
from services.executor.context import OpContext
from services.executor.expressions import OPEN
from services.executor.ops._text_params import output_limit
from services.executor.ops.base import Params, operation

MAX_TEMPLATE = 100_000
MAX_INT_BITS = 100_000
_PERCENT_SPEC = re.compile(r"[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBERS = re.compile(r"\d+")
_PADDING = frozenset({"ljust", "rjust", "center", "zfill"})


class _TooLarge(Exception):
    """A template tried to build a value over the size limit."""


class _Overtime(Exception):
    """A template ran past its deadline."""


class _Bounder(NodeTransformer):
    """Routes each for-loop's iterable and each ``~`` through the environment's checked helpers."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _helper("bounded_iter", [node.iter], node.lineno)  # type: ignore[list-item]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _helper("bounded_concat", list(node.nodes), node.lineno)


def _helper(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    # An environment attribute, not a template global: a template cannot shadow it with {% set %}.
    return nodes.Call(nodes.EnvironmentAttribute(name, lineno=lineno), args, [], None, None, lineno=lineno)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """A sandbox for one render, with a character budget for any value and a deadline."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, max_chars: int, timeout_s: float, autoescape: bool) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True)
        self.max_chars = max_chars
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.concat = self._bounded_join  # type: ignore[method-assign]  # what blocks, macros and sets build with
        self.globals.pop("lipsum", None)
        self.filters.pop("wordwrap", None)  # text_wrap does this; its wrapstring would multiply the text
        self.filters.update(self._guarded_filters())

    def ensure(self, size: int, what: str) -> None:
        """Refuse a value of ``size`` characters or items over the budget, before it is built."""
        if size > self.max_chars:
            raise _TooLarge(
                f"{what} would make a value of {size} characters or items; the limit is {self.max_chars}"
            )

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Overtime(f"rendering took longer than {self.timeout_s:g} s")

    def bounded_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        for item in iterable:
            self.tick()
            yield item

    def bounded_concat(self, *parts: Any) -> str:
        self.ensure(sum(len(str(part)) for part in parts), "'~'")
        return markup_join(parts) if self.autoescape else str_join(parts)

    def _bounded_join(self, parts: Iterable[str]) -> str:
        pieces = list(parts)
        self.ensure(sum(map(len, pieces)), "a block or macro")
        return "".join(pieces)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        sequences = (str, list, tuple)
        if operator == "*":
            if isinstance(left, sequences) and isinstance(right, int):
                self.ensure(len(left) * right, "'*'")
            elif isinstance(right, sequences) and isinstance(left, int):
                self.ensure(len(right) * left, "'*'")
            elif isinstance(left, int) and isinstance(right, int):
                self._ensure_bits(left.bit_length() + right.bit_length())
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            self._ensure_bits(left.bit_length() * max(right, 0))
        elif operator == "+" and isinstance(left, sequences) and isinstance(right, sequences):
            self.ensure(len(left) + len(right), "'+'")
        elif operator == "%" and isinstance(left, str):
            self._check_percent(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self.tick()
        inner = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(inner, "__self__", None)
        if isinstance(owner, str):
            args = __self._check_str_method(owner, getattr(inner, "__name__", ""), args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def _ensure_bits(self, bits: int) -> None:
        if bits > MAX_INT_BITS:
            raise _TooLarge(f"an integer of about {bits} bits is over the limit of {MAX_INT_BITS} bits")

    def _check_percent(self, fmt: str) -> None:
        """Check each ``%`` conversion's width and precision, parsing as Python does (keys skipped whole)."""
        at = fmt.find("%")
        while at >= 0:
            spec_at = at + 1
            if fmt.startswith("(", spec_at):
                close = fmt.find(")", spec_at)
                if close < 0:
                    return  # Python refuses an unterminated key itself
                spec_at = close + 1
            spec = _PERCENT_SPEC.match(fmt, spec_at)
            assert spec is not None  # every part of the pattern is optional
            for width in spec.groups():
                if width == "*":
                    raise SecurityError("'%' formatting with '*' widths is not allowed")
                if width is not None:
                    self.ensure(int(width), "a '%' format width")
            at = fmt.find("%", spec.end() + 1)  # past the conversion character ('%%' is a literal)

    def _check_format(self, fmt: str) -> None:
        try:
            fields = list(string.Formatter().parse(fmt))
        except ValueError as exc:
            raise SecurityError(f"bad format string: {exc}") from None
        for _literal, _name, spec, _conversion in fields:
            if spec and "{" in spec:
                raise SecurityError("nested format fields are not allowed")
            for width in _NUMBERS.findall(spec or ""):
                self.ensure(int(width), "a format width")

    def _check_str_method(
        self, owner: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        if name in ("format", "format_map"):
            self._check_format(owner)
        elif name == "replace" and len(args) >= 2:
            self.ensure(
                _replaced_size(owner, str(args[0]), str(args[1]), args[2] if len(args) > 2 else -1), "replace"
            )
        elif name == "join" and args:
            items = list(args[0])
            self.ensure(sum(len(str(i)) for i in items) + len(owner) * len(items), "join")
            args = (items, *args[1:])
        elif name == "expandtabs":
            tab = args[0] if args else kwargs.get("tabsize", 8)
            self.ensure(len(owner) + owner.count("\t") * int(tab), "expandtabs")
        elif name in _PADDING:
            for value in (*args, *kwargs.values()):
                if isinstance(value, int) and not isinstance(value, bool):
                    self.ensure(value, f"str.{name}")
        return args

    def _guarded_filters(self) -> dict[str, Callable[..., Any]]:
        original = dict(self.filters)

        def center(value: Any, width: int = 80) -> str:
            self.ensure(int(width), "center")
            return str(original["center"](value, width))

        def indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
            text = str(s)
            per_line = len(width) if isinstance(width, str) else int(width)
            self.ensure(len(text) + per_line * (text.count("\n") + 1), "indent")
            return str(original["indent"](s, width, first, blank))

        @pass_eval_context
        def replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: int | None = None) -> str:
            self.ensure(_replaced_size(str(s), str(old), str(new), -1 if count is None else count), "replace")
            return str(original["replace"](eval_ctx, s, old, new, count))

        def format_(value: Any, *args: Any, **kwargs: Any) -> str:
            self._check_percent(str(value))
            return str(original["format"](value, *args, **kwargs))

        @pass_eval_context
        def join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
            items = list(value)
            self.ensure(sum(len(str(i)) for i in items) + len(str(d)) * len(items), "join")
            return sync_do_join(eval_ctx, items, d, attribute)

        def batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Any:
            self.ensure(int(linecount), "batch")
            return original["batch"](value, linecount, fill_with)

        def slice_(value: Collection[Any], slices: int, fill_with: Any = None) -> Any:
            self.ensure(int(slices), "slice")
            return sync_do_slice(value, slices, fill_with)

        return {
            "center": center,
            "indent": indent,
            "replace": replace,
            "format": format_,
            "join": join,
            "batch": batch,
            "slice": slice_,
        }

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        bounded = _Bounder().visit(tree)
        assert isinstance(bounded, nodes.Template)
        return bounded


def _replaced_size(text: str, old: str, new: str, count: int) -> int:
    hits = len(text) + 1 if old == "" else text.count(old)
    if count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line an error was raised on (Jinja rewrites tracebacks to point into the template)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render(
    source: str, variables: dict[str, Any], *, max_chars: int, timeout_s: float, autoescape: bool
) -> str:
    """Render a template in a fresh BoundedSandbox; errors are OpenClaw errors naming the problem."""
    env = BoundedSandbox(max_chars=max_chars, timeout_s=timeout_s, autoescape=autoescape)
    try:
        template = env.from_string(source)
        out: list[str] = []
        size = 0
        for chunk in template.generate(variables):
            size += len(chunk)
            env.ensure(size, "the output")
            out.append(chunk)
        return "".join(out)
    except TemplateSyntaxError as exc:
        raise InvalidInputError(f"template: line {exc.lineno}: {exc.message}", param="template") from None
    except Exception as exc:  # whatever a template does wrong is a fault of the template, not the worker
        raise _template_error(exc) from None


def _template_error(exc: Exception) -> Exception:
    line = _template_line(exc.__traceback__)
    where = f"template: line {line}: " if line is not None else "template: "
    if isinstance(exc, UndefinedError):
        return InvalidInputError(f"{where}{exc.message} (pass it in variables)", param="variables")
    if isinstance(exc, SecurityError):
        return PermissionDeniedError(f"{where}{exc}", param="template")
    if isinstance(exc, _TooLarge):
        return PayloadTooLargeError(f"{where}{exc}", param="template")
    if isinstance(exc, _Overtime):
        return InvalidInputError(f"{where}{exc} (a loop or recursion too big?)", param="template")
    if isinstance(exc, TemplateError):
        return InvalidInputError(f"{where}{exc.message or exc}", param="template")
    return InvalidInputError(f"{where}{type(exc).__name__}: {exc}", param="template")


_SYNTAX = ImmutableSandboxedEnvironment()  # parses only, for submission-time syntax errors


class TemplateParams(Params):
    template: str = Field(
        max_length=MAX_TEMPLATE,
        description="A Jinja2 template (https://jinja.palletsprojects.com/templates/).",
    )
    variables: dict[str, Any] = Field(
        default_factory=dict,
        description="The template's variables; the previous step's output is also there as `prev`.",
    )
    autoescape: bool = Field(False, description="HTML-escape every {{ value }} (for HTML output).")
    timeout_s: float = Field(2.0, gt=0, le=10, description="Fail the step if rendering takes longer.")

    @field_validator("template")
    @classmethod
    def _parses(cls, value: str) -> str:
        if OPEN not in value:  # with an expression in it the template is only known at run time
            try:
                _SYNTAX.parse(value)
            except TemplateSyntaxError as exc:
                raise ValueError(f"line {exc.lineno}: {exc.message}") from None
        return value


@operation("text_template", category="text", params=TemplateParams)
async def text_template(p: TemplateParams, ctx: OpContext) -> str:
    """Render a Jinja2 template with variables in a sandbox; undefined variables are errors naming them."""
    variables = dict(p.variables)
    if ctx.has_prev:
        variables.setdefault("prev", ctx.prev_output)
    return await asyncio.to_thread(
        render,
        p.template,
        variables,
        max_chars=output_limit(ctx),
        timeout_s=p.timeout_s,
        autoescape=p.autoescape,
    )


OPERATIONS = (text_template,)
