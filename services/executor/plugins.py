"""Third-party operations: discovered through an entry-point group, validated, namespaced, enabled per tenant.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."openclaw.operations"]
    acme = "acme_ops:OPERATIONS"

The entry point's name is the vendor; its value is an ``Operation`` or a sequence of them, declared with
``services.executor.ops.operation`` like the built-ins. Each operation is registered as ``vendor.name`` and is
checked by the same rules as the built-ins. Only vendors the settings enable are loaded, and each one only for the
tenants listed (``"*"`` for all); a tenant that is not allowed gets ``permission_denied`` when a step runs.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel

from services.common.errors import PermissionDeniedError
from services.executor.context import OpContext
from services.executor.ops.base import Catalogue, Operation

GROUP = "openclaw.operations"
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ALL_TENANTS = "*"

log = logging.getLogger(__name__)


class PluginError(Exception):
    """A plugin that is enabled but cannot be loaded or breaks the catalogue's rules; start-up stops."""


def load(
    enabled: Mapping[str, Sequence[str]], *, discovered: Iterable[EntryPoint] | None = None
) -> list[Operation[Any]]:
    """The operations of every enabled vendor, namespaced and guarded by the tenants it is enabled for."""
    if not enabled:
        return []
    points = {ep.name: ep for ep in (discovered if discovered is not None else entry_points(group=GROUP))}
    missing = sorted(set(enabled) - set(points))
    if missing:
        installed = ", ".join(sorted(points)) or "none"
        raise PluginError(f"plugins enabled but not installed: {', '.join(missing)} (installed: {installed})")
    out: list[Operation[Any]] = []
    for vendor in sorted(enabled):
        tenants = frozenset(enabled[vendor])
        if not tenants:
            raise PluginError(f"plugin {vendor!r}: enabled for no tenant (list tenants, or '*' for all)")
        ops = _operations(vendor, points[vendor])
        out.extend(_namespaced(vendor, op, tenants) for op in ops)
        log.info("plugin loaded", extra={"plugin": vendor, "operations": [op.name for op in ops]})
    return out


def catalogue_with(enabled: Mapping[str, Sequence[str]]) -> Catalogue:
    """The built-in catalogue plus the enabled plugins: what both the gateway (checks) and executor (runs) use."""
    from services.executor.ops import catalogue

    return catalogue().with_operations(*load(enabled))


def _operations(vendor: str, point: EntryPoint) -> list[Operation[Any]]:
    if not NAME.match(vendor):
        raise PluginError(f"plugin {vendor!r}: vendor names are lowercase letters, digits and '_'")
    try:
        value = point.load()
    except Exception as exc:
        raise PluginError(f"plugin {vendor!r}: cannot import {point.value!r}: {exc}") from exc
    ops = (
        [value] if isinstance(value, Operation) else list(value) if isinstance(value, list | tuple) else None
    )
    if not ops:
        raise PluginError(
            f"plugin {vendor!r}: {point.value!r} must be an Operation or a non-empty sequence of them"
        )
    for op in ops:
        problem = _problem(op)
        if problem:
            raise PluginError(f"plugin {vendor!r}: {problem}")
    names = [op.name for op in ops]
    if len(set(names)) != len(names):
        raise PluginError(f"plugin {vendor!r}: an operation name is declared twice")
    return ops


def _problem(op: Any) -> str | None:
    """What breaks the catalogue's rules (the ones tests/unit/ops/test_catalogue.py holds built-ins to)."""
    if not isinstance(op, Operation):
        return f"{op!r} is not an Operation (declare it with services.executor.ops.operation)"
    if not NAME.match(op.name):
        return (
            f"operation {op.name!r}: names are lowercase letters, digits and '_' (the vendor prefix is added)"
        )
    if not op.description:
        return f"operation {op.name!r}: no description (give the function a docstring)"
    if not (isinstance(op.params, type) and issubclass(op.params, BaseModel)):
        return (
            f"operation {op.name!r}: params must be a pydantic model (subclass services.executor.ops.Params)"
        )
    if op.params.model_config.get("extra") != "forbid":
        return f"operation {op.name!r}: its params model must forbid unknown fields (subclass Params)"
    if not inspect.iscoroutinefunction(op.run):
        return f"operation {op.name!r}: run must be an async function"
    return None


def _namespaced(vendor: str, op: Operation[Any], tenants: frozenset[str]) -> Operation[Any]:
    name = f"{vendor}.{op.name}"
    return replace(op, name=name, category=f"plugin:{vendor}", run=_guarded(name, op.run, tenants))


def _guarded(
    name: str, run: Callable[[Any, OpContext], Awaitable[Any]], tenants: frozenset[str]
) -> Callable[[Any, OpContext], Awaitable[Any]]:
    async def guarded(params: Any, ctx: OpContext) -> Any:
        if ALL_TENANTS not in tenants and ctx.tenant not in tenants:
            raise PermissionDeniedError(
                f"operation {name!r} is not enabled for tenant {ctx.tenant!r}", operation=name
            )
        return await run(params, ctx)

    return guarded
