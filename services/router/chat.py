"""The router's domain values: a chat request, its result or stream deltas, and the route that served it.

Transport-free on purpose: the gRPC servicer translates protobuf to these, providers translate these to
their wire formats, so neither side knows the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model asked for; ``arguments`` is JSON text exactly as the model produced it."""

    id: str
    name: str
    arguments: str
    type: str = "function"


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message (roles: system, developer, user, assistant, tool)."""

    role: str
    content: str
    name: str = ""
    tool_call_id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion request, independent of any provider's format."""

    model: str
    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    user: str = ""
    tenant: str = ""
    request_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """Provider pass-through fields (tools, tool_choice, response_format...), merged into the body."""
    priority: str = ""
    """Queueing class (interactive, agent, batch); empty means the router's default."""


@dataclass(slots=True)
class Usage:
    """Token counts as the provider reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A finished completion from one provider."""

    id: str
    model: str
    """The model name the provider reported (its own name, not necessarily the router's)."""
    content: str
    finish_reason: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    created: int = 0


@dataclass(slots=True)
class ChatDelta:
    """A piece of a streamed completion; the last one carries ``finish_reason`` and ``usage``."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = ""
    usage: Usage | None = None
    id: str = ""
    model: str = ""
    route: Route | None = None
    """Set by the router on the first delta (the commit point) and on the last."""


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """Texts to embed with one model, independent of any provider's format."""

    model: str
    inputs: tuple[str, ...]
    dimensions: int | None = None
    user: str = ""
    tenant: str = ""
    request_id: str = ""
    priority: str = ""


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """One vector per input, in input order."""

    model: str
    vectors: tuple[tuple[float, ...], ...]
    usage: Usage


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try against one model and how it ended."""

    model: str
    provider: str
    outcome: str
    """"ok", "busy", "breaker_open", or a provider error kind ("rate_limited", "server_error"...)."""
    error: str = ""
    duration_ms: float = 0.0
    deployment: str = ""
    """The deployment tried ("default" for a model with one endpoint); empty when none was."""
    reason: str = ""
    """Why that deployment: "only", "p2c" (better of two) or "overflow" (every deployment at its limit)."""
    queue_ms: float = 0.0


@dataclass(slots=True)
class Route:
    """Which model served a request, how long it queued, and every attempt made on the way."""

    model: str = ""
    provider: str = ""
    queue_ms: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    simulated: bool = False
    deployment: str = ""
    reason: str = ""
    priority: str = ""
    table_version: int = 0
    committed: bool = False
    """Streams: the first token has gone out, so no failover any more."""
    cache: str = ""
    """Response cache: "hit", "miss", "coalesced" (shared another caller's call), "bypass"; empty if off."""
