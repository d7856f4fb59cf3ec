"""Inputs that once crashed the gateway (500 or a broken call) get a clear 4xx naming the problem.

The gateway runs in-process as in test_gateway.py (whose fixtures are reused), against the real RabbitMQ,
Redis and a real router in front of the provider simulator.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import grpc
import pytest

from openclaw.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration import test_gateway as base

pytestmark = pytest.mark.integration

# The fixtures of test_gateway.py, re-exported so pytest finds them here.
router_addr = base.router_addr
gateway = base.gateway
http = base.http
grpc_stub = base.grpc_stub

MODEL = base.MODEL
USER = {"role": "user", "content": "hi"}


def _nested(levels: int, leaf: Any = 1) -> Any:
    """leaf inside levels of alternating arrays and objects."""
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def _workflow(payload: Any) -> dict[str, Any]:
    step = {"id": "pick", "type": "json_transform", "params": {"expression": "a", "input": {"a": payload}}}
    return {"name": "deep", "steps": [step]}


async def _post_task(http: aiohttp.ClientSession, body: bytes) -> tuple[int, dict[str, Any]]:
    headers = {**base._auth(), "Content-Type": "application/json"}
    async with http.post("/v1/tasks", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


# --- task submission over HTTP ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 5000, id="deeper-than-the-parser-recurses"),
        pytest.param(json.dumps({"workflow": _workflow(_nested(900))}).encode(), id="deep-workflow-params"),
        pytest.param(
            json.dumps({"workflow": _workflow(1), "inputs": _nested(70)}).encode(), id="deep-inputs"
        ),
    ],
)
async def test_deeply_nested_task_body_is_400_naming_the_nesting(
    http: aiohttp.ClientSession, body: bytes
) -> None:
    status, answer = await _post_task(http, body)
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_input"
    assert "nested too deeply" in answer["error"]["message"]


async def test_nesting_well_inside_the_limit_is_accepted(http: aiohttp.ClientSession) -> None:
    status, answer = await _post_task(http, json.dumps({"workflow": _workflow(_nested(40))}).encode())
    assert status == 202, answer


async def test_integer_literal_past_the_digit_limit_is_400(http: aiohttp.ClientSession) -> None:
    body = b'{"workflow": {"name": "w", "steps": []}, "inputs": {"n": 1' + b"0" * 5000 + b"}}"
    status, answer = await _post_task(http, body)
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_input"
    assert "not valid JSON" in answer["error"]["message"]


async def test_deadline_beyond_float_range_is_400(http: aiohttp.ClientSession) -> None:
    body = b'{"workflow": {"name": "w", "steps": []}, "deadline_seconds": 1' + b"0" * 400 + b"}"
    status, answer = await _post_task(http, body)
    assert status == 400, answer
    assert answer["error"]["details"]["field"] == "deadline_seconds"


async def test_event_id_beyond_redis_range_is_400_and_leaves_the_store_breaker_closed(
    http: aiohttp.ClientSession,
) -> None:
    body = json.dumps({"workflow": base.WORKFLOW}).encode()
    status, answer = await _post_task(http, body)
    assert status == 202, answer
    events = f"/v1/tasks/{answer['id']}/events"
    for _ in range(8):  # more than the breaker's failure threshold
        headers = {**base._auth(), "Last-Event-ID": "99999999999999999999-0"}
        async with http.get(events, headers=headers) as resp:
            assert resp.status == 400, await resp.text()
    async with http.get(f"/v1/tasks/{answer['id']}", headers=base._auth()) as resp:
        assert resp.status == 200


# --- task submission over gRPC ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        pytest.param({"workflow_json": "[" * 5000}, "workflow_json", id="workflow-deeper-than-the-parser"),
        pytest.param(
            {"workflow_json": json.dumps(_workflow(1)), "inputs_json": json.dumps({"x": _nested(80)})},
            "inputs_json",
            id="deep-inputs",
        ),
    ],
)
async def test_grpc_deeply_nested_json_is_invalid_argument_naming_the_field(
    grpc_stub: gateway_pb2_grpc.TaskServiceStub, request_fields: dict[str, str], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_stub.Submit(gateway_pb2.SubmitTaskRequest(**request_fields), metadata=base._md())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert field in details and "nested too deeply" in details


@pytest.mark.parametrize("deadline", [-1, 2**31 - 1])
async def test_grpc_deadline_out_of_range_is_invalid_argument(
    grpc_stub: gateway_pb2_grpc.TaskServiceStub, deadline: int
) -> None:
    request = gateway_pb2.SubmitTaskRequest(workflow_json=json.dumps(_workflow(1)), deadline_seconds=deadline)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_stub.Submit(request, metadata=base._md())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "deadline_seconds" in (info.value.details() or "")


# --- OpenAI-compatible chat ------------------------------------------------------------------------------


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [USER], **fields}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param(_chat(max_tokens=10**12), "max_tokens", id="max_tokens-beyond-int32"),
        pytest.param(_chat(max_completion_tokens=0), "max_completion_tokens", id="max_completion_tokens-0"),
        pytest.param(_chat(max_tokens="10"), "max_tokens", id="max_tokens-string"),
        pytest.param(_chat(temperature=10**400), "temperature", id="temperature-huge-int"),
        pytest.param(_chat(temperature=2.5), "temperature", id="temperature-above-2"),
        pytest.param(_chat(top_p=-0.1), "top_p", id="top_p-negative"),
        pytest.param(_chat(n=2), "n", id="n-2"),
        pytest.param(_chat(stop=[1]), "stop", id="stop-not-strings"),
        pytest.param(_chat(user=5), "user", id="user-not-a-string"),
        pytest.param(_chat(stream="yes"), "stream", id="stream-not-a-boolean"),
        pytest.param(_chat(stream=True, stream_options="x"), "stream_options", id="stream_options-string"),
        pytest.param(_chat(seed=10**400), "seed", id="extra-int-beyond-double"),
        pytest.param(_chat(metadata=_nested(40)), "metadata", id="extra-nested-too-deep-for-struct"),
        pytest.param({"model": MODEL, "messages": [5]}, "messages[0]", id="message-not-an-object"),
        pytest.param({"model": MODEL, "messages": [{"role": 1}]}, "messages[0].role", id="role-not-a-string"),
        pytest.param(
            {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            id="content-int",
        ),
        pytest.param(
            {"model": MODEL, "messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]},
            "messages[0].tool_calls",
            id="tool_calls-not-an-array",
        ),
        pytest.param(
            {"model": MODEL, "messages": [{"role": "tool", "content": "x", "tool_call_id": 7}]},
            "messages[0].tool_call_id",
            id="tool_call_id-not-a-string",
        ),
    ],
)
async def test_malformed_chat_parameter_is_openai_400_naming_it(
    http: aiohttp.ClientSession, body: dict[str, Any], param: str
) -> None:
    async with http.post("/v1/chat/completions", json=body, headers=base._auth()) as resp:
        assert resp.status == 400, await resp.text()
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.rsplit(".", 1)[-1].split("[")[0] in error["message"]


async def test_deeply_nested_chat_body_is_openai_400(http: aiohttp.ClientSession) -> None:
    headers = {**base._auth(), "Content-Type": "application/json"}
    async with http.post("/v1/chat/completions", data=b"[" * 5000, headers=headers) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "nested too deeply" in error["message"]


async def test_pass_through_field_at_the_struct_limit_reaches_the_provider(
    http: aiohttp.ClientSession,
) -> None:
    objects: Any = "x"
    for _ in range(32):  # objects cost a Struct the most protobuf levels
        objects = {"k": objects}
    body = _chat(metadata=objects, seed=2**53, temperature=0, max_tokens=2**31 - 1)
    async with http.post("/v1/chat/completions", json=body, headers=base._auth()) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["model"] == MODEL
