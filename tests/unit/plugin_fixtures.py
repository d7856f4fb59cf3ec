"""Plugin entry-point targets for tests/unit/test_plugins.py: one good plugin and one of each mistake."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel

from services.executor.context import OpContext
from services.executor.ops import Params, operation


class ShoutParams(Params):
    text: str


@operation("shout", category="text", params=ShoutParams)
async def shout(p: ShoutParams, ctx: OpContext) -> str:
    """Upper-case the text."""
    return p.text.upper()


class LooseParams(BaseModel):
    text: str


def _plain(p: Any, ctx: OpContext) -> str:
    return "x"


GOOD = (shout,)
SINGLE = shout
BAD_NAME = (replace(shout, name="Shout-Loud"),)
NO_DOC = (replace(shout, description=""),)
LOOSE = (replace(shout, params=LooseParams),)
SYNC = (replace(shout, run=_plain),)
NOT_OP = ("shout",)
TWICE = (shout, shout)
EMPTY: tuple[Any, ...] = ()
