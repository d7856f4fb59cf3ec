"""Run one operation the way the engine does: params validated by its model, then run with a context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.executor.context import OpContext, OpServices
from services.executor.ops import catalogue

TENANT = "acme"


def ctx_for(root: Path, *, prev: Any = None, has_prev: bool = False, **services: Any) -> OpContext:
    """A context for tenant ``acme`` whose storage root is ``root`` (files land in root/acme)."""
    return OpContext(
        tenant=TENANT,
        task_id="t1",
        step_id="s1",
        services=OpServices(storage_root=root, **services),
        prev_output=prev,
        has_prev=has_prev,
    )


async def run_op(name: str, params: dict[str, Any], ctx: OpContext) -> Any:
    """Validate ``params`` with the operation's model (so a bad param raises ValidationError) and run it."""
    operation = catalogue()[name]
    return await operation.run(operation.params.model_validate(params), ctx)
