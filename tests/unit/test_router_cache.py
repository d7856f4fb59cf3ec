"""The response cache's pure parts: the request key, the policy, the stored form and the stream replay."""

from __future__ import annotations

import dataclasses

import pytest

from services.common.errors import InvalidInputError
from services.router.cache import CachedAnswer, CachePolicy, cache_mode, request_digest
from services.router.chat import ChatRequest, ChatResult, Message, ToolCall, Usage


def chat(**fields: object) -> ChatRequest:
    base = ChatRequest(model="m", messages=(Message("user", "hello there"),), temperature=0.0)
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def test_the_key_depends_on_what_changes_the_answer() -> None:
    key = request_digest(chat())
    assert request_digest(chat()) == key
    for changed in (
        chat(model="other"),
        chat(messages=(Message("user", "hello there!"),)),
        chat(messages=(Message("system", "hello there"),)),
        chat(temperature=0.5),
        chat(max_tokens=10),
        chat(top_p=0.9),
        chat(stop=("x",)),
        chat(extra={"seed": 7}),
        chat(extra={"tools": [{"type": "function", "function": {"name": "f"}}]}),
    ):
        assert request_digest(changed) != key, changed


def test_the_key_ignores_who_asks_and_the_request_id() -> None:
    key = request_digest(chat())
    assert request_digest(chat(user="u1", tenant="t1", request_id="r1")) == key
    assert request_digest(chat(extra={"a": 1, "b": 2})) == request_digest(chat(extra={"b": 2, "a": 1}))


def test_policy_caches_deterministic_requests_or_opted_in_ones() -> None:
    policy = CachePolicy(ttl_s=60, model_ttls={"short": 5, "never": 0})
    assert policy.ttl(chat(), "auto") == 60
    assert policy.ttl(chat(temperature=None), "auto") == 0  # the provider's default temperature is not 0
    assert policy.ttl(chat(temperature=0.7), "auto") == 0
    assert policy.ttl(chat(temperature=0.7), "on") == 60
    assert policy.ttl(chat(), "off") == 0
    assert policy.ttl(chat(model="short"), "auto") == 5
    assert policy.ttl(chat(model="never"), "on") == 0
    assert CachePolicy(ttl_s=0).ttl(chat(), "on") == 0


@pytest.mark.parametrize("value", ["", "AUTO", " on ", "off"])
def test_cache_modes(value: str) -> None:
    assert cache_mode(value) in ("auto", "on", "off")


def test_an_unknown_cache_mode_names_the_field() -> None:
    with pytest.raises(InvalidInputError) as caught:
        cache_mode("always")
    assert caught.value.details["field"] == "cache"
    assert "always" in caught.value.message


ANSWER = CachedAnswer(
    ChatResult(
        id="chatcmpl-1",
        model="provider-model",
        content="The answer  is\n42.",
        finish_reason="stop",
        usage=Usage(7, 5),
        tool_calls=(ToolCall("call-1", "lookup", '{"q": "x"}'),),
        created=1_700_000_000,
    ),
    model="m",
    provider="openai",
    simulated=True,
)


def test_the_stored_form_round_trips() -> None:
    assert CachedAnswer.from_json(ANSWER.to_json()) == ANSWER


def test_a_corrupt_stored_form_raises() -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        CachedAnswer.from_json('{"id": 1}')


def test_replay_streams_the_same_answer_with_the_route_first_and_last() -> None:
    deltas = ANSWER.replay()
    assert len(deltas) > 3
    assert "".join(d.text for d in deltas) == ANSWER.result.content
    assert [c for d in deltas for c in d.tool_calls] == list(ANSWER.result.tool_calls)
    first, last = deltas[0], deltas[-1]
    assert first.route is not None and first.route.cache == "hit" and first.route.model == "m"
    assert last.route is not None and last.finish_reason == "stop"
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (7, 5)
    assert all(d.route is None for d in deltas[1:-1])


def test_replay_of_an_empty_answer_still_has_a_first_and_a_last_delta() -> None:
    empty = dataclasses.replace(ANSWER, result=dataclasses.replace(ANSWER.result, content="", tool_calls=()))
    deltas = empty.replay()
    assert len(deltas) == 2 and deltas[0].route is not None and deltas[-1].finish_reason == "stop"
