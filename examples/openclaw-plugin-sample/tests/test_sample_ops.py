"""The sample plugin, loaded the way the executor loads it: through its installed entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import PermissionDeniedError
from services.executor import plugins
from services.executor.context import OpContext, OpServices
from services.executor.ops import catalogue


def ctx(tenant: str, tmp_path: Path) -> OpContext:
    return OpContext(tenant=tenant, task_id="t", step_id="s", services=OpServices(storage_root=tmp_path))


async def test_installed_entry_point_registers_namespaced_operations(tmp_path: Path) -> None:
    ops = catalogue().with_operations(*plugins.load({"sample": ["acme"]}))
    assert {"sample.word_frequencies", "sample.reading_time"} <= set(ops)
    op = ops["sample.word_frequencies"]
    out = await op.run(
        op.params.model_validate({"text": "The cat and the hat. THE end!", "top": 2}), ctx("acme", tmp_path)
    )
    assert out == {"total": 7, "words": [{"word": "the", "count": 3}, {"word": "and", "count": 1}]}
    rt = ops["sample.reading_time"]
    assert await rt.run(rt.params.model_validate({"text": "word " * 461}), ctx("acme", tmp_path)) == {
        "words": 461,
        "minutes": 3,
    }


async def test_a_tenant_the_vendor_is_not_enabled_for_is_refused(tmp_path: Path) -> None:
    op = {o.name: o for o in plugins.load({"sample": ["acme"]})}["sample.reading_time"]
    with pytest.raises(PermissionDeniedError, match="not enabled for tenant 'globex'"):
        await op.run(op.params.model_validate({"text": "hi"}), ctx("globex", tmp_path))
