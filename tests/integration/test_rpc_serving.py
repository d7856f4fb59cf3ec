"""Handlers end every call as data: our errors keep their status, anything unexpected becomes `internal`."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from services.common import rpc
from services.common.errors import ResourceExhaustedError
from tests.integration.test_router_metering import CATALOGUE, MakeRouter, chat, make_router  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [
        (RuntimeError("a bug"), grpc.StatusCode.INTERNAL, "internal"),
        (ResourceExhaustedError("over quota"), grpc.StatusCode.RESOURCE_EXHAUSTED, "resource_exhausted"),
    ],
)
async def test_errors_in_a_handler_reach_the_caller_as_data(
    make_router: MakeRouter,  # noqa: F811
    raised: Exception,
    status: grpc.StatusCode,
    code: str,
) -> None:
    app, stub = await make_router()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise raised

    app.pipeline.chat = broken  # type: ignore[method-assign]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Chat(chat("gpt-4-mini", "hi", "acme"), timeout=10)
    assert info.value.code() == status
    error = rpc.error_from_rpc(info.value)
    assert error.code == code and "Traceback" not in error.message
