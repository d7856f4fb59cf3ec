"""The map (object) operations: keys, values, entries, invert, rename, defaults, filter and transform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInputError
from tests.unit.ops.harness import ctx_for, run_op

DOC = {"b": 2, "a": 1, "c": None}


async def run(name: str, params: dict[str, Any], tmp_path: Path, prev: Any = None) -> Any:
    return await run_op(name, params, ctx_for(tmp_path, prev=prev, has_prev=prev is not None))


async def test_map_keys_values_entries_keep_order(tmp_path: Path) -> None:
    assert await run("map_keys", {"input": DOC}, tmp_path) == ["b", "a", "c"]
    assert await run("map_values", {}, tmp_path, prev=DOC) == [2, 1, None]
    entries = await run("map_entries", {"input": DOC}, tmp_path)
    assert entries[0] == {"key": "b", "value": 2}
    assert await run("map_from_entries", {"items": entries}, tmp_path) == DOC
    with pytest.raises(InvalidInputError, match="input: must be an object, not a list"):
        await run("map_keys", {}, tmp_path, prev=[1])


async def test_map_from_entries_pairs_and_duplicates(tmp_path: Path) -> None:
    pairs = [["x", 1], ["y", 2], ["x", 3], [4, "n"]]
    assert await run("map_from_entries", {"items": pairs}, tmp_path) == {"x": 3, "y": 2, "4": "n"}
    assert (await run("map_from_entries", {"items": pairs, "duplicates": "first"}, tmp_path))["x"] == 1
    with pytest.raises(InvalidInputError, match=r"items\[2\]: key 'x' appears twice"):
        await run("map_from_entries", {"items": pairs, "duplicates": "error"}, tmp_path)
    with pytest.raises(InvalidInputError, match=r"items\[0\]: must be .* pair, not a number"):
        await run("map_from_entries", {"items": [1]}, tmp_path)
    with pytest.raises(
        InvalidInputError, match=r"items\[0\]: the key must be text or a number, not an object"
    ):
        await run("map_from_entries", {"items": [[{}, 1]]}, tmp_path)


async def test_map_invert_with_duplicate_policies(tmp_path: Path) -> None:
    assert await run("map_invert", {"input": {"a": "x", "b": 1, "c": True}}, tmp_path) == {
        "x": "a",
        "1": "b",
        "true": "c",
    }
    dup = {"a": "x", "b": "x"}
    with pytest.raises(InvalidInputError, match=r"input\.b: value 'x' is also the value of 'a'"):
        await run("map_invert", {"input": dup}, tmp_path)
    assert await run("map_invert", {"input": dup, "duplicates": "first"}, tmp_path) == {"x": "a"}
    assert await run("map_invert", {"input": dup, "duplicates": "last"}, tmp_path) == {"x": "b"}
    assert await run("map_invert", {"input": dup, "duplicates": "collect"}, tmp_path) == {"x": ["a", "b"]}
    with pytest.raises(InvalidInputError, match=r"input\.a: is a list, which cannot become a key"):
        await run("map_invert", {"input": {"a": []}}, tmp_path)


async def test_map_rename_keys_keeps_places_and_refuses_collisions(tmp_path: Path) -> None:
    out = await run("map_rename_keys", {"input": DOC, "mapping": {"a": "alpha", "zz": "q"}}, tmp_path)
    assert list(out.items()) == [("b", 2), ("alpha", 1), ("c", None)]
    with pytest.raises(InvalidInputError, match="mapping: 'a' and 'b' would both be named 'b'"):
        await run("map_rename_keys", {"input": DOC, "mapping": {"a": "b"}}, tmp_path)
    with pytest.raises(ValidationError, match="mapping"):
        await run("map_rename_keys", {"input": DOC, "mapping": {"a": 1}}, tmp_path)


async def test_map_defaults_fills_missing_and_null_deeply(tmp_path: Path) -> None:
    doc = {"a": 1, "c": None, "n": {"x": 1}}
    defaults = {"a": 9, "b": 2, "c": 3, "n": {"x": 0, "y": 0}}
    assert await run("map_defaults", {"input": doc, "defaults": defaults}, tmp_path) == {
        "a": 1,
        "c": 3,
        "n": {"x": 1, "y": 0},
        "b": 2,
    }
    shallow = await run("map_defaults", {"defaults": defaults, "deep": False}, tmp_path, prev=doc)
    assert shallow["n"] == {"x": 1}
    assert doc == {"a": 1, "c": None, "n": {"x": 1}}


async def test_map_filter_on_key_and_value(tmp_path: Path) -> None:
    assert await run("map_filter", {"input": DOC, "expression": "value > `1`"}, tmp_path) == {"b": 2}
    assert await run("map_filter", {"expression": "key != 'c'"}, tmp_path, prev=DOC) == {"b": 2, "a": 1}
    with pytest.raises(ValidationError, match="not a valid JMESPath expression"):
        await run("map_filter", {"input": DOC, "expression": "value >"}, tmp_path)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("snake", ["user_id", "http_server_name", "plain"]),
        ("camel", ["userId", "httpServerName", "plain"]),
        ("kebab", ["user-id", "http-server-name", "plain"]),
        ("pascal", ["UserId", "HttpServerName", "Plain"]),
        ("upper", ["USERID", "HTTP_SERVER-NAME", "PLAIN"]),
    ],
)
async def test_map_transform_keys_cases(case: str, expected: list[str], tmp_path: Path) -> None:
    doc = {"userId": 1, "HTTP_server-name": 2, "plain": 3}
    assert list(await run("map_transform_keys", {"input": doc, "case": case}, tmp_path)) == expected


async def test_map_transform_keys_prefixes_deep_and_collisions(tmp_path: Path) -> None:
    doc = {"x_a": {"x_b": [{"x_c": 1}]}, "d": 2}
    out = await run(
        "map_transform_keys", {"input": doc, "strip_prefix": "x_", "prefix": "p.", "deep": True}, tmp_path
    )
    assert out == {"p.a": {"p.b": [{"p.c": 1}]}, "p.d": 2}
    shallow = await run("map_transform_keys", {"strip_prefix": "x_"}, tmp_path, prev=doc)
    assert shallow == {"a": {"x_b": [{"x_c": 1}]}, "d": 2}
    with pytest.raises(InvalidInputError, match="input: keys 'userId' and 'user_id' both become 'user_id'"):
        await run("map_transform_keys", {"input": {"userId": 1, "user_id": 2}, "case": "snake"}, tmp_path)


async def test_map_transform_values_by_jmespath(tmp_path: Path) -> None:
    doc = {"a": [1, 2], "b": [3]}
    assert await run("map_transform_values", {"input": doc, "expression": "length(@)"}, tmp_path) == {
        "a": 2,
        "b": 1,
    }
    with pytest.raises(InvalidInputError, match=r"expression: .*sum"):
        await run("map_transform_values", {"input": {"a": "x"}, "expression": "sum(@)"}, tmp_path)
