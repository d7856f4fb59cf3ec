"""The formats operations: parse and write JSON, JSON Lines, YAML, TOML, XML, CSV; convert; detect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInputError
from services.executor.ops._values import MAX_DEPTH, MAX_NODES
from tests.unit.ops.harness import ctx_for, run_op


async def run(name: str, params: dict[str, Any], tmp_path: Path, prev: Any = None) -> Any:
    return await run_op(name, params, ctx_for(tmp_path, prev=prev, has_prev=prev is not None))


# JSON


async def test_json_parse_reads_text_and_takes_the_previous_output(tmp_path: Path) -> None:
    assert await run_op("json_parse", {"text": '{"a": [1, 2.5, null, true]}'}, ctx_for(tmp_path)) == {
        "a": [1, 2.5, None, True]
    }
    assert await run("json_parse", {}, tmp_path, prev='"hi"') == "hi"


async def test_json_parse_names_line_and_column_of_a_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"text: invalid JSON at line 2, column 8: Expecting value"):
        await run_op("json_parse", {"text": '{"a": 1,\n  "b": }'}, ctx_for(tmp_path))


async def test_json_parse_refuses_nan_deep_nesting_and_non_text(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="NaN is not valid JSON"):
        await run_op("json_parse", {"text": "[NaN]"}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match=f"nested deeper than {MAX_DEPTH}"):
        await run_op("json_parse", {"text": "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match=r"nested (too deeply|deeper)"):
        await run_op("json_parse", {"text": "[" * 100_000 + "]" * 100_000}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match="text: must be text, not a list"):
        await run("json_parse", {}, tmp_path, prev=[1])
    with pytest.raises(InvalidInputError, match="text: required"):
        await run_op("json_parse", {}, ctx_for(tmp_path))


async def test_json_dump_indents_sorts_and_compacts(tmp_path: Path) -> None:
    value = {"b": 1, "a": ["é"]}
    assert await run_op(
        "json_dump", {"value": value, "indent": None, "sort_keys": True}, ctx_for(tmp_path)
    ) == ('{"a": ["é"], "b": 1}')
    assert await run_op("json_dump", {"value": value, "ascii_only": True}, ctx_for(tmp_path)) == (
        '{\n  "b": 1,\n  "a": [\n    "\\u00e9"\n  ]\n}'
    )
    assert await run("json_dump", {"indent": None}, tmp_path, prev=[1, None]) == "[1, null]"


async def test_json_dump_refuses_a_huge_indent(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="indent"):
        await run_op("json_dump", {"value": 1, "indent": 1000}, ctx_for(tmp_path))


async def test_jsonl_round_trip_and_line_numbers(tmp_path: Path) -> None:
    text = await run_op("jsonl_dump", {"items": [{"a": 1}, [2], "x"]}, ctx_for(tmp_path))
    assert text == '{"a": 1}\n[2]\n"x"\n'
    assert await run_op("jsonl_parse", {"text": text + "\n  \n"}, ctx_for(tmp_path)) == [{"a": 1}, [2], "x"]
    with pytest.raises(InvalidInputError, match="line 3, column 1"):
        await run_op("jsonl_parse", {"text": "1\n2\nnope\n"}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match="items: must be a list, not an object"):
        await run("jsonl_dump", {}, tmp_path, prev={"a": 1})


# YAML


async def test_yaml_parse_single_and_multi_document(tmp_path: Path) -> None:
    doc = "name: x\nwhen: 2024-05-01\ntags: [a, b]\n"
    assert await run_op("yaml_parse", {"text": doc}, ctx_for(tmp_path)) == {
        "name": "x",
        "when": "2024-05-01",
        "tags": ["a", "b"],
    }
    stream = "---\na: 1\n---\n- 2\n...\n"
    assert await run_op("yaml_parse", {"text": stream, "multi": True}, ctx_for(tmp_path)) == [{"a": 1}, [2]]


async def test_yaml_parse_refuses_python_tags_and_names_the_error_position(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="invalid YAML at line 1"):
        await run_op("yaml_parse", {"text": "!!python/object/apply:os.system ['id']"}, ctx_for(tmp_path))
    with pytest.raises(
        InvalidInputError, match="invalid YAML at line 2, column 6: expected the node content"
    ):
        await run_op("yaml_parse", {"text": "a: [1,\n  b: }"}, ctx_for(tmp_path))


async def test_yaml_alias_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(InvalidInputError, match=f"more than {MAX_NODES} values"):
        await run_op("yaml_parse", {"text": "\n".join(lines)}, ctx_for(tmp_path))


async def test_yaml_recursive_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=f"nested deeper than {MAX_DEPTH}"):
        await run_op("yaml_parse", {"text": "a: &a [*a]"}, ctx_for(tmp_path))


async def test_yaml_dump_block_style_and_documents(tmp_path: Path) -> None:
    value = {"b": [1, {"c": None}], "a": "ü"}
    assert await run_op("yaml_dump", {"value": value}, ctx_for(tmp_path)) == "b:\n- 1\n- c: null\na: ü\n"
    assert await run_op("yaml_dump", {"value": value, "sort_keys": True}, ctx_for(tmp_path)) == (
        "a: ü\nb:\n- 1\n- c: null\n"
    )
    assert await run_op("yaml_dump", {"value": [{"a": 1}, 2], "documents": True}, ctx_for(tmp_path)) == (
        "---\na: 1\n--- 2\n...\n"
    )
    with pytest.raises(InvalidInputError, match="documents=true needs a list"):
        await run_op("yaml_dump", {"value": {"a": 1}, "documents": True}, ctx_for(tmp_path))


# TOML


async def test_toml_parse_turns_dates_into_iso_text(tmp_path: Path) -> None:
    text = 'title = "x"\n[owner]\nborn = 1979-05-27T07:32:00Z\n[[items]]\nn = 1\n[[items]]\nn = 2\n'
    assert await run_op("toml_parse", {"text": text}, ctx_for(tmp_path)) == {
        "title": "x",
        "owner": {"born": "1979-05-27T07:32:00+00:00"},
        "items": [{"n": 1}, {"n": 2}],
    }
    with pytest.raises(InvalidInputError, match=r"invalid TOML: .*line 2, column"):
        await run_op("toml_parse", {"text": 'a = 1\nb = "unclosed\n'}, ctx_for(tmp_path))


async def test_toml_dump_writes_tables_and_refuses_null_and_non_objects(tmp_path: Path) -> None:
    out = await run_op("toml_dump", {"value": {"a": 1, "server": {"port": 80}}}, ctx_for(tmp_path))
    assert out == "a = 1\n\n[server]\nport = 80\n"
    with pytest.raises(InvalidInputError, match=r"TOML has no null, and server\.hosts\[1\] is null"):
        await run_op("toml_dump", {"value": {"server": {"hosts": ["a", None]}}}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match="value: a TOML document is a table"):
        await run("toml_dump", {}, tmp_path, prev=[1])


# XML


async def test_xml_parse_attributes_text_lists_and_force_list(tmp_path: Path) -> None:
    text = '<?xml version="1.0"?><feed id="7"><item>a</item><item>b</item><one k="v">t</one></feed>'
    assert await run_op("xml_parse", {"text": text}, ctx_for(tmp_path)) == {
        "feed": {"@id": "7", "item": ["a", "b"], "one": {"@k": "v", "#text": "t"}}
    }
    forced = await run_op("xml_parse", {"text": "<r><x>1</x></r>", "force_list": ["x"]}, ctx_for(tmp_path))
    assert forced == {"r": {"x": ["1"]}}


async def test_xml_parse_refuses_entity_expansion_and_external_entities(tmp_path: Path) -> None:
    bomb = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><lolz>&lol2;</lolz>'
    )
    with pytest.raises(InvalidInputError, match="entity declarations are refused"):
        await run_op("xml_parse", {"text": bomb}, ctx_for(tmp_path))
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    xxe = f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]><r>&x;</r>'
    with pytest.raises(InvalidInputError, match="entity declarations are refused"):
        await run_op("xml_parse", {"text": xxe}, ctx_for(tmp_path))


async def test_xml_parse_bounds_nesting(tmp_path: Path) -> None:
    deep = "<a>" * 10_000 + "</a>" * 10_000
    with pytest.raises(InvalidInputError, match=f"nested deeper than {MAX_DEPTH}"):
        await run_op("xml_parse", {"text": deep}, ctx_for(tmp_path))


async def test_xml_parse_names_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"invalid XML at line 2, column 3: mismatched tag"):
        await run_op("xml_parse", {"text": "<a>\n</b>"}, ctx_for(tmp_path))


async def test_xml_build_is_the_inverse_of_parse(tmp_path: Path) -> None:
    value = {"feed": {"@id": "7", "item": ["a", "b"]}}
    text = await run_op("xml_build", {"value": value, "pretty": False}, ctx_for(tmp_path))
    assert text == '<?xml version="1.0" encoding="utf-8"?>\n<feed id="7"><item>a</item><item>b</item></feed>'
    assert await run_op("xml_parse", {"text": text}, ctx_for(tmp_path)) == value
    bare = await run_op("xml_build", {"value": {"a": "x<y"}, "declaration": False}, ctx_for(tmp_path))
    assert bare == "<a>x&lt;y</a>"


async def test_xml_build_refuses_several_roots_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="exactly one key"):
        await run_op("xml_build", {"value": {"a": 1, "b": 2}}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match="cannot be written as XML: Invalid element name"):
        await run_op("xml_build", {"value": {"a b": 1}}, ctx_for(tmp_path))


# CSV


async def test_csv_parse_header_rows_into_objects_with_optional_types(tmp_path: Path) -> None:
    text = 'id,name,score\n1,"Smith, J",2.5\n2,Lee,\n'
    rows = [{"id": "1", "name": "Smith, J", "score": "2.5"}, {"id": "2", "name": "Lee", "score": ""}]
    assert await run_op("csv_parse", {"text": text}, ctx_for(tmp_path)) == rows
    assert await run_op("csv_parse", {"text": "\ufeff" + text}, ctx_for(tmp_path)) == rows
    typed = await run_op("csv_parse", {"text": text, "infer_types": True}, ctx_for(tmp_path))
    assert typed[0] == {"id": 1, "name": "Smith, J", "score": 2.5}
    assert typed[1]["score"] is None


async def test_csv_parse_without_header_with_delimiter_and_quote(tmp_path: Path) -> None:
    text = "a;'b;c'\n1;2\n"
    params = {"text": text, "delimiter": ";", "quotechar": "'", "header": False}
    assert await run_op("csv_parse", params, ctx_for(tmp_path)) == [["a", "b;c"], ["1", "2"]]


async def test_csv_parse_ragged_rows_and_duplicate_headers(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="line 3 has 1 fields, the header has 2"):
        await run_op("csv_parse", {"text": "a,b\n1,2\n3\n"}, ctx_for(tmp_path))
    filled = await run_op("csv_parse", {"text": "a,b\n3\n", "ragged": "fill"}, ctx_for(tmp_path))
    assert filled == [{"a": "3", "b": None}]
    with pytest.raises(InvalidInputError, match="names column 'a' twice"):
        await run_op("csv_parse", {"text": "a,a\n1,2\n"}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match="invalid CSV at line 1"):
        await run_op("csv_parse", {"text": 'a,"b\n'}, ctx_for(tmp_path))
    with pytest.raises(ValidationError, match="delimiter"):
        await run_op("csv_parse", {"text": "a", "delimiter": ";;"}, ctx_for(tmp_path))
    with pytest.raises(ValidationError, match="delimiter"):
        await run_op("csv_parse", {"text": "a", "delimiter": "\n"}, ctx_for(tmp_path))
    with pytest.raises(InvalidInputError, match="quotechar: must differ from the delimiter"):
        await run_op("csv_parse", {"text": "a", "delimiter": "'", "quotechar": "'"}, ctx_for(tmp_path))


async def test_csv_dump_objects_lists_and_formula_escaping(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": "x,y"}, {"b": None, "c": {"n": True}}]
    assert await run_op("csv_dump", {"items": rows}, ctx_for(tmp_path)) == (
        'a,b,c\n1,"x,y",\n,,"{""n"": true}"\n'
    )
    assert await run_op(
        "csv_dump", {"items": rows, "columns": ["b"], "header": False}, ctx_for(tmp_path)
    ) == ('"x,y"\n""\n')
    lists = {
        "items": [[1, "=SUM(A1)"]],
        "columns": ["n", "f"],
        "escape_formulas": True,
        "line_ending": "\r\n",
    }
    assert await run_op("csv_dump", lists, ctx_for(tmp_path)) == "n,f\r\n1,'=SUM(A1)\r\n"
    with pytest.raises(InvalidInputError, match=r"items\[1\] is a number"):
        await run_op("csv_dump", {"items": [{"a": 1}, 5]}, ctx_for(tmp_path))


# Conversion and detection


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("json", '{"server": {"port": 80, "hosts": ["a", "b"]}}'),
        ("yaml", "server:\n  port: 80\n  hosts: [a, b]\n"),
        ("toml", '[server]\nport = 80\nhosts = ["a", "b"]\n'),
    ],
)
async def test_format_convert_between_json_yaml_and_toml(source: str, text: str, tmp_path: Path) -> None:
    expected = {"server": {"port": 80, "hosts": ["a", "b"]}}
    for target, parse in (("json", "json_parse"), ("yaml", "yaml_parse"), ("toml", "toml_parse")):
        out = await run_op(
            "format_convert", {"text": text, "source": source, "target": target}, ctx_for(tmp_path)
        )
        assert await run_op(parse, {"text": out}, ctx_for(tmp_path)) == expected


async def test_format_convert_csv_json_and_xml(tmp_path: Path) -> None:
    out = await run_op(
        "format_convert", {"text": "a,b\n1,x\n", "source": "csv", "target": "json"}, ctx_for(tmp_path)
    )
    assert out == '[\n  {\n    "a": 1,\n    "b": "x"\n  }\n]'
    back = await run_op("format_convert", {"text": out, "source": "json", "target": "csv"}, ctx_for(tmp_path))
    assert back == "a,b\n1,x\n"
    xml = await run_op(
        "format_convert",
        {"text": '{"r": {"@k": "v", "x": "1"}}', "source": "json", "target": "xml"},
        ctx_for(tmp_path),
    )
    assert xml.endswith('<r k="v">\n  <x>1</x>\n</r>')


async def test_format_convert_refuses_what_the_target_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="a TOML document is a table"):
        await run_op(
            "format_convert", {"text": "[1, 2]", "source": "json", "target": "toml"}, ctx_for(tmp_path)
        )
    with pytest.raises(InvalidInputError, match="CSV needs rows"):
        await run_op("format_convert", {"text": "42", "source": "json", "target": "csv"}, ctx_for(tmp_path))
    with pytest.raises(ValidationError, match="target"):
        await run_op("format_convert", {"text": "1", "source": "json", "target": "ini"}, ctx_for(tmp_path))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', "json"),
        ("<a/>", "xml"),
        ('a = 1\n[b]\nc = "x"\n', "toml"),
        ("name,age\nx,1\n", "csv"),
        ("a: 1\nb:\n  - x\n", "yaml"),
        ("just some words", "text"),
        ("", "text"),
    ],
)
async def test_format_detect(text: str, expected: str, tmp_path: Path) -> None:
    assert await run_op("format_detect", {"text": text}, ctx_for(tmp_path)) == expected
