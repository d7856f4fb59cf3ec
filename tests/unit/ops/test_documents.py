"""The document operations: JSONPath query, merge, JSON Patch and Merge Patch, diff, schema, flatten, paths."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInputError, NotFoundError
from services.executor.ops._values import MAX_NODES
from tests.unit.ops.harness import ctx_for, run_op

STORE = {
    "store": {
        "book": [
            {"title": "A", "price": 8, "tags": ["x"]},
            {"title": "B", "price": 12},
            {"title": "C", "price": 5},
        ],
        "bike": {"price": 100},
    }
}


async def run(name: str, params: dict[str, Any], tmp_path: Path, prev: Any = None) -> Any:
    return await run_op(name, params, ctx_for(tmp_path, prev=prev, has_prev=prev is not None))


# Query


async def test_json_query_values_with_a_filter(tmp_path: Path) -> None:
    out = await run(
        "json_query", {"expression": "$.store.book[?(@.price < 10)].title", "input": STORE}, tmp_path
    )
    assert out == ["A", "C"]
    assert await run("json_query", {"expression": "$..price"}, tmp_path, prev=STORE) == [8, 12, 5, 100]


async def test_json_query_first_paths_and_limit(tmp_path: Path) -> None:
    first = {"expression": "$.store.book[*].title", "input": STORE, "mode": "first"}
    assert await run("json_query", first, tmp_path) == "A"
    assert await run("json_query", {**first, "expression": "$.nothing"}, tmp_path) is None
    paths = {"expression": "$.store.book[*].price", "input": STORE, "mode": "paths", "limit": 2}
    assert await run("json_query", paths, tmp_path) == [
        {"path": "store.book.[0].price", "value": 8},
        {"path": "store.book.[1].price", "value": 12},
    ]


async def test_json_query_accepts_the_deprecated_union_operator(tmp_path: Path) -> None:
    out = await run(
        "json_query",
        {"expression": "($.store.bike.price) | ($.store.book[2].price)", "input": STORE},
        tmp_path,
    )
    assert out == [100, 5]


async def test_json_query_refuses_a_bad_expression_and_regular_expressions(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="expression: not a valid JSONPath expression"):
        await run("json_query", {"expression": "$.store[", "input": STORE}, tmp_path)
    with pytest.raises(InvalidInputError, match=r"regular expressions \(=~, sub\(\)\) are not allowed"):
        await run(
            "json_query", {"expression": '$.store.book[?(@.title =~ "(a+)+$")]', "input": STORE}, tmp_path
        )


# Merge and patch


async def test_json_merge_deep_with_list_strategies(tmp_path: Path) -> None:
    a = {"x": {"y": 1, "l": [1, 2]}, "keep": True}
    b = {"x": {"z": 2, "l": [2, 3]}, "keep": False}
    base = {"values": [a, b]}
    assert await run("json_merge", base, tmp_path) == {"x": {"y": 1, "z": 2, "l": [2, 3]}, "keep": False}
    assert (await run("json_merge", {**base, "lists": "append"}, tmp_path))["x"]["l"] == [1, 2, 2, 3]
    assert (await run("json_merge", {**base, "lists": "unique"}, tmp_path))["x"]["l"] == [1, 2, 3]
    assert a == {"x": {"y": 1, "l": [1, 2]}, "keep": True}, "inputs are not changed"
    with pytest.raises(ValidationError, match="lists"):
        await run("json_merge", {**base, "lists": "zip"}, tmp_path)


async def test_json_patch_applies_rfc6902_operations(tmp_path: Path) -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    patch = [
        {"op": "add", "path": "/a/-", "value": 3},
        {"op": "replace", "path": "/b/c", "value": 2},
        {"op": "move", "from": "/b", "path": "/m"},
        {"op": "test", "path": "/m/c", "value": 2},
    ]
    assert await run("json_patch", {"patch": patch}, tmp_path, prev=doc) == {"a": [1, 2, 3], "m": {"c": 2}}
    assert doc == {"a": [1, 2], "b": {"c": 1}}


async def test_json_patch_names_the_failing_operation(tmp_path: Path) -> None:
    patch = [{"op": "add", "path": "/x", "value": 1}, {"op": "test", "path": "/x", "value": 2}]
    with pytest.raises(InvalidInputError, match=r"patch\[1\]: test failed"):
        await run("json_patch", {"input": {}, "patch": patch}, tmp_path)
    with pytest.raises(InvalidInputError, match=r"patch\[0\]: .*nope"):
        await run("json_patch", {"input": {}, "patch": [{"op": "remove", "path": "/nope"}]}, tmp_path)
    with pytest.raises(InvalidInputError, match=r"patch\[0\]"):
        await run("json_patch", {"input": {}, "patch": [{"op": "explode", "path": "/a"}]}, tmp_path)


async def test_json_patch_bounds_what_copies_bring_in(tmp_path: Path) -> None:
    doubling = [{"op": "copy", "from": "", "path": f"/k{i}"} for i in range(40)]
    with pytest.raises(
        InvalidInputError, match=rf"patch\[\d+\]: the document would hold more than {MAX_NODES}"
    ):
        await run("json_patch", {"input": {"data": list(range(100))}, "patch": doubling}, tmp_path)


async def test_json_merge_patch_follows_rfc7386(tmp_path: Path) -> None:
    doc = {"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"}, "tags": ["example"]}
    patch = {"title": "Hello!", "author": {"familyName": None}, "tags": ["x"], "phone": "555"}
    assert await run("json_merge_patch", {"input": doc, "patch": patch}, tmp_path) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["x"],
        "phone": "555",
    }
    assert await run("json_merge_patch", {"patch": ["a"]}, tmp_path, prev={"a": 1}) == ["a"]
    with pytest.raises(ValidationError, match="patch"):
        await run("json_merge_patch", {"input": {}}, tmp_path)


async def test_json_diff_makes_patches_that_apply_back(tmp_path: Path) -> None:
    source = {"a": 1, "b": {"c": [1, 2]}, "gone": True}
    target = {"a": 2, "b": {"c": [1, 2, 3]}, "new": None}
    ops = await run("json_diff", {"source": source, "target": target}, tmp_path)
    assert {op["op"] for op in ops} <= {"add", "remove", "replace", "move", "copy"}
    assert await run("json_patch", {"input": source, "patch": ops}, tmp_path) == target
    merge = await run("json_diff", {"source": source, "target": target, "format": "merge_patch"}, tmp_path)
    assert merge == {"gone": None, "a": 2, "b": {"c": [1, 2, 3]}, "new": None}
    assert await run("json_diff", {"source": source, "target": source}, tmp_path) == []


# Validation


SCHEMA = {
    "type": "object",
    "required": ["id", "email"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}


async def test_json_validate_reports_every_error_with_its_path(tmp_path: Path) -> None:
    ok = await run("json_validate", {"input": {"id": 1, "email": "a@b.c"}, "schema": SCHEMA}, tmp_path)
    assert ok == {"valid": True, "errors": [], "truncated": False}
    bad = await run("json_validate", {"schema": SCHEMA}, tmp_path, prev={"id": 0, "tags": ["a", 5]})
    assert bad["valid"] is False
    assert [(e["path"], e["keyword"]) for e in bad["errors"]] == [
        ("", "required"),
        ("/id", "minimum"),
        ("/tags/1", "type"),
    ]
    assert "'email' is a required property" in bad["errors"][0]["message"]


async def test_json_validate_bounds_errors_and_checks_formats_on_request(tmp_path: Path) -> None:
    many = {"type": "array", "items": {"type": "string"}}
    out = await run("json_validate", {"input": list(range(10)), "schema": many, "max_errors": 3}, tmp_path)
    assert len(out["errors"]) == 3 and out["truncated"] is True
    doc = {"id": 1, "email": "not-an-email"}
    assert (await run("json_validate", {"input": doc, "schema": SCHEMA}, tmp_path))["valid"] is True
    checked = await run("json_validate", {"input": doc, "schema": SCHEMA, "check_formats": True}, tmp_path)
    assert [e["keyword"] for e in checked["errors"]] == ["format"]


async def test_json_validate_refuses_a_bad_schema(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="schema: not a valid JSON Schema at /type"):
        await run("json_validate", {"input": 1, "schema": {"type": "whatever"}}, tmp_path)
    with pytest.raises(InvalidInputError, match=r"schema: a \$ref cycle"):
        await run("json_validate", {"input": 1, "schema": {"$ref": "#"}}, tmp_path)


async def test_json_validate_runs_patterns_with_a_time_limit(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"code": {"pattern": "^[A-Z]{2}[0-9]+$"}},
        "patternProperties": {"^x-": {"type": "string"}},
        "additionalProperties": False,
    }
    doc = {"code": "ab1", "x-note": 5, "other": 1}
    out = await run("json_validate", {"input": doc, "schema": schema}, tmp_path)
    assert [(e["path"], e["keyword"]) for e in out["errors"]] == [
        ("", "additionalProperties"),
        ("/code", "pattern"),
        ("/x-note", "type"),
    ]
    assert "'other' unexpected" in out["errors"][0]["message"]
    evil = {"type": "string", "pattern": "^(a|aa)+$"}
    with pytest.raises(InvalidInputError, match="catastrophic backtracking"):
        await run("json_validate", {"input": "a" * 60 + "!", "schema": evil}, tmp_path)
    keys = {"patternProperties": {"^(a|aa)+$": True}, "additionalProperties": False}
    with pytest.raises(InvalidInputError, match="catastrophic backtracking"):
        await run("json_validate", {"input": {"a" * 60 + "!": 1}, "schema": keys}, tmp_path)


@pytest.fixture
def remote_schema() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server serving a schema, recording every request it gets."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/s.json", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_json_validate_never_fetches_a_remote_ref(
    tmp_path: Path, remote_schema: tuple[str, list[str]]
) -> None:
    url, hits = remote_schema
    with pytest.raises(InvalidInputError, match="schema: cannot resolve"):
        await run("json_validate", {"input": 1, "schema": {"$ref": url}}, tmp_path)
    assert hits == []
    local = {"$defs": {"n": {"type": "integer"}}, "items": {"$ref": "#/$defs/n"}}
    out = await run("json_validate", {"input": [1, "x"], "schema": local}, tmp_path)
    assert [e["path"] for e in out["errors"]] == ["/1"]


# Flatten


async def test_json_flatten_and_unflatten_round_trip(tmp_path: Path) -> None:
    doc = {"a": {"b": 1, "c": [1, {"d": 2}]}, "e": {}, "f.g": 3}
    flat = await run("json_flatten", {"input": doc}, tmp_path)
    assert flat == {"a.b": 1, "a.c.0": 1, "a.c.1.d": 2, "e": {}, "f\\.g": 3}
    assert await run("json_unflatten", {"input": flat}, tmp_path) == doc
    kept = await run("json_flatten", {"input": doc, "separator": "/", "lists": False}, tmp_path)
    assert kept == {"a/b": 1, "a/c": [1, {"d": 2}], "e": {}, "f.g": 3}
    assert await run("json_unflatten", {"separator": "/", "lists": False}, tmp_path, prev=kept) == doc


async def test_json_unflatten_refuses_a_key_under_a_value(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"key 'a\.b' goes under 'a', which has a value"):
        await run("json_unflatten", {"input": {"a": 1, "a.b": 2}}, tmp_path)
    with pytest.raises(InvalidInputError, match="input: must be an object or a list"):
        await run("json_flatten", {"input": 3}, tmp_path)


# Paths


async def test_json_get_by_dotted_path_and_pointer(tmp_path: Path) -> None:
    assert await run("json_get", {"input": STORE, "path": "store.book.1.title"}, tmp_path) == "B"
    assert await run("json_get", {"input": STORE, "path": "/store/book/-1/price"}, tmp_path) == 5
    assert await run("json_get", {"path": "store.x", "default": 0}, tmp_path, prev=STORE) == 0
    assert await run("json_get", {"input": {"a.b": 1, "c/d": 2}, "path": "a\\.b"}, tmp_path) == 1
    assert await run("json_get", {"input": {"a.b": 1, "c/d": 2}, "path": "/c~1d"}, tmp_path) == 2
    with pytest.raises(NotFoundError, match=r"path: nothing at 'store\.x'"):
        await run("json_get", {"input": STORE, "path": "store.x", "required": True}, tmp_path)
    with pytest.raises(InvalidInputError, match="empty segment"):
        await run("json_get", {"input": STORE, "path": "store..x"}, tmp_path)


async def test_json_set_creates_appends_and_copies(tmp_path: Path) -> None:
    doc = {"a": [1]}
    assert await run("json_set", {"input": doc, "path": "b.c", "value": 2}, tmp_path) == {
        "a": [1],
        "b": {"c": 2},
    }
    assert await run("json_set", {"input": doc, "path": "/a/-", "value": 2}, tmp_path) == {"a": [1, 2]}
    assert await run("json_set", {"input": doc, "path": "a.0", "value": 9}, tmp_path) == {"a": [9]}
    assert doc == {"a": [1]}
    with pytest.raises(NotFoundError, match="path: nothing at 'b'"):
        await run("json_set", {"input": doc, "path": "b.c", "value": 2, "create": False}, tmp_path)
    with pytest.raises(InvalidInputError, match="path: 'x' is not an index"):
        await run("json_set", {"input": doc, "path": "a.x", "value": 2}, tmp_path)


async def test_json_delete_pick_and_omit(tmp_path: Path) -> None:
    doc = {"a": {"b": 1, "c": 2}, "l": [1, 2, 3], "d": 4}
    assert await run("json_delete", {"input": doc, "paths": ["a.b", "l.0", "zz"]}, tmp_path) == {
        "a": {"c": 2},
        "l": [2, 3],
        "d": 4,
    }
    with pytest.raises(NotFoundError, match=r"paths\[0\]: nothing at 'zz'"):
        await run("json_delete", {"input": doc, "paths": ["zz"], "missing_ok": False}, tmp_path)
    assert await run("json_pick", {"input": doc, "paths": ["a.c", "d", "nope"]}, tmp_path) == {
        "a": {"c": 2},
        "d": 4,
    }
    assert await run("json_omit", {"paths": ["a.c", "l"]}, tmp_path, prev=doc) == {"a": {"b": 1}, "d": 4}
    assert doc["a"] == {"b": 1, "c": 2}
    with pytest.raises(InvalidInputError, match="input: must be an object, not a list"):
        await run("json_omit", {"paths": ["a"]}, tmp_path, prev=[1])
    with pytest.raises(ValidationError, match="paths"):
        await run("json_pick", {"input": doc, "paths": []}, tmp_path)


async def test_json_schema_infer_describes_a_sample_that_then_validates(tmp_path: Path) -> None:
    sample = {"id": 1, "tags": ["a"], "items": [{"n": 1, "x": True}, {"n": 2.5}], "none": None}
    schema = await run("json_schema_infer", {"input": sample}, tmp_path)
    assert schema["properties"]["items"]["items"] == {
        "type": "object",
        "properties": {"n": {"anyOf": [{"type": "integer"}, {"type": "number"}]}, "x": {"type": "boolean"}},
        "required": ["n"],
    }
    assert schema["required"] == ["id", "items", "none", "tags"]
    out = await run("json_validate", {"input": sample, "schema": schema}, tmp_path)
    assert out["valid"] is True
    bad = await run("json_validate", {"input": {**sample, "id": "x"}, "schema": schema}, tmp_path)
    assert [e["path"] for e in bad["errors"]] == ["/id"]
