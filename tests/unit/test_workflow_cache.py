"""The gateway's parsed-workflow cache: the same small text is parsed once; big texts never stay in memory."""

from __future__ import annotations

import json

from services.executor.dsl import CACHED_WORKFLOW_CHARS
from services.gateway.bootstrap import ExecutorCatalogue


def workflow_text(items: int = 2) -> str:
    step = {"id": "s", "type": "math_sum", "params": {"items": [1] * items}}
    return json.dumps({"name": "w", "steps": [step]}, separators=(",", ":"))


def test_a_small_workflow_is_parsed_once_and_a_big_one_is_never_kept() -> None:
    catalogue = ExecutorCatalogue()
    small = workflow_text()
    assert catalogue.check_workflow(small, {}) == catalogue.check_workflow(small, {"extra": 1})
    info = catalogue._parsed.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 1, 1)
    big = workflow_text(items=CACHED_WORKFLOW_CHARS)
    assert len(big) > CACHED_WORKFLOW_CHARS
    assert catalogue.check_workflow(big, {}) == ("w", frozenset({"math_sum"}))
    assert catalogue._parsed.cache_info().currsize == 1
