"""LLM operations against a fake router: the requests they send, how replies are checked and repaired."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from openclaw.v1 import router_pb2
from services.common.errors import InvalidInputError, OpenClawError, UnavailableError
from services.executor.context import OpContext
from tests.unit.ops.harness import ctx_for, run_op


class FakeRouter:
    """A ChatClient that records each request and answers with the next scripted reply."""

    def __init__(self, replies: Iterable[str] = ("ok",)) -> None:
        self.replies = list(replies)
        self.requests: list[router_pb2.ChatRequest] = []
        self.timeouts: list[float | None] = []

    async def chat(
        self, request: router_pb2.ChatRequest, *, timeout_s: float | None = None
    ) -> router_pb2.ChatResponse:
        self.requests.append(request)
        self.timeouts.append(timeout_s)
        text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        words = len(text.split())
        return router_pb2.ChatResponse(
            id=f"r{len(self.requests)}",
            model=request.model,
            message=router_pb2.ChatMessage(role="assistant", content=text),
            finish_reason="stop",
            usage=router_pb2.Usage(prompt_tokens=10, completion_tokens=words, total_tokens=10 + words),
            route=router_pb2.RouteInfo(
                model=request.model,
                provider="fake",
                attempts=[router_pb2.Attempt(model=request.model, provider="fake", outcome="ok")],
            ),
        )

    def messages(self, index: int = -1) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in self.requests[index].messages]


def ctx_with(tmp_path: Path, router: FakeRouter, **kwargs: Any) -> OpContext:
    return ctx_for(tmp_path, router=router, **kwargs)


# -- llm_call, llm_chat -----------------------------------------------------------------------------


async def test_call_sends_system_prompt_and_previous_output(tmp_path: Path) -> None:
    router = FakeRouter(["hello back"])
    ctx = ctx_with(tmp_path, router, prev={"text": "the page"}, has_prev=True)
    out = await run_op(
        "llm_call", {"model": "m", "prompt": "Summarise", "system": "be brief", "timeout_s": 5}, ctx
    )
    assert router.messages() == [("system", "be brief"), ("user", "Summarise\n\nInput:\nthe page")]
    assert router.requests[0].tenant == "acme" and router.requests[0].request_id == "t1:s1:1"
    assert router.timeouts == [5]
    assert out["content"] == "hello back" and out["usage"]["total_tokens"] == 12
    assert out["route"]["attempts"][0]["outcome"] == "ok"


async def test_call_without_a_router_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="no router client"):
        await run_op("llm_call", {"model": "m", "prompt": "hi"}, ctx_for(tmp_path))


async def test_chat_sends_the_conversation_and_returns_it_with_the_reply(tmp_path: Path) -> None:
    router = FakeRouter(["Paris."])
    conversation = [{"role": "user", "content": "Capital of France?"}]
    out = await run_op(
        "llm_chat",
        {"model": "m", "messages": conversation, "system": "terse", "temperature": 0.2},
        ctx_with(tmp_path, router),
    )
    assert router.messages() == [("system", "terse"), ("user", "Capital of France?")]
    assert router.requests[0].temperature == pytest.approx(0.2)
    assert out["content"] == "Paris."
    assert out["messages"][-1] == {"role": "assistant", "content": "Paris."}


async def test_chat_chains_from_a_previous_chat(tmp_path: Path) -> None:
    router = FakeRouter(["Lyon."])
    previous = {
        "content": "Paris.",
        "messages": [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ],
    }
    ctx = ctx_with(tmp_path, router, prev=previous, has_prev=True)
    out = await run_op("llm_chat", {"model": "m", "prompt": "And the second city?"}, ctx)
    assert router.messages() == [
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "And the second city?"),
    ]
    assert len(out["messages"]) == 4


async def test_chat_with_a_prompt_after_an_unrelated_step_starts_afresh(tmp_path: Path) -> None:
    router = FakeRouter()
    ctx = ctx_with(tmp_path, router, prev={"status": 200}, has_prev=True)
    await run_op("llm_chat", {"model": "m", "prompt": "hi"}, ctx)
    assert router.messages() == [("user", "hi")]


async def test_chat_errors_name_the_field(tmp_path: Path) -> None:
    router = FakeRouter()
    with pytest.raises(ValidationError, match="role"):
        await run_op(
            "llm_chat",
            {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
            ctx_with(tmp_path, router),
        )
    bad_prev = ctx_with(tmp_path, router, prev=[{"role": "user"}], has_prev=True)
    with pytest.raises(InvalidInputError, match=r"messages\[0\]\.content: Field required"):
        await run_op("llm_chat", {"model": "m"}, bad_prev)
    with pytest.raises(InvalidInputError, match="messages: required"):
        await run_op("llm_chat", {"model": "m"}, ctx_with(tmp_path, router))
    with pytest.raises(InvalidInputError, match="no user message"):
        await run_op(
            "llm_chat",
            {"model": "m", "messages": [{"role": "system", "content": "x"}]},
            ctx_with(tmp_path, router),
        )
    assert router.requests == []


# -- summarize, translate, rewrite ------------------------------------------------------------------


async def test_summarize_builds_the_instruction_and_sends_the_text_alone(tmp_path: Path) -> None:
    router = FakeRouter(["- a\n- b"])
    ctx = ctx_with(tmp_path, router, prev={"content": "A long report."}, has_prev=True)
    params = {
        "model": "m",
        "style": "bullets",
        "length": "short",
        "max_words": 40,
        "focus": "risks",
        "language": "German",
    }
    out = await run_op("llm_summarize", params, ctx)
    (system_role, system), user = router.messages()
    assert system_role == "system" and user == ("user", "A long report.")
    for part in (
        "bulleted list",
        "1 to 2 sentences",
        "at most 40 words",
        "Concentrate on: risks",
        "in German",
    ):
        assert part in system
    assert out["content"] == "- a\n- b"


async def test_summarize_refuses_empty_text(tmp_path: Path) -> None:
    router = FakeRouter()
    with pytest.raises(InvalidInputError, match="text: is empty"):
        await run_op("llm_summarize", {"model": "m", "text": "   "}, ctx_with(tmp_path, router))
    with pytest.raises(InvalidInputError, match="text: required"):
        await run_op("llm_summarize", {"model": "m"}, ctx_with(tmp_path, router))


async def test_translate_names_languages_and_glossary(tmp_path: Path) -> None:
    router = FakeRouter(["Bonjour {name}"])
    params = {
        "model": "m",
        "text": "Hello {name}",
        "target_language": "French",
        "source_language": "English",
        "glossary": {"OpenClaw": "OpenClaw"},
    }
    out = await run_op("llm_translate", params, ctx_with(tmp_path, router))
    system = router.messages()[0][1]
    assert "from English into French" in system and "- OpenClaw -> OpenClaw" in system
    assert router.messages()[1] == ("user", "Hello {name}") and out["content"] == "Bonjour {name}"
    with pytest.raises(ValidationError, match="target_language"):
        await run_op("llm_translate", {"model": "m", "text": "x"}, ctx_with(tmp_path, router))


async def test_rewrite_with_style_and_instruction(tmp_path: Path) -> None:
    router = FakeRouter(["Dear Sir,"])
    params = {"model": "m", "text": "hey you", "style": "formal", "instruction": "address a bank manager"}
    await run_op("llm_rewrite", params, ctx_with(tmp_path, router))
    assert "more formal; address a bank manager" in router.messages()[0][1]
    with pytest.raises(ValidationError, match="give style or instruction"):
        await run_op("llm_rewrite", {"model": "m", "text": "x"}, ctx_with(tmp_path, router))


# -- classify, sentiment ----------------------------------------------------------------------------

LABELS = ["billing", "bug report", "feature request"]


@pytest.mark.parametrize(
    "answer", ["bug report", "Bug Report.", '"bug report"', "Label: bug report", '{"label": "bug report"}']
)
async def test_classify_accepts_the_label_however_decorated(tmp_path: Path, answer: str) -> None:
    router = FakeRouter([answer])
    out = await run_op(
        "llm_classify", {"model": "m", "text": "it crashes", "labels": LABELS}, ctx_with(tmp_path, router)
    )
    assert out["label"] == "bug report" and out["attempts"] == 1
    system = router.messages()[0][1]
    assert all(f"- {label}" in system for label in LABELS)
    assert router.messages()[1] == ("user", "it crashes")


async def test_classify_repairs_once_then_fails_naming_the_reply(tmp_path: Path) -> None:
    router = FakeRouter(["crash", "bug report"])
    out = await run_op(
        "llm_classify", {"model": "m", "text": "it crashes", "labels": LABELS}, ctx_with(tmp_path, router)
    )
    assert out["label"] == "bug report" and out["attempts"] == 2
    assert out["usage"]["prompt_tokens"] == 20  # both calls are counted
    repair = router.messages(-1)
    assert repair[-2] == ("assistant", "crash") and "'crash' is not one of the labels" in repair[-1][1]
    assert router.requests[-1].request_id == "t1:s1:1:repair"

    stubborn = FakeRouter(["crash"])
    with pytest.raises(
        OpenClawError, match=r"did not answer with a label .*'crash' is not one of the labels"
    ) as info:
        await run_op(
            "llm_classify", {"model": "m", "text": "x", "labels": LABELS}, ctx_with(tmp_path, stubborn)
        )
    assert info.value.details["reply"] == "crash" and len(stubborn.requests) == 2

    no_repair = FakeRouter(["crash"])
    with pytest.raises(OpenClawError, match="not one of the labels"):
        await run_op(
            "llm_classify",
            {"model": "m", "text": "x", "labels": LABELS, "repair": False},
            ctx_with(tmp_path, no_repair),
        )
    assert len(no_repair.requests) == 1


async def test_classify_multi_label(tmp_path: Path) -> None:
    params = {"model": "m", "text": "x", "labels": LABELS, "multi_label": True}
    for answer, expected in [
        ('["billing", "Bug report"]', ["billing", "bug report"]),
        ('```json\n["feature request"]\n```', ["feature request"]),
        ("- billing\n- feature request", ["billing", "feature request"]),
        ("[]", []),
    ]:
        out = await run_op("llm_classify", params, ctx_with(tmp_path, FakeRouter([answer])))
        assert out["labels"] == expected, answer


async def test_classify_params_are_checked(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, FakeRouter())
    with pytest.raises(ValidationError, match="labels must differ"):
        await run_op("llm_classify", {"model": "m", "text": "x", "labels": ["a", "A"]}, ctx)
    with pytest.raises(ValidationError, match="labels"):
        await run_op("llm_classify", {"model": "m", "text": "x", "labels": ["only"]}, ctx)


async def test_sentiment(tmp_path: Path) -> None:
    router = FakeRouter(["Negative"])
    ctx = ctx_with(tmp_path, router, prev="The update broke everything.", has_prev=True)
    out = await run_op("llm_sentiment", {"model": "m"}, ctx)
    assert out["sentiment"] == "negative"
    assert "- mixed" in router.messages()[0][1]
    with pytest.raises(OpenClawError, match="not one of the labels"):
        await run_op("llm_sentiment", {"model": "m", "text": "x"}, ctx_with(tmp_path, FakeRouter(["angry"])))


# -- extract ----------------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "born": {"type": "string", "format": "date"},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "answer",
    [
        '{"name": "Ada", "age": 36}',
        '```json\n{"name": "Ada", "age": 36}\n```',
        'Here it is: {"name": "Ada", "age": 36} Hope that helps.',
    ],
)
async def test_extract_parses_and_validates(tmp_path: Path, answer: str) -> None:
    router = FakeRouter([answer])
    out = await run_op(
        "llm_extract", {"model": "m", "text": "Ada, 36", "json_schema": PERSON}, ctx_with(tmp_path, router)
    )
    assert out["data"] == {"name": "Ada", "age": 36} and out["attempts"] == 1
    system = router.messages()[0][1]
    assert json.dumps(PERSON) in system and router.messages()[1] == ("user", "Ada, 36")


async def test_extract_feeds_back_validation_errors_once(tmp_path: Path) -> None:
    router = FakeRouter(['{"name": "Ada", "age": "36", "born": "yesterday"}', '{"name": "Ada", "age": 36}'])
    out = await run_op(
        "llm_extract", {"model": "m", "text": "Ada, 36", "json_schema": PERSON}, ctx_with(tmp_path, router)
    )
    assert out["data"] == {"name": "Ada", "age": 36} and out["attempts"] == 2
    feedback = router.messages(-1)[-1][1]
    assert "$.age: '36' is not of type 'integer'" in feedback
    assert "$.born: 'yesterday' is not a 'date'" in feedback


async def test_extract_fails_with_the_errors_when_still_invalid(tmp_path: Path) -> None:
    router = FakeRouter(["I cannot help with that.", '{"age": -1}'])
    with pytest.raises(OpenClawError, match="did not return JSON valid against the schema") as info:
        await run_op(
            "llm_extract", {"model": "m", "text": "x", "json_schema": PERSON}, ctx_with(tmp_path, router)
        )
    assert "the reply is not JSON" in router.messages(-1)[-1][1]
    errors = info.value.details["errors"]
    assert (
        "$: 'name' is a required property" in errors and "$.age: -1 is less than the minimum of 0" in errors
    )


async def test_extract_schema_is_checked(tmp_path: Path) -> None:
    ctx = ctx_with(tmp_path, FakeRouter(['{"a": 1}']))
    with pytest.raises(ValidationError, match="not a valid JSON Schema at properties/a/type"):
        await run_op(
            "llm_extract",
            {"model": "m", "text": "x", "json_schema": {"properties": {"a": {"type": "thing"}}}},
            ctx,
        )
    remote = {"$ref": "http://127.0.0.1:9/schema.json"}
    with pytest.raises(InvalidInputError, match="json_schema: cannot resolve"):
        await run_op("llm_extract", {"model": "m", "text": "x", "json_schema": remote}, ctx)


async def test_extract_survives_a_catastrophic_pattern_in_the_schema(tmp_path: Path) -> None:
    """A workflow's schema is hostile input: its regexes run under a time limit, not on the worker's GIL forever."""
    evil = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a|aa)+$"}}}
    router = FakeRouter([json.dumps({"a": "a" * 64 + "!"})])
    with pytest.raises(InvalidInputError, match="catastrophic backtracking"):
        await run_op(
            "llm_extract", {"model": "m", "text": "x", "json_schema": evil}, ctx_with(tmp_path, router)
        )


async def test_a_reply_of_the_wrong_shape_is_an_invalid_model_output_error(tmp_path: Path) -> None:
    from services.common.errors import InvalidModelOutputError

    router = FakeRouter(["not json at all"])
    with pytest.raises(InvalidModelOutputError) as info:
        await run_op(
            "llm_extract", {"model": "m", "text": "x", "json_schema": PERSON}, ctx_with(tmp_path, router)
        )
    assert info.value.code == "invalid_model_output" and info.value.http_status == 502
