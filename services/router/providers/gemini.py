"""Google Gemini ``generateContent`` and ``streamGenerateContent?alt=sse``; replies mapped to OpenAI terms."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from services.router.chat import ChatDelta, ChatRequest, ChatResult, Message, ToolCall, Usage
from services.router.providers.base import (
    HttpAdapter,
    ProviderError,
    arguments_text,
    as_dict,
    parse_arguments,
    pick,
)
from services.router.registry import ModelSpec

API_VERSION = "v1beta"
_SYSTEM_ROLES = frozenset({"system", "developer"})
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"}
_BLOCKED = frozenset({"SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "RECITATION", "IMAGE_SAFETY"})
_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
_PASS_THROUGH = frozenset({"safetySettings", "cachedContent", "toolConfig", "labels"})


def model_url(endpoint: str, model: str, *, stream: bool) -> str:
    """``{host}/v1beta/models/{model}:generateContent`` (or the SSE stream); the host may carry ``/v1beta``."""
    base = endpoint.rstrip("/")
    if not base.endswith(("/v1beta", "/v1")):
        base += "/" + API_VERSION
    name = quote(model.removeprefix("models/"), safe="-._~")
    return f"{base}/models/{name}:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")


def _function_response(message: Message, names: dict[str, str]) -> dict[str, Any]:
    value = parse_arguments(message.content)
    response = value if isinstance(value, dict) and "_raw" not in value else {"content": message.content}
    name = message.name or names.get(message.tool_call_id, "")
    part: dict[str, Any] = {"name": name, "response": response}
    if message.tool_call_id:
        part["id"] = message.tool_call_id
    return {"functionResponse": part}


def encode_contents(messages: tuple[Message, ...]) -> tuple[str, list[dict[str, Any]]]:
    """(system instruction, contents): assistant turns are ``model``, tool results ``functionResponse`` parts."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the results that answer them
    for m in messages:
        if m.role in _SYSTEM_ROLES:
            if m.content:
                system.append(m.content)
            continue
        if m.role == "tool":
            part = _function_response(m, names)
            if contents and contents[-1]["role"] == "user" and "functionResponse" in contents[-1]["parts"][0]:
                contents[-1]["parts"].append(part)  # parallel calls answered in one turn
            else:
                contents.append({"role": "user", "parts": [part]})
            continue
        parts: list[dict[str, Any]] = [{"text": m.content}] if m.content else []
        for call in m.tool_calls:
            names[call.id] = call.name
            function: dict[str, Any] = {"name": call.name, "args": parse_arguments(call.arguments)}
            if call.id:
                function["id"] = call.id
            parts.append({"functionCall": function})
        contents.append(
            {"role": "model" if m.role == "assistant" else "user", "parts": parts or [{"text": ""}]}
        )
    return "\n\n".join(system), contents


def _tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI-shaped function tools become one ``functionDeclarations`` tool; Gemini-shaped ones pass."""
    declarations: list[dict[str, Any]] = []
    native: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else ():
        function = as_dict(tool).get("function")
        if isinstance(function, dict):
            declaration = {"name": function.get("name", "")}
            if function.get("description"):
                declaration["description"] = function["description"]
            if function.get("parameters"):
                declaration["parameters"] = function["parameters"]
            declarations.append(declaration)
        elif isinstance(tool, dict):
            native.append(tool)
    return ([{"functionDeclarations": declarations}] if declarations else []) + native


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str) and choice in _MODES:
        return {"functionCallingConfig": {"mode": _MODES[choice]}}
    name = as_dict(as_dict(choice).get("function")).get("name")
    if isinstance(name, str) and name:
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return None


def request_body(spec: ModelSpec, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The JSON body of a generateContent call; OpenAI-style tools and options are translated."""
    extra = request.extra or {}
    body = pick(extra, _PASS_THROUGH)
    system, contents = encode_contents(request.messages)
    body["contents"] = contents
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    config: dict[str, Any] = dict(as_dict(extra.get("generationConfig")))
    for key, value in (
        ("temperature", request.temperature),
        ("topP", request.top_p),
        ("maxOutputTokens", request.max_tokens),
    ):
        if value is not None:
            config[key] = value
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if as_dict(extra.get("response_format")).get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if config:
        body["generationConfig"] = config
    tools = _tools(extra.get("tools"))
    if tools:
        body["tools"] = tools
    tool_config = _tool_config(extra.get("tool_choice"))
    if tool_config is not None and "toolConfig" not in body:
        body["toolConfig"] = tool_config
    return body


def headers(spec: ModelSpec) -> dict[str, str]:
    """JSON, and the key in ``x-goog-api-key`` (never in the URL, where logs would keep it)."""
    out = {"Content-Type": "application/json", "Accept": "application/json"}
    if spec.credential:
        out["x-goog-api-key"] = spec.credential
    return out


def _usage(data: Any) -> Usage:
    usage = as_dict(data)
    return Usage(int(usage.get("promptTokenCount") or 0), int(usage.get("candidatesTokenCount") or 0))


class _Candidate:
    """Text, calls and finish reason gathered from one or more GenerateContentResponse objects."""

    __slots__ = ("calls", "finish", "id", "model", "usage")

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []
        self.finish = ""
        self.usage: Usage | None = None
        self.id = ""
        self.model = ""

    def add(self, data: Any) -> str:
        """Take one response object; returns its text."""
        if not isinstance(data, dict):
            raise ProviderError("server_error", 200, "answer is not a GenerateContentResponse object")
        if "error" in data:
            message = as_dict(data["error"]).get("message") or data["error"]
            raise ProviderError("server_error", 200, f"provider error: {message}")
        self.id = self.id or str(data.get("responseId") or "")
        self.model = self.model or str(data.get("modelVersion") or "")
        if data.get("usageMetadata"):
            self.usage = _usage(data["usageMetadata"])
        blocked = as_dict(data.get("promptFeedback")).get("blockReason")
        if blocked:
            raise ProviderError("content_policy", 200, f"prompt blocked: {blocked}")
        candidates = data.get("candidates")
        candidate = as_dict(candidates[0]) if isinstance(candidates, list) and candidates else {}
        text: list[str] = []
        for part in as_dict(candidate.get("content")).get("parts") or ():
            part = as_dict(part)
            if isinstance(part.get("text"), str) and not part.get("thought"):
                text.append(part["text"])
            call = as_dict(part.get("functionCall"))
            if call:
                self.calls.append(
                    ToolCall(
                        id=str(call.get("id") or f"call_{len(self.calls)}"),
                        name=str(call.get("name") or ""),
                        arguments=arguments_text(call.get("args")),
                    )
                )
        reason = str(candidate.get("finishReason") or "")
        if reason:
            if reason in _BLOCKED and not text and not self.calls:
                raise ProviderError("content_policy", 200, f"reply blocked: {reason}")
            self.finish = reason
        return "".join(text)

    def finish_reason(self) -> str:
        if self.calls:
            return "tool_calls"
        return _FINISH.get(self.finish, "content_filter" if self.finish in _BLOCKED else "stop")


def parse_response(data: Any) -> ChatResult:
    """A GenerateContentResponse as a ChatResult."""
    candidate = _Candidate()
    text = candidate.add(data)
    if not candidate.finish and not candidate.calls:
        raise ProviderError("server_error", 200, "answer has no candidate")
    return ChatResult(
        id=candidate.id,
        model=candidate.model,
        content=text,
        finish_reason=candidate.finish_reason(),
        usage=candidate.usage or Usage(),
        tool_calls=tuple(candidate.calls),
    )


class StreamParser:
    """Turns the ``data:`` payloads of a streamGenerateContent SSE stream into ChatDeltas."""

    __slots__ = ("_candidate", "done")

    def __init__(self) -> None:
        self._candidate = _Candidate()
        self.done = False  # the stream has no terminator: it ends when the answer does

    def feed(self, payload: bytes) -> ChatDelta | None:
        """One response object; returns a delta when it carries text."""
        try:
            data = json.loads(payload)
        except ValueError:
            raise ProviderError("server_error", 200, f"bad stream chunk: {payload[:200]!r}") from None
        text = self._candidate.add(data)
        return ChatDelta(text=text, id=self._candidate.id, model=self._candidate.model) if text else None

    def end(self) -> ChatDelta:
        """The last delta; raises if no chunk carried a finish reason."""
        c = self._candidate
        if not c.finish:
            raise ProviderError("server_error", 200, "stream ended before a finishReason")
        return ChatDelta(
            tool_calls=tuple(c.calls),
            finish_reason=c.finish_reason(),
            usage=c.usage or Usage(),
            id=c.id,
            model=c.model,
        )


class GeminiAdapter(HttpAdapter):
    """Speaks ``POST {endpoint}/v1beta/models/{model}:generateContent`` and its SSE stream."""

    name = "gemini"

    body = staticmethod(request_body)
    headers = staticmethod(headers)
    parse = staticmethod(parse_response)
    parser = StreamParser

    def url(self, spec: ModelSpec, *, stream: bool) -> str:
        """The model's generateContent or streamGenerateContent URL."""
        return model_url(spec.endpoint, spec.provider_model, stream=stream)
