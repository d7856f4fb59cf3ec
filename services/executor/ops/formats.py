"""Structured-data formats: parse and write JSON, JSON Lines, YAML, TOML, XML and CSV, and convert between them.

Every parser bounds its input (MAX_TEXT_CHARS), the nesting depth and the number of values it returns
(see ``_values.check_value``), and names the line and column of a syntax error. XML entity declarations
are refused, which stops entity-expansion ("billion laughs") and external-entity attacks. CSV lives in
``_formats_csv``, the operations on parsed documents in ``_documents`` (query, merge, patch, diff),
``_document_paths`` (get, set, delete, pick, omit, flatten) and ``_json_schema`` (validate, infer);
OPERATIONS gathers them all.
"""

from __future__ import annotations

import asyncio
import json
import re
import tomllib
from collections.abc import Callable
from typing import Any, Literal
from xml.parsers.expat import ExpatError

import tomli_w
import xmltodict
import yaml
from pydantic import Field

from services.common.errors import InvalidInputError
from services.executor.context import OpContext
from services.executor.ops import _document_paths, _documents, _formats_csv, _json_schema
from services.executor.ops._values import (
    MAX_ITEMS,
    check_value,
    kind,
    list_input,
    text_input,
    to_json,
    value_input,
)
from services.executor.ops.base import Params, operation

Format = Literal["json", "yaml", "toml", "xml", "csv"]
MAX_DOCUMENTS = 1000

_TEXT = Field(None, description="The text to parse; the previous step's output when omitted.")
_VALUE = Field(None, description="The value to write; the previous step's output when omitted.")


def _parsed(value: Any, param: str = "text") -> Any:
    check_value(value, param)  # before converting: to_json recurses, and expands YAML's shared nodes
    return to_json(value)


def _recursion(param: str) -> InvalidInputError:
    return InvalidInputError(f"{param}: nested too deeply to parse", param=param)


# JSON


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str, param: str = "text") -> Any:
    """JSON text as a value; errors name the line and column."""
    try:
        return _parsed(json.loads(text, parse_constant=_reject_constant), param)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"{param}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", param=param
        ) from None
    except ValueError as exc:
        raise InvalidInputError(f"{param}: {exc}", param=param) from None
    except RecursionError:
        raise _recursion(param) from None


def dump_json(
    value: Any, *, indent: int | None = 2, sort_keys: bool = False, ascii_only: bool = False
) -> str:
    """A JSON value as text; NaN and infinities are refused."""
    check_value(value, "value")
    try:
        return json.dumps(value, indent=indent, sort_keys=sort_keys, ensure_ascii=ascii_only, allow_nan=False)
    except ValueError as exc:
        raise InvalidInputError(f"value: {exc}", param="value") from None
    except TypeError as exc:
        raise InvalidInputError(
            f"value: sort_keys needs every key to be text ({exc})", param="value"
        ) from None


class JsonParseParams(Params):
    text: str | None = _TEXT


@operation("json_parse", category="formats", params=JsonParseParams)
async def json_parse(p: JsonParseParams, ctx: OpContext) -> Any:
    """Parse JSON text into a value; a syntax error names its line and column."""
    return await asyncio.to_thread(parse_json, text_input(p, "text", ctx))


class JsonDumpParams(Params):
    value: Any = _VALUE
    indent: int | None = Field(2, ge=0, le=8, description="Spaces per level; null writes one compact line.")
    sort_keys: bool = Field(False, description="Write object keys in sorted order (a canonical form).")
    ascii_only: bool = Field(False, description="Escape every non-ASCII character as \\uXXXX.")


@operation("json_dump", category="formats", params=JsonDumpParams)
async def json_dump(p: JsonDumpParams, ctx: OpContext) -> str:
    """Write a value as JSON text (indented or compact, optionally with sorted keys)."""
    value = value_input(p, "value", ctx)
    return await asyncio.to_thread(
        dump_json, value, indent=p.indent, sort_keys=p.sort_keys, ascii_only=p.ascii_only
    )


class JsonlParseParams(Params):
    text: str | None = _TEXT


def _parse_jsonl(text: str) -> list[Any]:
    out: list[Any] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(out) >= MAX_ITEMS:
            raise InvalidInputError(f"text: more than {MAX_ITEMS} lines", param="text")
        try:
            out.append(json.loads(line, parse_constant=_reject_constant))
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                f"text: invalid JSON at line {number}, column {exc.colno}: {exc.msg}", param="text"
            ) from None
        except ValueError as exc:
            raise InvalidInputError(f"text: line {number}: {exc}", param="text") from None
        except RecursionError:
            raise _recursion("text") from None
    check_value(out, "text")
    return out


@operation("jsonl_parse", category="formats", params=JsonlParseParams)
async def jsonl_parse(p: JsonlParseParams, ctx: OpContext) -> list[Any]:
    """Parse JSON Lines (one JSON value per line, blank lines skipped) into a list."""
    return await asyncio.to_thread(_parse_jsonl, text_input(p, "text", ctx))


class JsonlDumpParams(Params):
    items: list[Any] | None = Field(
        None, description="The values to write, one per line; else the previous output."
    )


@operation("jsonl_dump", category="formats", params=JsonlDumpParams)
async def jsonl_dump(p: JsonlDumpParams, ctx: OpContext) -> str:
    """Write a list as JSON Lines: one compact JSON value per line, each line ending in a newline."""
    items = list_input(p, "items", ctx)
    check_value(items, "items")
    lines = [dump_json(item, indent=None) for item in items]
    return "".join(line + "\n" for line in lines)


# YAML


def parse_yaml(text: str, *, multi: bool = False, param: str = "text") -> Any:
    """YAML text (safe constructors only) as a value, or a list of documents when ``multi``."""
    try:
        if multi:
            docs: list[Any] = []
            for doc in yaml.safe_load_all(text):
                if len(docs) >= MAX_DOCUMENTS:
                    raise InvalidInputError(f"{param}: more than {MAX_DOCUMENTS} documents", param=param)
                check_value(doc, param)
                docs.append(doc)
            return _parsed(docs, param)
        return _parsed(yaml.safe_load(text), param)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InvalidInputError(
            f"{param}: invalid YAML{where}: {exc.problem or exc.context}", param=param
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"{param}: invalid YAML: {exc}", param=param) from None
    except RecursionError:
        raise _recursion(param) from None


def dump_yaml(value: Any, *, sort_keys: bool = False, indent: int = 2, documents: bool = False) -> str:
    """A JSON value as block-style YAML (a multi-document stream when ``documents``)."""
    check_value(value, "value")
    options: dict[str, Any] = {
        "sort_keys": sort_keys,
        "indent": indent,
        "default_flow_style": False,
        "allow_unicode": True,
    }
    try:
        if documents:
            if not isinstance(value, list):
                raise InvalidInputError(
                    f"value: documents=true needs a list, not {kind(value)}", param="value"
                )
            return str(yaml.safe_dump_all(value, explicit_start=True, **options))
        return str(yaml.safe_dump(value, **options))
    except yaml.representer.RepresenterError as exc:
        raise InvalidInputError(f"value: cannot be written as YAML: {exc}", param="value") from None
    except RecursionError:
        raise _recursion("value") from None


class YamlParseParams(Params):
    text: str | None = _TEXT
    multi: bool = Field(False, description="Read a stream of '---' separated documents into a list.")


@operation("yaml_parse", category="formats", params=YamlParseParams)
async def yaml_parse(p: YamlParseParams, ctx: OpContext) -> Any:
    """Parse YAML (safe subset: no Python objects) into a value, or a list of documents with multi=true."""
    return await asyncio.to_thread(parse_yaml, text_input(p, "text", ctx), multi=p.multi)


class YamlDumpParams(Params):
    value: Any = _VALUE
    sort_keys: bool = Field(False, description="Write mapping keys in sorted order.")
    indent: int = Field(2, ge=2, le=8, description="Spaces per nesting level.")
    documents: bool = Field(False, description="The value is a list: write each item as its own document.")


@operation("yaml_dump", category="formats", params=YamlDumpParams)
async def yaml_dump(p: YamlDumpParams, ctx: OpContext) -> str:
    """Write a value as block-style YAML text (or a multi-document stream from a list)."""
    value = value_input(p, "value", ctx)
    return await asyncio.to_thread(
        dump_yaml, value, sort_keys=p.sort_keys, indent=p.indent, documents=p.documents
    )


# TOML


def parse_toml(text: str, param: str = "text") -> dict[str, Any]:
    """TOML text as an object (dates and times become ISO 8601 text); errors name line and column."""
    try:
        out: dict[str, Any] = _parsed(tomllib.loads(text), param)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{param}: invalid TOML: {exc}", param=param) from None
    except RecursionError:
        raise _recursion(param) from None
    return out


def _find_null(value: Any, where: str) -> str | None:
    if value is None:
        return where or "the value"
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, child in children:
        inner = _find_null(child, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."))
        if inner is not None:
            return inner
    return None


def dump_toml(value: Any) -> str:
    """An object as TOML text; TOML has no null and its documents are tables, so both are refused."""
    check_value(value, "value")
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"value: a TOML document is a table (an object), not {kind(value)}", param="value"
        )
    null = _find_null(value, "")
    if null is not None:
        raise InvalidInputError(f"value: TOML has no null, and {null} is null", param="value")
    try:
        return tomli_w.dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"value: cannot be written as TOML: {exc}", param="value") from None


class TomlParseParams(Params):
    text: str | None = _TEXT


@operation("toml_parse", category="formats", params=TomlParseParams)
async def toml_parse(p: TomlParseParams, ctx: OpContext) -> dict[str, Any]:
    """Parse TOML into an object (dates and times as ISO 8601 text); errors name the line and column."""
    return await asyncio.to_thread(parse_toml, text_input(p, "text", ctx))


class TomlDumpParams(Params):
    value: dict[str, Any] | None = Field(
        None, description="The object to write; the previous output when omitted."
    )


@operation("toml_dump", category="formats", params=TomlDumpParams)
async def toml_dump(p: TomlDumpParams, ctx: OpContext) -> str:
    """Write an object as TOML text (nested objects become tables; null values are refused)."""
    return await asyncio.to_thread(dump_toml, value_input(p, "value", ctx))


# XML


def parse_xml(
    text: str, *, namespaces: bool = False, force_list: list[str] | None = None, param: str = "text"
) -> Any:
    """XML as an object (attributes as "@name", text beside children as "#text"); entities refused."""
    try:
        value = xmltodict.parse(
            text,
            disable_entities=True,
            process_namespaces=namespaces,
            force_list=tuple(force_list) if force_list else None,
        )
    except ExpatError as exc:
        raise InvalidInputError(
            f"{param}: invalid XML at line {exc.lineno}, column {exc.offset + 1}: {_expat_reason(exc)}",
            param=param,
        ) from None
    except ValueError as exc:
        if "entities" in str(exc):
            raise InvalidInputError(
                f"{param}: XML entity declarations are refused (they allow entity-expansion attacks)",
                param=param,
            ) from None
        raise InvalidInputError(f"{param}: invalid XML: {exc}", param=param) from None
    return _parsed(value, param)


def _expat_reason(exc: ExpatError) -> str:
    return re.sub(r": line \d+, column \d+$", "", str(exc))


def dump_xml(value: Any, *, pretty: bool = True, declaration: bool = True) -> str:
    """An object with one root key as XML ("@name" keys are attributes, "#text" is text)."""
    check_value(value, "value")
    if not isinstance(value, dict) or len(value) != 1:
        raise InvalidInputError(
            "value: an XML document needs an object with exactly one key (the root element)", param="value"
        )
    try:
        return xmltodict.unparse(value, pretty=pretty, full_document=declaration, indent="  ")
    except ValueError as exc:
        raise InvalidInputError(f"value: cannot be written as XML: {exc}", param="value") from None


class XmlParseParams(Params):
    text: str | None = _TEXT
    namespaces: bool = Field(False, description="Expand namespace prefixes into full URIs in element names.")
    force_list: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Element names always returned as lists, even when they occur once.",
    )


@operation("xml_parse", category="formats", params=XmlParseParams)
async def xml_parse(p: XmlParseParams, ctx: OpContext) -> Any:
    """Parse XML into an object: attributes as "@name", mixed text as "#text", repeated elements as lists."""
    text = text_input(p, "text", ctx)
    return await asyncio.to_thread(parse_xml, text, namespaces=p.namespaces, force_list=p.force_list)


class XmlBuildParams(Params):
    value: dict[str, Any] | None = Field(
        None, description="An object with one key, the root element; the previous output when omitted."
    )
    pretty: bool = Field(True, description="Indent nested elements on their own lines.")
    declaration: bool = Field(True, description="Start with the <?xml ...?> declaration.")


@operation("xml_build", category="formats", params=XmlBuildParams)
async def xml_build(p: XmlBuildParams, ctx: OpContext) -> str:
    """Write an object as XML text (the inverse of xml_parse: "@name" keys are attributes)."""
    value = value_input(p, "value", ctx)
    return await asyncio.to_thread(dump_xml, value, pretty=p.pretty, declaration=p.declaration)


# Conversion

_PARSERS: dict[str, Callable[[str], Any]] = {
    "json": parse_json,
    "yaml": parse_yaml,
    "toml": parse_toml,
    "xml": parse_xml,
    "csv": lambda text: _formats_csv.parse_csv(text, infer_types=True),
}
_WRITERS: dict[str, Callable[[Any], str]] = {
    "json": dump_json,
    "yaml": dump_yaml,
    "toml": dump_toml,
    "xml": dump_xml,
    "csv": lambda value: _formats_csv.dump_csv(value if isinstance(value, list) else [value]),
}


class FormatConvertParams(Params):
    text: str | None = _TEXT
    source: Format = Field(description="The format of the text: json, yaml, toml, xml or csv.")
    target: Format = Field(description="The format to write: json, yaml, toml, xml or csv.")


def _convert(text: str, source: str, target: str) -> str:
    value = _PARSERS[source](text)
    if target == "csv" and not isinstance(value, list | dict):
        raise InvalidInputError(
            f"text: CSV needs rows, and this {source} document is {kind(value)}", param="text"
        )
    return _WRITERS[target](value)


@operation("format_convert", category="formats", params=FormatConvertParams)
async def format_convert(p: FormatConvertParams, ctx: OpContext) -> str:
    """Convert text between JSON, YAML, TOML, XML and CSV (CSV rows are objects; types inferred from CSV)."""
    text = text_input(p, "text", ctx)
    return await asyncio.to_thread(_convert, text, p.source, p.target)


class FormatDetectParams(Params):
    text: str | None = _TEXT


def _detect(text: str) -> str:
    stripped = text.lstrip()
    if not stripped:
        return "text"
    if stripped.startswith("<"):
        return "xml"
    attempts: list[tuple[str, Callable[[str], Any]]] = [("json", json.loads), ("toml", tomllib.loads)]
    for name, parse in attempts:
        try:
            parse(text)
        except (ValueError, RecursionError):
            continue
        return name
    first = stripped.split("\n", 1)[0]
    if first.count(",") >= 1 and "{" not in first and ": " not in first:
        return "csv"
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return "text"
    return "yaml" if isinstance(value, dict | list) else "text"


@operation("format_detect", category="formats", params=FormatDetectParams)
async def format_detect(p: FormatDetectParams, ctx: OpContext) -> str:
    """Guess the format of a text: "json", "xml", "toml", "csv", "yaml" or "text" (none of them)."""
    return await asyncio.to_thread(_detect, text_input(p, "text", ctx))


OPERATIONS = (
    json_parse,
    json_dump,
    jsonl_parse,
    jsonl_dump,
    yaml_parse,
    yaml_dump,
    toml_parse,
    toml_dump,
    xml_parse,
    xml_build,
    format_convert,
    format_detect,
    *_formats_csv.OPERATIONS,
    *_documents.OPERATIONS,
    *_document_paths.OPERATIONS,
    *_json_schema.OPERATIONS,
)
