"""The three services and the simulator as processes, driven by real clients over HTTP."""

from __future__ import annotations

import re
import time
from typing import Any

import boto3
import httpx
import openai
import pytest

from openclaw.launcher import LocalStack
from tests.e2e.otlp import OtlpReceiver

pytestmark = pytest.mark.e2e

# The design article's workflow, exactly as printed there.
ARTICLE_WORKFLOW: dict[str, Any] = {
    "name": "data_processing_pipeline",
    "steps": [
        {"type": "file_download", "params": {"url": "s3://bucket/data.csv", "auth": "aws_credentials"}},
        {"type": "llm_call", "params": {"model": "claude-3", "prompt": "分析数据并生成报告摘要"}},
    ],
}
CSV = "region,units,revenue\nnorth,12,340.5\nsouth,7,120.0\neast,31,910.25\n"


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _wait_task(client: httpx.Client, task_id: str, token: str) -> dict[str, Any]:
    deadline = time.monotonic() + 45
    while True:
        response = client.get(
            f"/v1/tasks/{task_id}", params={"wait": 10, "steps": "true"}, headers=_headers(token)
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return body


def _sim(stack: LocalStack, model: str, behaviour: dict[str, Any] | None) -> None:
    url = f"{stack.config.simulator_url}/_sim/models/{model}"
    response = httpx.put(url, json=behaviour) if behaviour is not None else httpx.delete(url)
    assert response.status_code in (200, 204), response.text


def test_article_workflow_runs_over_http(stack: LocalStack, token: str, s3_endpoint: str) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket="bucket")
    s3.put_object(Bucket="bucket", Key="data.csv", Body=CSV.encode())

    with httpx.Client(base_url=stack.config.gateway_url, timeout=30) as client:
        submitted = client.post("/v1/tasks", json={"workflow": ARTICLE_WORKFLOW}, headers=_headers(token))
        assert submitted.status_code == 202, submitted.text
        task = _wait_task(client, submitted.json()["id"], token)

    assert task["status"] == "succeeded", task
    steps = task["steps"]
    download, llm = steps["step1"], steps["step2"]
    assert download["output"]["size"] == len(CSV.encode())
    # The LLM step saw the downloaded data: the simulator reports how many lines it was given.
    content = llm["output"]["content"]
    assert content.startswith("[simulated claude-3]")
    seen = re.search(r"in (\d+) lines", content)
    assert seen is not None and int(seen.group(1)) >= 1 + CSV.count("\n"), content
    assert task["result"]["content"] == content


def test_openai_client_plain_and_streaming(stack: LocalStack, token: str) -> None:
    client = openai.OpenAI(base_url=f"{stack.config.gateway_url}/v1", api_key=token, max_retries=0)
    try:
        models = {m.id for m in client.models.list()}
        assert {"gpt-4-mini", "claude-3", "llama-3"} <= models

        reply = client.chat.completions.create(
            model="gpt-4-mini", messages=[{"role": "user", "content": "Say something about otters"}]
        )
        assert reply.choices[0].message.content
        assert "otters" in reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.total_tokens > 0

        stream = client.chat.completions.create(
            model="llama-3",
            messages=[{"role": "user", "content": "Stream me a reply about badgers"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        deltas, usage = [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert len(deltas) > 1
        assert "badgers" in "".join(deltas)
        assert usage is not None and usage.completion_tokens > 0

        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        assert "no-such-model" in str(missing.value)
    finally:
        client.close()


def test_failing_model_falls_back(stack: LocalStack, token: str) -> None:
    # claude-3's fallback chain in the default table is gpt-4-mini.
    _sim(stack, "claude-3", {"outage": True})
    try:
        with httpx.Client(base_url=stack.config.gateway_url, timeout=30) as client:
            response = client.post(
                "/v1/chat/completions",
                json={"model": "claude-3", "messages": [{"role": "user", "content": "are you there?"}]},
                headers=_headers(token),
            )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "gpt-4-mini"
        attempts = body["openclaw"]["route"]["attempts"]
        assert [a["model"] for a in attempts] == ["claude-3", "gpt-4-mini"]
        assert attempts[0]["outcome"] != "ok" and attempts[1]["outcome"] == "ok"
    finally:
        _sim(stack, "claude-3", None)


def test_one_trace_spans_gateway_executor_and_router(
    stack: LocalStack, token: str, otlp: OtlpReceiver
) -> None:
    workflow = {
        "name": "traced",
        "steps": [{"type": "llm_call", "params": {"model": "gpt-4-mini", "prompt": "hi"}}],
    }
    with httpx.Client(base_url=stack.config.gateway_url, timeout=30) as client:
        submitted = client.post("/v1/tasks", json={"workflow": workflow}, headers=_headers(token))
        assert submitted.status_code == 202, submitted.text
        task = _wait_task(client, submitted.json()["id"], token)
    assert task["status"] == "succeeded", task
    trace_id = task["trace_id"]
    assert len(trace_id) == 32

    wanted = {"openclaw-gateway", "openclaw-executor", "openclaw-router"}
    deadline = time.monotonic() + 15
    services: set[str] = set()
    while time.monotonic() < deadline and not wanted <= services:
        services = {span.service for span in otlp.spans(trace_id)}
        time.sleep(0.2)
    assert wanted <= services, f"services seen in trace {trace_id}: {services}"
    # The router's spans are children within the same trace, down to the provider call.
    names = {span.name for span in otlp.spans(trace_id) if span.service == "openclaw-router"}
    assert names, "router exported no spans for the trace"
