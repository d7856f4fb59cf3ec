"""The list operations: filter, map, sort, group, dedupe, chunk, zip, flatten, set algebra, sampling, totals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInputError, NotFoundError
from services.executor.dsl import check_params
from services.executor.ops import catalogue
from services.executor.ops._values import MAX_DEPTH, MAX_ITEMS, MAX_NODES
from tests.unit.ops.harness import ctx_for, run_op

PEOPLE = [
    {"name": "ann", "age": 31, "team": {"id": "a"}},
    {"name": "bob", "age": 25, "team": {"id": "b"}},
    {"name": "cid", "age": 31, "team": {"id": "a"}},
    {"name": "dee", "team": {"id": "c"}},
]


async def run(name: str, params: dict[str, Any], tmp_path: Path, prev: Any = None) -> Any:
    return await run_op(name, params, ctx_for(tmp_path, prev=prev, has_prev=prev is not None))


async def test_list_filter_and_map_by_jmespath(tmp_path: Path) -> None:
    kept = await run("list_filter", {"expression": "age > `30`"}, tmp_path, prev=PEOPLE)
    assert [p["name"] for p in kept] == ["ann", "cid"]
    rest = await run("list_filter", {"items": PEOPLE, "expression": "age", "invert": True}, tmp_path)
    assert [p["name"] for p in rest] == ["dee"]
    mapped = await run("list_map", {"items": PEOPLE[:2], "expression": "{n: name, t: team.id}"}, tmp_path)
    assert mapped == [{"n": "ann", "t": "a"}, {"n": "bob", "t": "b"}]


def test_expressions_are_checked_when_the_workflow_is_submitted() -> None:
    model = catalogue().params_model("list_filter")
    assert model is not None
    assert check_params(model, {"expression": "age >"})[0][0] == ".expression"
    assert check_params(model, {"expression": "${{ inputs.test }}"}) == []


async def test_list_filter_and_map_refuse_bad_expressions(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="not a valid JMESPath expression"):
        await run("list_filter", {"items": [], "expression": "age >"}, tmp_path)
    with pytest.raises(InvalidInputError, match=r"expression: .*length"):
        await run("list_map", {"items": [1], "expression": "length(@)"}, tmp_path)
    with pytest.raises(InvalidInputError, match="items: must be a list, not an object"):
        await run("list_map", {"expression": "@"}, tmp_path, prev={"a": 1})


async def test_list_inputs_are_bounded_in_depth_and_size(tmp_path: Path) -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(InvalidInputError, match=f"items: nested deeper than {MAX_DEPTH} levels"):
        await run("list_dedupe", {"items": [deep]}, tmp_path)
    with pytest.raises(InvalidInputError, match=f"lists: nested deeper than {MAX_DEPTH} levels"):
        await run("list_union", {"lists": [[deep]]}, tmp_path)
    with pytest.raises(InvalidInputError, match=f"items: more than {MAX_ITEMS} items"):
        await run("list_reverse", {}, tmp_path, prev=[0] * (MAX_ITEMS + 1))


async def test_list_sort_by_key_stable_reverse_and_missing(tmp_path: Path) -> None:
    by_age = await run("list_sort", {"items": PEOPLE, "key": "age"}, tmp_path)
    assert [p["name"] for p in by_age] == ["bob", "ann", "cid", "dee"]
    rev = await run(
        "list_sort", {"items": PEOPLE, "key": "age", "reverse": True, "missing": "first"}, tmp_path
    )
    assert [p["name"] for p in rev] == ["dee", "ann", "cid", "bob"]
    assert await run("list_sort", {}, tmp_path, prev=["b", "a", "c"]) == ["a", "b", "c"]
    with pytest.raises(InvalidInputError, match=r"items\[3\]: has no 'age'"):
        await run("list_sort", {"items": PEOPLE, "key": "age", "missing": "error"}, tmp_path)


async def test_list_sort_refuses_mixed_types_naming_both(tmp_path: Path) -> None:
    items = [{"p": 1}, {"p": 2}, {"p": "3"}]
    with pytest.raises(InvalidInputError, match=r"items\[2\]\.p is text but items\[0\]\.p is a number"):
        await run("list_sort", {"items": items, "key": "p"}, tmp_path)
    with pytest.raises(InvalidInputError, match=r"items\[0\]: is an object, which cannot be ordered"):
        await run("list_sort", {"items": items}, tmp_path)


async def test_list_group_by_and_count_by(tmp_path: Path) -> None:
    groups = await run("list_group_by", {"items": PEOPLE, "key": "team.id"}, tmp_path)
    assert {k: [p["name"] for p in v] for k, v in groups.items()} == {
        "a": ["ann", "cid"],
        "b": ["bob"],
        "c": ["dee"],
    }
    by_age = await run("list_group_by", {"items": PEOPLE, "key": "age", "missing": "skip"}, tmp_path)
    assert list(by_age) == ["31", "25"]
    with pytest.raises(InvalidInputError, match=r"items\[3\]: has no 'age'"):
        await run("list_group_by", {"items": PEOPLE, "key": "age"}, tmp_path)
    assert await run("list_count_by", {"items": PEOPLE, "key": "age"}, tmp_path) == {
        "31": 2,
        "25": 1,
        "null": 1,
    }
    assert await run("list_count_by", {}, tmp_path, prev=["x", "y", "y"]) == {"y": 2, "x": 1}


async def test_list_dedupe_and_unique(tmp_path: Path) -> None:
    items = [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 1, "v": "c"}]
    assert await run("list_dedupe", {"items": items, "key": "id"}, tmp_path) == items[:2]
    assert await run("list_dedupe", {"items": items, "key": "id", "keep": "last"}, tmp_path) == items[1:]
    assert await run("list_dedupe", {}, tmp_path, prev=[{"a": 1}, {"a": 1}, 1, True]) == [{"a": 1}, 1, True]
    with pytest.raises(InvalidInputError, match=r"items\[1\]: has no 'id'"):
        await run("list_dedupe", {"items": [{"id": 1}, {}], "key": "id"}, tmp_path)
    assert await run("list_unique", {"items": PEOPLE, "key": "age"}, tmp_path) == [31, 25]
    assert await run("list_unique", {"items": [[1], [1], 2]}, tmp_path) == [[1], 2]


async def test_list_chunk_zip_and_unzip(tmp_path: Path) -> None:
    assert await run("list_chunk", {"items": [1, 2, 3, 4, 5], "size": 2}, tmp_path) == [[1, 2], [3, 4], [5]]
    with pytest.raises(ValidationError, match="size"):
        await run("list_chunk", {"items": [1], "size": 0}, tmp_path)
    zipped = await run("list_zip", {"lists": [[1, 2], ["a", "b"]]}, tmp_path)
    assert zipped == [[1, "a"], [2, "b"]]
    assert await run("list_unzip", {}, tmp_path, prev=zipped) == [[1, 2], ["a", "b"]]
    named = await run(
        "list_zip", {"lists": [[1, 2], ["a"]], "names": ["n", "s"], "mode": "longest"}, tmp_path
    )
    assert named == [{"n": 1, "s": "a"}, {"n": 2, "s": None}]
    with pytest.raises(InvalidInputError, match=r"lists: lengths differ \(\[2, 1\]\)"):
        await run("list_zip", {"lists": [[1, 2], ["a"]]}, tmp_path)
    with pytest.raises(InvalidInputError, match=r"items\[1\]: has 1 values, others have 2"):
        await run("list_unzip", {"items": [[1, 2], [3]]}, tmp_path)
    assert await run("list_unzip", {"items": [[1, 2], [3]], "fill": True}, tmp_path) == [[1, 3], [2, None]]


async def test_list_zip_and_unzip_bound_what_padding_creates(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=f"lists: the result would hold more than {MAX_NODES} values"):
        await run("list_zip", {"lists": [[0] * 20_000] + [[]] * 99, "mode": "longest"}, tmp_path)
    with pytest.raises(InvalidInputError, match=f"items: the result would hold more than {MAX_NODES} values"):
        await run("list_unzip", {"items": [[0] * 1000] + [[]] * 1000, "fill": True}, tmp_path)
    with pytest.raises(InvalidInputError, match="names: each name must be different"):
        await run("list_zip", {"lists": [[1], [2]], "names": ["a", "a"]}, tmp_path)


async def test_list_flatten_by_depth(tmp_path: Path) -> None:
    nested = [1, [2, [3, [4]]], []]
    assert await run("list_flatten", {"items": nested}, tmp_path) == [1, 2, [3, [4]]]
    assert await run("list_flatten", {"depth": 3}, tmp_path, prev=nested) == [1, 2, 3, 4]


async def test_list_first_last_nth_slice_reverse(tmp_path: Path) -> None:
    items = [1, 2, 3, 4]
    assert await run("list_first", {"items": items}, tmp_path) == 1
    assert await run("list_first", {"items": items, "count": 2}, tmp_path) == [1, 2]
    assert await run("list_first", {"items": [], "default": "none"}, tmp_path) == "none"
    assert await run("list_last", {}, tmp_path, prev=items) == 4
    assert await run("list_last", {"items": items, "count": 3}, tmp_path) == [2, 3, 4]
    assert await run("list_last", {"items": items, "count": 0}, tmp_path) == []
    assert await run("list_nth", {"items": items, "index": -2}, tmp_path) == 3
    assert await run("list_nth", {"items": items, "index": 9, "default": 0}, tmp_path) == 0
    with pytest.raises(NotFoundError, match="index: 9 is outside a list of 4 items"):
        await run("list_nth", {"items": items, "index": 9, "required": True}, tmp_path)
    assert await run("list_slice", {"items": items, "start": 1, "stop": -1}, tmp_path) == [2, 3]
    assert await run("list_slice", {"items": items, "step": -2}, tmp_path) == [4, 2]
    with pytest.raises(InvalidInputError, match="step: must not be 0"):
        await run("list_slice", {"items": items, "step": 0}, tmp_path)
    assert await run("list_reverse", {"items": items}, tmp_path) == [4, 3, 2, 1]


async def test_list_range_is_bounded(tmp_path: Path) -> None:
    assert await run("list_range", {"stop": 4}, tmp_path) == [0, 1, 2, 3]
    assert await run("list_range", {"start": 10, "stop": 0, "step": -4}, tmp_path) == [10, 6, 2]
    with pytest.raises(InvalidInputError, match=f"over {MAX_ITEMS}"):
        await run("list_range", {"stop": 10**12}, tmp_path)
    with pytest.raises(InvalidInputError, match="step: must not be 0"):
        await run("list_range", {"stop": 3, "step": 0}, tmp_path)


async def test_list_concat_and_set_algebra(tmp_path: Path) -> None:
    assert await run("list_concat", {"lists": [[1], [], [2, 3]]}, tmp_path) == [1, 2, 3]
    with pytest.raises(ValidationError, match="lists"):
        await run("list_concat", {"lists": []}, tmp_path)
    assert await run(
        "list_difference", {"items": [1, 2, 2, 3, {"a": 1}], "other": [2, {"a": 1}]}, tmp_path
    ) == [1, 3]
    by_id = await run(
        "list_difference", {"other": [{"id": 1}], "key": "id"}, tmp_path, prev=[*PEOPLE[:1], {"id": 2}]
    )
    assert by_id == [PEOPLE[0], {"id": 2}], "items without the key are not removed"
    assert await run("list_intersection", {"lists": [[1, 2, 2, 3], [3, 2], [2, 3, 4]]}, tmp_path) == [2, 3]
    assert await run("list_union", {"lists": [[1, 2], [2, 3], [True]]}, tmp_path) == [1, 2, 3, True]
    users = [[{"id": 1, "v": "a"}], [{"id": 1, "v": "b"}, {"id": 2}]]
    assert await run("list_union", {"lists": users, "key": "id"}, tmp_path) == [
        {"id": 1, "v": "a"},
        {"id": 2},
    ]


async def test_list_index_by_and_partition(tmp_path: Path) -> None:
    index = await run("list_index_by", {"items": PEOPLE, "key": "name"}, tmp_path)
    assert list(index) == ["ann", "bob", "cid", "dee"] and index["bob"] == PEOPLE[1]
    with pytest.raises(InvalidInputError, match=r"items\[2\]: key 'a' repeats items\[0\]"):
        await run("list_index_by", {"items": PEOPLE, "key": "team.id"}, tmp_path)
    last = await run("list_index_by", {"items": PEOPLE, "key": "team.id", "duplicates": "last"}, tmp_path)
    assert last["a"]["name"] == "cid"
    parts = await run("list_partition", {"items": PEOPLE, "expression": "age < `30`"}, tmp_path)
    assert [p["name"] for p in parts["matched"]] == ["bob"]
    assert [p["name"] for p in parts["unmatched"]] == ["ann", "cid", "dee"]


async def test_list_sample_and_shuffle_are_seedable(tmp_path: Path) -> None:
    items = list(range(50))
    one = await run("list_sample", {"items": items, "count": 5, "seed": 7}, tmp_path)
    assert one == await run("list_sample", {"items": items, "count": 5, "seed": 7}, tmp_path)
    assert len(set(one)) == 5 and set(one) <= set(items)
    with pytest.raises(InvalidInputError, match="count: 51 is more than the 50 items"):
        await run("list_sample", {"items": items, "count": 51}, tmp_path)
    mixed = await run("list_shuffle", {"seed": 1}, tmp_path, prev=items)
    assert sorted(mixed) == items and mixed != items
    assert mixed == await run("list_shuffle", {"items": items, "seed": 1}, tmp_path)


async def test_list_sum_min_max(tmp_path: Path) -> None:
    assert await run("list_sum", {"items": [1, 2.5, 3]}, tmp_path) == 6.5
    assert await run("list_sum", {"items": PEOPLE, "key": "age", "skip_missing": True}, tmp_path) == 87
    with pytest.raises(InvalidInputError, match=r"items\[3\]: has no 'age'"):
        await run("list_sum", {"items": PEOPLE, "key": "age"}, tmp_path)
    with pytest.raises(InvalidInputError, match=r"items\[1\]: is text, not a number"):
        await run("list_sum", {"items": [1, "2"]}, tmp_path)
    oldest = await run("list_max", {"items": PEOPLE, "key": "age", "skip_missing": True}, tmp_path)
    assert oldest["name"] == "ann", "the first of equal keys wins"
    assert (await run("list_min", {"key": "age", "skip_missing": True}, tmp_path, prev=PEOPLE))[
        "name"
    ] == "bob"
    assert await run("list_min", {"items": ["b", "a"]}, tmp_path) == "a"
    assert await run("list_max", {"items": []}, tmp_path) is None
    with pytest.raises(InvalidInputError, match="cannot compare them"):
        await run("list_max", {"items": [1, "a"]}, tmp_path)
