"""Key-value operations without a Redis: key names, value bounds and the errors a step gets.

Runs against Redis are in tests/integration/test_infra_ops.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInputError, PayloadTooLargeError, UnavailableError
from services.executor.dsl import check_params
from services.executor.ops import catalogue
from services.executor.ops.kv import check_key
from tests.unit.ops.harness import ctx_for, run_op


@pytest.mark.parametrize(
    "key",
    ["a*", "user?", "x[1]", "back\\slash", "tab\there", "new\nline", " lead", "trail ", "", "k" * 257],
)
async def test_a_key_that_could_match_or_escape_other_keys_is_refused(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        await run_op("kv_get", {"key": key}, ctx_for(tmp_path))
    assert info.value.errors()[0]["loc"] == ("key",)


def test_key_names_may_hold_separators_and_unicode() -> None:
    for key in ("orders:2024:eu", "a/b/c", "café", "x.y-z_1", "k" * 256):
        assert check_key(key) == key


def test_bad_keys_are_reported_by_path_when_the_workflow_is_checked() -> None:
    model = catalogue().params_model("kv_delete")
    assert model is not None
    problems = dict(check_params(model, {"key": ["fine", "bad*"]}))
    assert any(path.startswith(".key") for path in problems), problems
    many = catalogue().params_model("kv_list_push")
    assert many is not None
    assert check_params(many, {"key": "log", "values": [1], "side": "middle"})[0][0] == ".side"


async def test_a_value_that_is_not_json_fails_before_redis_is_touched(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="value: not storable as JSON"):
        await run_op("kv_set", {"key": "k", "value": float("nan")}, ctx_for(tmp_path))


async def test_values_are_bounded_by_the_step_output_limit(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path, max_output_bytes=1024)
    with pytest.raises(PayloadTooLargeError, match="value: the JSON value is over the limit of 1024"):
        await run_op("kv_set", {"key": "k", "value": "x" * 2000}, ctx)
    with pytest.raises(PayloadTooLargeError, match=r"values\[1\]"):
        await run_op("kv_list_push", {"key": "k", "values": [1, "y" * 2000]}, ctx)
    with pytest.raises(PayloadTooLargeError, match=r"fields\.big"):
        await run_op("kv_hash_set", {"key": "k", "fields": {"big": "z" * 2000}}, ctx)


@pytest.mark.parametrize(
    ("name", "params", "prev", "message"),
    [
        ("kv_list_push", {"key": "k"}, {"not": "a list"}, "values: must be a non-empty list"),
        ("kv_list_push", {"key": "k"}, [], "values: must be a non-empty list"),
        ("kv_hash_set", {"key": "k"}, [1, 2], "fields: must be a non-empty object"),
        ("kv_hash_set", {"key": "k"}, {"f" * 300: 1}, "fields: at most 1000 fields"),
    ],
)
async def test_previous_output_of_the_wrong_shape_is_a_clear_error(
    name: str, params: dict[str, Any], prev: Any, message: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        await run_op(name, params, ctx_for(tmp_path, prev=prev, has_prev=True))


async def test_set_without_a_value_or_previous_output_names_the_param(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="value: required"):
        await run_op("kv_set", {"key": "k"}, ctx_for(tmp_path))


async def test_an_executor_without_redis_says_so(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="no Redis client"):
        await run_op("kv_get", {"key": "k"}, ctx_for(tmp_path))
    with pytest.raises(UnavailableError, match="no Redis client"):
        await run_op("kv_keys", {}, ctx_for(tmp_path))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("kv_set", {"key": "k", "value": 1, "ttl_s": 0}),
        ("kv_set", {"key": "k", "value": 1, "when": "sometimes"}),
        ("kv_incr", {"key": "k", "by": 2**60}),
        ("kv_expire", {"key": "k"}),
        ("kv_list_range", {"key": "k", "limit": 10_001}),
        ("kv_hash_get", {"key": "k", "fields": []}),
        ("kv_keys", {"pattern": "a\x00"}),
        ("kv_keys", {"limit": 0}),
        ("kv_delete", {"key": []}),
    ],
)
async def test_params_out_of_bounds_are_refused(name: str, params: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        await run_op(name, params, ctx_for(tmp_path))
