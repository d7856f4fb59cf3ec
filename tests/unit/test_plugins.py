"""Operation plugins: entry points loaded for real, namespaced, validated, enabled per tenant."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from services.common.errors import PermissionDeniedError
from services.executor import plugins
from services.executor.context import OpContext, OpServices
from services.executor.dsl import parse_workflow
from services.executor.ops import catalogue

MODULE = "tests.unit.plugin_fixtures"


def point(name: str, attr: str, module: str = MODULE) -> EntryPoint:
    return EntryPoint(name=name, value=f"{module}:{attr}", group=plugins.GROUP)


def ctx(tenant: str, tmp_path: Path) -> OpContext:
    return OpContext(tenant=tenant, task_id="t", step_id="s", services=OpServices(storage_root=tmp_path))


async def test_enabled_vendor_is_namespaced_and_runs_for_its_tenants(tmp_path: Path) -> None:
    ops = plugins.load({"acme": ["t1", "t2"]}, discovered=[point("acme", "GOOD"), point("other", "GOOD")])
    assert [op.name for op in ops] == ["acme.shout"]  # "other" is installed but not enabled: not loaded
    (op,) = ops
    assert op.category == "plugin:acme" and op.description == "Upper-case the text."
    assert await op.run(op.params.model_validate({"text": "hi"}), ctx("t2", tmp_path)) == "HI"
    with pytest.raises(PermissionDeniedError, match=r"'acme\.shout' is not enabled for tenant 't3'"):
        await op.run(op.params.model_validate({"text": "hi"}), ctx("t3", tmp_path))


async def test_star_enables_every_tenant_and_a_single_operation_is_accepted(tmp_path: Path) -> None:
    (op,) = plugins.load({"acme": ["*"]}, discovered=[point("acme", "SINGLE")])
    assert await op.run(op.params.model_validate({"text": "a"}), ctx("anyone", tmp_path)) == "A"


def test_plugin_operations_join_the_catalogue_and_the_dsl_accepts_them() -> None:
    ops = catalogue().with_operations(*plugins.load({"acme": ["*"]}, discovered=[point("acme", "GOOD")]))
    workflow = parse_workflow(
        {"name": "w", "steps": [{"type": "acme.shout", "params": {"text": "x"}}]}, known_ops=ops
    )
    assert workflow.steps[0].type == "acme.shout"
    with pytest.raises(Exception, match=r"steps\[0\]\.params"):
        parse_workflow(
            {"name": "w", "steps": [{"type": "acme.shout", "params": {"txt": "x"}}]}, known_ops=ops
        )


def test_nothing_is_loaded_when_nothing_is_enabled() -> None:
    assert plugins.load({}, discovered=[point("acme", "GOOD")]) == []


@pytest.mark.parametrize(
    ("attr", "module", "fragment"),
    [
        ("BAD_NAME", MODULE, "names are lowercase"),
        ("NO_DOC", MODULE, "no description"),
        ("LOOSE", MODULE, "must forbid unknown fields"),
        ("SYNC", MODULE, "run must be an async function"),
        ("NOT_OP", MODULE, "is not an Operation"),
        ("TWICE", MODULE, "declared twice"),
        ("EMPTY", MODULE, "non-empty sequence"),
        ("GOOD", "tests.unit.no_such_module", "cannot import"),
    ],
)
def test_a_broken_plugin_stops_start_up_with_a_reason(attr: str, module: str, fragment: str) -> None:
    with pytest.raises(plugins.PluginError, match=fragment):
        plugins.load({"acme": ["*"]}, discovered=[point("acme", attr, module)])


def test_enabled_but_not_installed_and_enabled_for_nobody_are_errors() -> None:
    with pytest.raises(plugins.PluginError, match=r"enabled but not installed: ghost \(installed: acme\)"):
        plugins.load({"ghost": ["*"]}, discovered=[point("acme", "GOOD")])
    with pytest.raises(plugins.PluginError, match="enabled for no tenant"):
        plugins.load({"acme": []}, discovered=[point("acme", "GOOD")])
    with pytest.raises(plugins.PluginError, match="vendor names"):
        plugins.load({"Bad-Vendor": ["*"]}, discovered=[point("Bad-Vendor", "GOOD")])
