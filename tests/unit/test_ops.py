"""Operations: file confinement, json_transform, llm_call's prompt, the HTTP SSRF guard, and the engine."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from openclaw.v1 import router_pb2
from services.common.errors import InvalidInputError, NotFoundError, OpenClawError, PermissionDeniedError
from services.executor.context import OpContext, OpServices, RunState
from services.executor.dsl import Step, parse_workflow
from services.executor.engine import Engine, StepFailed
from services.executor.ops import catalogue
from services.executor.ops.files import default_name, resolve_path, text_preview
from services.executor.ops.http import HttpClient, is_public

TENANT = "acme"


def ctx_for(root: Path, **kwargs: Any) -> OpContext:
    services = kwargs.pop("services", None) or OpServices(storage_root=root)
    return OpContext(tenant=TENANT, task_id="t1", step_id="s1", services=services, **kwargs)


async def run(op: str, params: dict[str, Any], ctx: OpContext) -> Any:
    operation = catalogue()[op]
    return await operation.run(operation.params.model_validate(params), ctx)


# -- files ----------------------------------------------------------------------------------------------


async def test_write_then_read(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    wrote = await run("file_write", {"path": "reports/a.txt", "content": "héllo"}, ctx)
    assert wrote == {
        "path": "reports/a.txt",
        "size": 6,
        "sha256": hashlib.sha256("héllo".encode()).hexdigest(),
    }
    assert (tmp_path / TENANT / "reports" / "a.txt").read_text() == "héllo"
    read = await run("file_read", {"path": "reports/a.txt"}, ctx)
    assert read["content"] == "héllo" and read["size"] == 6

    await run("file_write", {"path": "reports/a.txt", "content": "!", "mode": "append"}, ctx)
    assert (await run("file_read", {"path": "reports/a.txt"}, ctx))["content"] == "héllo!"
    with pytest.raises(InvalidInputError, match="already exists"):
        await run("file_write", {"path": "reports/a.txt", "content": "x", "mode": "create"}, ctx)


async def test_json_and_base64_formats(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    await run("file_write", {"path": "d.json", "content": {"a": [1, 2]}, "format": "json"}, ctx)
    assert (await run("file_read", {"path": "d.json", "format": "json"}, ctx))["content"] == {"a": [1, 2]}
    await run("file_write", {"path": "b.bin", "content": "AAEC/w==", "format": "base64"}, ctx)
    assert (tmp_path / TENANT / "b.bin").read_bytes() == b"\x00\x01\x02\xff"
    assert (await run("file_read", {"path": "b.bin", "format": "base64"}, ctx))["content"] == "AAEC/w=="
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        await run("file_read", {"path": "b.bin"}, ctx)
    with pytest.raises(NotFoundError):
        await run("file_read", {"path": "missing.txt"}, ctx)


@pytest.mark.parametrize(
    ("path", "error", "fragment"),
    [
        ("../other/secret.txt", InvalidInputError, "contains '..'"),
        ("a/../../x", InvalidInputError, "contains '..'"),
        ("/etc/passwd", InvalidInputError, "is absolute"),
        ("~/x", InvalidInputError, "is absolute"),
        ("", InvalidInputError, "non-empty relative path"),
        (".", InvalidInputError, "names the storage root"),
    ],
)
async def test_paths_cannot_leave_the_tenant_root(
    tmp_path: Path, path: str, error: type[OpenClawError], fragment: str
) -> None:
    ctx = ctx_for(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "secret.txt").write_text("secret")
    for op, params in (("file_read", {"path": path}), ("file_write", {"path": path, "content": "x"})):
        with pytest.raises(error) as err:
            await run(op, params, ctx)
        assert fragment in err.value.message


async def test_symlinks_that_escape_are_refused(tmp_path: Path) -> None:
    ctx = ctx_for(tmp_path)
    root = tmp_path / TENANT
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside, root / "door")
    os.symlink(outside / "secret.txt", root / "link.txt")
    for path in ("door/secret.txt", "link.txt"):
        with pytest.raises(PermissionDeniedError, match="outside the tenant's storage"):
            await run("file_read", {"path": path}, ctx)
    with pytest.raises(PermissionDeniedError):
        await run("file_write", {"path": "door/new.txt", "content": "x"}, ctx)
    assert not (outside / "new.txt").exists()
    assert (outside / "secret.txt").read_text() == "secret"
    # A symlink that stays inside the root is fine.
    (root / "real.txt").write_text("inside")
    os.symlink(root / "real.txt", root / "alias.txt")
    assert (await run("file_read", {"path": "alias.txt"}, ctx))["content"] == "inside"


def test_resolve_path_and_names(tmp_path: Path) -> None:
    assert resolve_path(tmp_path, "a/b.txt") == tmp_path.resolve() / "a" / "b.txt"
    assert default_name("s3://bucket/dir/data.csv") == "data.csv"
    assert default_name("https://x.test/files/r%C3%A9sum%C3%A9.txt?x=1") == "résumé.txt"
    assert default_name("https://x.test/") == "download"
    assert default_name("https://x.test/..") == "download"
    text, cut = text_preview(b"a,b\n1,2\n", "text/csv")
    assert (text, cut) == ("a,b\n1,2\n", False)
    assert text_preview(b"\x00\x01\xff", "application/octet-stream") == (None, False)


# -- data -----------------------------------------------------------------------------------------------


async def test_json_transform(tmp_path: Path) -> None:
    data = {"people": [{"name": "a", "age": 30}, {"name": "b", "age": 17}]}
    ctx = ctx_for(tmp_path)
    assert await run("json_transform", {"expression": "people[?age > `18`].name", "input": data}, ctx) == [
        "a"
    ]
    prev = ctx_for(tmp_path, prev_output=data, has_prev=True)
    assert await run("json_transform", {"expression": "length(people)"}, prev) == 2
    with pytest.raises(InvalidInputError, match="expression"):
        await run("json_transform", {"expression": "abs(people)", "input": data}, ctx)


# -- llm_call -------------------------------------------------------------------------------------------


class FakeRouter:
    def __init__(self) -> None:
        self.requests: list[router_pb2.ChatRequest] = []

    async def chat(
        self, request: router_pb2.ChatRequest, *, timeout_s: float | None = None
    ) -> router_pb2.ChatResponse:
        self.requests.append(request)
        return router_pb2.ChatResponse(
            model=request.model,
            message=router_pb2.ChatMessage(role="assistant", content="ok"),
            usage=router_pb2.Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4),
            route=router_pb2.RouteInfo(model=request.model, provider="openai", simulated=True),
        )


async def test_llm_call_appends_the_previous_output_unless_input_is_given(tmp_path: Path) -> None:
    router = FakeRouter()
    services = OpServices(storage_root=tmp_path, router=router)
    prev = {"path": "data.csv", "text": "a,b\n1,2\n", "size": 8}
    ctx = ctx_for(tmp_path, services=services, prev_output=prev, has_prev=True)
    out = await run(
        "llm_call", {"model": "claude-3", "prompt": "分析数据并生成报告摘要", "system": "be brief"}, ctx
    )
    assert out["content"] == "ok" and out["usage"]["total_tokens"] == 4 and out["route"]["simulated"] is True
    sent = router.requests[-1]
    assert [m.role for m in sent.messages] == ["system", "user"]
    assert sent.messages[1].content == "分析数据并生成报告摘要\n\nInput (data.csv):\na,b\n1,2\n"
    assert sent.tenant == TENANT and not sent.HasField("temperature")

    await run("llm_call", {"model": "m", "prompt": "alone", "input": None, "temperature": 0.2}, ctx)
    assert router.requests[-1].messages[0].content == "alone"
    assert router.requests[-1].temperature == pytest.approx(0.2)
    await run("llm_call", {"model": "m", "prompt": "p", "input": {"k": 1}}, ctx)
    assert router.requests[-1].messages[0].content == 'p\n\nInput:\n{\n "k": 1\n}'


# -- http_request SSRF guard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9000/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://localhost:1/",
    ],
)
async def test_http_request_refuses_private_targets(tmp_path: Path, url: str) -> None:
    async with HttpClient(allow_private_network=False) as http:
        ctx = ctx_for(tmp_path, services=OpServices(storage_root=tmp_path, http=http))
        with pytest.raises(PermissionDeniedError, match="private"):
            await run("http_request", {"url": url}, ctx)
        with pytest.raises(PermissionDeniedError, match="private"):
            await run("file_download", {"url": url}, ctx)
    assert not (tmp_path / TENANT).exists() or not any((tmp_path / TENANT).iterdir())


def test_public_addresses() -> None:
    import ipaddress

    assert is_public(ipaddress.ip_address("93.184.216.34"))
    assert not is_public(ipaddress.ip_address("100.64.0.1"))
    assert not is_public(ipaddress.ip_address("fe80::1"))
    assert not is_public(ipaddress.ip_address("224.0.0.1"))


async def test_http_request_refuses_other_schemes(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be an http:// or https:// URL"):
        catalogue()["http_request"].params.model_validate({"url": "file:///etc/passwd"})
    async with HttpClient() as http:
        with pytest.raises(InvalidInputError, match="only http and https"):
            async with http.open("GET", "file:///etc/passwd"):
                pass


# -- the engine, with an in-memory journal -------------------------------------------------------------


class MemoryJournal:
    def __init__(self, done: dict[str, Any] | None = None) -> None:
        self.done = dict(done or {})
        self.events: list[tuple[str, str]] = []
        self.cancel = False

    async def completed_steps(self) -> dict[str, Any]:
        return dict(self.done)

    async def step_started(self, step: Step) -> None:
        self.events.append(("started", step.id))

    async def step_succeeded(self, step: Step, output: Any, duration_ms: float) -> None:
        self.done[step.id] = output
        self.events.append(("succeeded", step.id))

    async def step_failed(self, step: Step, error: dict[str, Any], duration_ms: float) -> None:
        self.events.append(("failed", step.id))

    async def cancel_requested(self) -> bool:
        return self.cancel


async def test_engine_passes_outputs_and_resumes(tmp_path: Path) -> None:
    doc = {
        "name": "w",
        "steps": [
            {
                "id": "save",
                "type": "file_write",
                "params": {"path": "n.json", "content": {"n": 2}, "format": "json"},
            },
            {
                "id": "load",
                "type": "file_read",
                "params": {"path": "${{ steps.save.output.path }}", "format": "json"},
            },
            {"type": "json_transform", "params": {"expression": "content.n"}},
        ],
        "outputs": {
            "n": "${{ prev.output }}",
            "file": "${{ steps.load.output.path }}",
            "who": "${{ workflow.name }}/${{ task.id }}",
        },
    }
    wf = parse_workflow(doc, known_ops=catalogue())
    engine = Engine(catalogue(), OpServices(storage_root=tmp_path))
    journal = MemoryJournal()
    state = RunState(workflow=wf, task_id="t1", tenant=TENANT, attempt=1, inputs={})
    assert await engine.run(wf, state, journal) == {"n": 2, "file": "n.json", "who": "w/t1"}
    assert journal.events == [(e, s) for s in ("save", "load", "step3") for e in ("started", "succeeded")]

    # Resuming with "save" checkpointed: it is not run again and its stored output is used.
    (tmp_path / TENANT / "n.json").unlink()
    (tmp_path / TENANT / "m.json").write_text('{"n": 7}')
    resumed = MemoryJournal({"save": {"path": "m.json", "size": 8, "sha256": ""}})
    state = RunState(workflow=wf, task_id="t1", tenant=TENANT, attempt=2, inputs={})
    assert await engine.run(wf, state, resumed) == {"n": 7, "file": "m.json", "who": "w/t1"}
    assert ("started", "save") not in resumed.events
    assert not (tmp_path / TENANT / "n.json").exists()


async def test_engine_names_the_step_and_expression_on_failure(tmp_path: Path) -> None:
    doc = {
        "steps": [
            {"type": "json_transform", "params": {"expression": "a", "input": {"a": {"b": 1}}}},
            {"type": "file_read", "params": {"path": "${{ steps.step1.output.c }}"}},
        ]
    }
    wf = parse_workflow(doc, known_ops=catalogue())
    engine = Engine(catalogue(), OpServices(storage_root=tmp_path))
    journal = MemoryJournal()
    with pytest.raises(StepFailed) as err:
        await engine.run(wf, RunState(workflow=wf, task_id="t", tenant=TENANT, attempt=1, inputs={}), journal)
    assert not err.value.retryable
    record = err.value.record()
    assert record["step_id"] == "step2" and record["code"] == "invalid_input"
    assert "step 'step2' (steps[1], file_read)" in record["message"]
    assert "${{ steps.step1.output.c }}: steps.step1.output has no key 'c' (keys: b)" in record["message"]
    assert journal.events[-1] == ("failed", "step2")
