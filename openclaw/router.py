"""Python API of the OpenClaw model router (synchronous, over gRPC).

    >>> from openclaw.router import ModelRouter
    >>> router = ModelRouter()                      # OPENCLAW_ROUTER_ADDR or 127.0.0.1:50051
    >>> router.add_model(
    ...     name="llama-3",
    ...     endpoint="http://localhost:8000/v1/chat",
    ...     max_concurrency=10,
    ...     fallback_models=["gpt-4-mini"],
    ... )
    >>> result = router.chat("llama-3", prompt="Summarise the plot of Hamlet in one line.")
    >>> result.content, result.model, result.usage.total_tokens, result.route.attempts
    >>> for text in router.chat_stream("llama-3", prompt="Tell me a story"):
    ...     print(text, end="")

Errors raise subclasses of :class:`RouterError` carrying the server's message, e.g.
:class:`ModelNotFoundError` for an unknown model.

``add_model``, ``update_model`` and ``remove_model`` are admin calls: they carry ``admin_token`` (default
``$OPENCLAW_ROUTER_ADMIN_TOKEN``) as a bearer token, and raise :class:`AdminAccessError` when the router
refuses them.

Against a router that requires mutual TLS, give the client its certificate: set ``OPENCLAW_TLS_CERT``,
``OPENCLAW_TLS_KEY`` and ``OPENCLAW_TLS_CA`` (the same settings the services read), or pass ``cert=``, ``key=``
and ``ca=``. With none of them the channel is plaintext.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, struct_pb2

from openclaw.v1 import router_pb2, router_pb2_grpc
from services.common import tls
from services.common.errors import InvalidInputError

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "OPENCLAW_ROUTER_ADDR"
ADMIN_TOKEN_ENV = "OPENCLAW_ROUTER_ADMIN_TOKEN"
_ERROR_KEY = "openclaw-error"

__all__ = [
    "AdminAccessError",
    "Attempt",
    "ChatResult",
    "ChatStream",
    "InvalidRequestError",
    "ModelExistsError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelRouter",
    "PermissionDeniedError",
    "RouteInfo",
    "RouterBusyError",
    "RouterError",
    "RouterUnavailableError",
    "TlsConfigError",
    "UnauthenticatedError",
    "Usage",
]


# -- errors ----------------------------------------------------------------------------------------


class RouterError(Exception):
    """A call to the router failed; ``message`` is the server's explanation, ``code`` its gRPC status."""

    def __init__(
        self, message: str, *, code: grpc.StatusCode | None = None, details: Mapping[str, Any] | None = None
    ):
        super().__init__(message)
        self.message = message
        self.code = code
        self.details: dict[str, Any] = dict(details or {})


class ModelNotFoundError(RouterError, LookupError):
    """The model is not registered; ``details["available"]`` lists the ones that are."""


class ModelExistsError(RouterError):
    """``add_model`` with a name that is already taken."""


class InvalidRequestError(RouterError, ValueError):
    """The request (or model definition) is malformed; the message names the field."""


class RouterBusyError(RouterError):
    """Every candidate model was at its concurrency limit for the whole queue timeout."""


class RouterUnavailableError(RouterError):
    """The router is unreachable, or every model in the fallback chain failed (see ``details["attempts"]``)."""


class TlsConfigError(RouterError, ValueError):
    """The client certificate settings are incomplete or name an unusable file; the message names the setting."""


class AdminAccessError(RouterError):
    """The router refused an admin call (``add_model``, ``update_model``, ``remove_model``)."""


class UnauthenticatedError(AdminAccessError):
    """No admin token, or the wrong one: pass ``admin_token=`` or set ``OPENCLAW_ROUTER_ADMIN_TOKEN``."""


class PermissionDeniedError(AdminAccessError):
    """The router has no admin token configured and listens beyond loopback, so it refuses every admin call."""


_BY_STATUS: dict[grpc.StatusCode, type[RouterError]] = {
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ModelExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RouterBusyError,
    grpc.StatusCode.UNAVAILABLE: RouterUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: RouterUnavailableError,
}


# Appended to "unreachable" errors of a plaintext client: a router that requires mutual TLS drops it at the
# handshake, which grpc reports only as a closed socket.
_PLAINTEXT_HINT = (
    " (this client speaks plaintext: if the router requires mutual TLS, set OPENCLAW_TLS_CERT, OPENCLAW_TLS_KEY"
    " and OPENCLAW_TLS_CA, or pass cert=, key= and ca=)"
)


def _error(exc: grpc.RpcError, hint: str = "") -> RouterError:
    """The typed error for a failed call, with the server's message, structured details and ``hint``."""
    code: grpc.StatusCode | None = exc.code() if hasattr(exc, "code") else None
    message = (exc.details() if hasattr(exc, "details") else None) or str(code)
    details: dict[str, Any] = {}
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for item in trailing or ():
        key, value = str(item[0]), item[1]  # type: ignore[index]
        if key == _ERROR_KEY:
            try:
                data = json.loads(value if isinstance(value, str) else bytes(value).decode())
                details = dict(data.get("details") or {})
            except (ValueError, AttributeError):
                pass
    cls = _BY_STATUS.get(code, RouterError) if code is not None else RouterError
    if code == grpc.StatusCode.UNAVAILABLE and not details:
        message += hint  # not the router's own "every model failed", which carries its attempts
    return cls(message, code=code, details=details)


# -- values ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Token counts reported by the provider."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class Attempt:
    """One try against one model: ``outcome`` is "ok", "busy", "breaker_open", "rate_limited", ..."""

    model: str
    provider: str
    outcome: str
    error: str = ""
    duration_ms: float = 0.0
    deployment: str = ""
    reason: str = ""
    queue_ms: float = 0.0


@dataclass(frozen=True)
class RouteInfo:
    """Which model and deployment served the request and why, how long it queued, and every attempt made."""

    model: str = ""
    provider: str = ""
    queue_ms: float = 0.0
    attempts: tuple[Attempt, ...] = ()
    simulated: bool = False
    deployment: str = ""
    reason: str = ""
    priority: str = ""
    table_version: int = 0
    committed: bool = False


@dataclass(frozen=True)
class ToolCall:
    """A function call requested by the model; ``arguments`` is JSON text."""

    id: str
    name: str
    arguments: str
    type: str = "function"


@dataclass(frozen=True)
class ChatResult:
    """A chat completion: ``content``, the ``model`` that served it, ``usage`` and the ``route`` taken."""

    content: str
    model: str
    usage: Usage
    route: RouteInfo
    finish_reason: str = ""
    id: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    """A registered model as the router reports it (keys are never returned, only ``has_api_key``)."""

    name: str
    provider: str
    endpoint: str
    provider_model: str
    max_concurrency: int
    fallback_models: tuple[str, ...]
    timeout_seconds: float
    simulated: bool
    has_api_key: bool
    api_key_env: str = ""
    deployments: tuple[dict[str, Any], ...] = ()
    """The endpoints of a model group (no keys), as dicts of their fields; empty for a one-endpoint model."""


def _usage(usage: router_pb2.Usage) -> Usage:
    return Usage(usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


def _route(route: router_pb2.RouteInfo) -> RouteInfo:
    return RouteInfo(
        model=route.model,
        provider=route.provider,
        queue_ms=route.queue_ms,
        attempts=tuple(
            Attempt(
                a.model, a.provider, a.outcome, a.error, a.duration_ms, a.deployment, a.reason, a.queue_ms
            )
            for a in route.attempts
        ),
        simulated=route.simulated,
        deployment=route.deployment,
        reason=route.reason,
        priority=route.priority,
        table_version=route.table_version,
        committed=route.committed,
    )


def _tool_calls(calls: Iterable[router_pb2.ToolCall]) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(c.id, c.name, c.arguments, c.type or "function") for c in calls)


def _model_info(model: router_pb2.Model) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        provider=model.provider,
        endpoint=model.endpoint,
        provider_model=model.provider_model,
        max_concurrency=model.max_concurrency,
        fallback_models=tuple(model.fallback_models),
        timeout_seconds=model.timeout_seconds,
        simulated=model.simulated,
        has_api_key=model.has_api_key,
        api_key_env=model.api_key_env,
        deployments=tuple(
            {f.name: getattr(d, f.name) for f in d.DESCRIPTOR.fields} for d in model.deployments
        ),
    )


def _deployment(data: Mapping[str, Any]) -> router_pb2.Deployment:
    """A deployment definition from a dict of its fields (``name``, ``endpoint``, ``weight``...)."""
    try:
        return router_pb2.Deployment(**dict(data))
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"deployments: {exc}") from None


@dataclass
class ChatStream:
    """Iterates over the text deltas of a streamed completion; ``model``, ``usage``, ``route``,
    ``finish_reason`` and ``tool_calls`` are filled in as the stream goes and complete at its end."""

    _chunks: Iterator[router_pb2.ChatChunk]
    _call: Any = None
    _hint: str = ""
    model: str = ""
    usage: Usage | None = None
    route: RouteInfo | None = None
    finish_reason: str = ""
    tool_calls: tuple[ToolCall, ...] = field(default_factory=tuple)

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._chunks:
                if chunk.model:
                    self.model = chunk.model
                if chunk.HasField("route"):
                    self.route = _route(chunk.route)
                if chunk.HasField("usage"):
                    self.usage = _usage(chunk.usage)
                if chunk.tool_calls:
                    self.tool_calls += _tool_calls(chunk.tool_calls)
                if chunk.finish_reason:
                    self.finish_reason = chunk.finish_reason
                if chunk.delta:
                    yield chunk.delta
        except grpc.RpcError as exc:
            raise _error(exc, self._hint) from None

    def cancel(self) -> None:
        """Stop the stream early."""
        if self._call is not None:
            self._call.cancel()


# -- the client ------------------------------------------------------------------------------------

MessageLike = Mapping[str, Any] | tuple[str, str]


def _tls_files(cert: str | Path | None, key: str | Path | None, ca: str | Path | None) -> tls.TlsFiles | None:
    """The client's TLS files from the arguments, else the environment; None for plaintext."""
    chosen: list[str | Path | None] = []
    names: list[str] = []
    for argument, value, env in zip(("cert", "key", "ca"), (cert, key, ca), tls.ENV_NAMES, strict=True):
        # An error names what the caller set: the argument, or the environment variable.
        chosen.append(value if value is not None else os.environ.get(env) or None)
        names.append(argument if value is not None else env)
    try:
        return tls.load_paths(*chosen, names=names)
    except InvalidInputError as exc:
        raise TlsConfigError(str(exc)) from None


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of an OpenAI-style list of parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, Mapping) else str(p) for p in content)
    return str(content)


def _messages(
    messages: Sequence[MessageLike] | None, prompt: str | None, system: str | None
) -> list[router_pb2.ChatMessage]:
    out: list[router_pb2.ChatMessage] = []
    if system:
        out.append(router_pb2.ChatMessage(role="system", content=system))
    for item in messages or ():
        if isinstance(item, tuple):
            out.append(router_pb2.ChatMessage(role=item[0], content=item[1]))
            continue
        calls = [
            router_pb2.ToolCall(
                id=str(c.get("id", "")),
                type=str(c.get("type", "function")),
                name=str((c.get("function") or {}).get("name", c.get("name", ""))),
                arguments=str((c.get("function") or {}).get("arguments", c.get("arguments", ""))),
            )
            for c in item.get("tool_calls") or ()
        ]
        out.append(
            router_pb2.ChatMessage(
                role=str(item.get("role", "user")),
                content=_text(item.get("content")),
                name=str(item.get("name") or ""),
                tool_call_id=str(item.get("tool_call_id") or ""),
                tool_calls=calls,
            )
        )
    if prompt is not None:
        out.append(router_pb2.ChatMessage(role="user", content=prompt))
    return out


_MODEL_FIELDS = (
    "provider",
    "endpoint",
    "provider_model",
    "max_concurrency",
    "fallback_models",
    "api_key",
    "api_key_env",
    "timeout_seconds",
    "simulated",
    "deployments",
    "rpm",
    "tpm",
    "input_cost_per_token",
    "output_cost_per_token",
    "context_window",
)


class ModelRouter:
    """A synchronous client of the router: manage models at run time and send chat requests.

    ``address`` defaults to ``$OPENCLAW_ROUTER_ADDR``, else ``127.0.0.1:50051``. ``timeout`` is the default
    deadline of a call in seconds. ``admin_token`` (default ``$OPENCLAW_ROUTER_ADMIN_TOKEN``) is sent as
    ``authorization: Bearer <token>`` on the admin calls only; a router that listens on loopback without a
    token of its own needs none. Use as a context manager, or call :meth:`close`.

    ``cert``, ``key`` and ``ca`` (defaults ``$OPENCLAW_TLS_CERT``, ``$OPENCLAW_TLS_KEY``, ``$OPENCLAW_TLS_CA``) are
    PEM files: the client's certificate and key, presented to the router, and the CA the router's certificate
    must chain to. All three make the channel mutual TLS, none plaintext; one or two, or a file that cannot be
    used, raise :class:`TlsConfigError` naming the setting.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = 120.0,
        admin_token: str | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        ca: str | Path | None = None,
    ) -> None:
        self.address = address or os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS
        self.timeout = timeout
        token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV, "")
        self._admin_metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        files = _tls_files(cert, key, ca)
        self.tls = files is not None
        self._hint = "" if self.tls else _PLAINTEXT_HINT
        self._channel = (
            grpc.secure_channel(self.address, tls.channel_credentials(files))
            if files is not None
            else grpc.insecure_channel(self.address)
        )
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    # -- models --

    def add_model(
        self,
        name: str,
        endpoint: str = "",
        *,
        provider: str = "openai",
        provider_model: str = "",
        max_concurrency: int = 10,
        fallback_models: Sequence[str] = (),
        api_key: str = "",
        api_key_env: str = "",
        timeout_seconds: float = 0.0,
        simulated: bool = False,
        deployments: Sequence[Mapping[str, Any]] = (),
    ) -> ModelInfo:
        """Register a model at run time and return it as the router now reports it.

        ``provider`` is "openai" (any OpenAI-compatible server: OpenAI, vLLM, Ollama's /v1...) or
        "anthropic". ``endpoint`` may be a base URL (``http://host:8000/v1``), a ``.../v1/chat`` URL or the
        full completions URL; empty means the provider's public API. ``fallback_models`` are tried in order
        when this model fails or is unavailable. ``api_key_env`` names an environment variable of the
        router process holding the key; the router accepts only names matching its
        ``OPENCLAW_ROUTER_API_KEY_ENV_PATTERN`` (by default ``..._API_KEY``). Raises :class:`ModelExistsError` if
        the name is taken, :class:`AdminAccessError` if the router refuses admin calls from this client.
        ``deployments`` makes the model a group of endpoints (dicts with ``name``, ``endpoint``, ``weight``,
        ``max_concurrency``, ``rpm``, ``tpm``, costs, ``context_window``...; unset fields come from the model).
        """
        model = router_pb2.Model(
            name=name,
            provider=provider,
            endpoint=endpoint,
            provider_model=provider_model,
            max_concurrency=max_concurrency,
            fallback_models=list(fallback_models),
            api_key=api_key,
            api_key_env=api_key_env,
            timeout_seconds=timeout_seconds,
            simulated=simulated,
            deployments=[_deployment(d) for d in deployments],
        )
        return _model_info(self._admin(self._stub.AddModel, router_pb2.AddModelRequest(model=model)))

    def update_model(self, name: str, **changes: Any) -> ModelInfo:
        """Change some fields of a model (e.g. ``max_concurrency=20``); the others keep their values.

        Accepted fields: provider, endpoint, provider_model, max_concurrency, fallback_models, api_key,
        api_key_env, timeout_seconds, simulated. In-flight requests finish on the old definition.
        """
        unknown = sorted(set(changes) - set(_MODEL_FIELDS))
        if unknown:
            raise InvalidRequestError(f"{unknown[0]}: not a model field (known: {', '.join(_MODEL_FIELDS)})")
        model = router_pb2.Model(name=name)
        for key, value in changes.items():
            if key == "fallback_models":
                model.fallback_models.extend(value)
            elif key == "deployments":
                model.deployments.extend(_deployment(d) for d in value)
            else:
                setattr(model, key, value)
        request = router_pb2.UpdateModelRequest(
            model=model, update_mask=field_mask_pb2.FieldMask(paths=sorted(changes))
        )
        return _model_info(self._admin(self._stub.UpdateModel, request))

    def remove_model(self, name: str) -> bool:
        """Unregister a model; False if it was not registered. In-flight requests still finish."""
        response = self._admin(self._stub.RemoveModel, router_pb2.RemoveModelRequest(name=name))
        return bool(response.removed)

    def list_models(self) -> list[ModelInfo]:
        """Every registered model (simulated ones have ``simulated=True``)."""
        response = self._call(self._stub.ListModels, router_pb2.ListModelsRequest())
        return [_model_info(m) for m in response.models]

    # -- chat --

    def _request(
        self,
        model: str,
        messages: Sequence[MessageLike] | None,
        prompt: str | None,
        system: str | None,
        temperature: float | None,
        max_tokens: int | None,
        top_p: float | None,
        stop: Sequence[str] | None,
        extra: Mapping[str, Any] | None,
        priority: str = "",
    ) -> router_pb2.ChatRequest:
        request = router_pb2.ChatRequest(
            model=model,
            messages=_messages(messages, prompt, system),
            stop=list(stop or ()),
            priority=priority,
        )
        if temperature is not None:
            request.temperature = temperature
        if max_tokens is not None:
            request.max_tokens = max_tokens
        if top_p is not None:
            request.top_p = top_p
        if extra:
            struct = struct_pb2.Struct()
            struct.update(dict(extra))
            request.extra.CopyFrom(struct)
        return request

    def chat(
        self,
        model: str,
        messages: Sequence[MessageLike] | None = None,
        *,
        prompt: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        priority: str = "",
    ) -> ChatResult:
        """One chat completion, with fallbacks walked by the router.

        Pass ``messages`` (dicts with role and content, as in the OpenAI API, or ``(role, content)``
        tuples) and/or a ``prompt`` (appended as a user message). ``extra`` passes provider fields through
        (``tools``, ``tool_choice``, ``response_format``...). ``priority`` is the queueing class:
        "interactive" (the router's default), "agent" or "batch".
        """
        request = self._request(
            model, messages, prompt, system, temperature, max_tokens, top_p, stop, extra, priority
        )
        response = self._call(self._stub.Chat, request, timeout)
        return ChatResult(
            content=response.message.content,
            model=response.model,
            usage=_usage(response.usage),
            route=_route(response.route),
            finish_reason=response.finish_reason,
            id=response.id,
            tool_calls=_tool_calls(response.message.tool_calls),
        )

    def chat_stream(
        self,
        model: str,
        messages: Sequence[MessageLike] | None = None,
        *,
        prompt: str | None = None,
        system: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        priority: str = "",
    ) -> ChatStream:
        """A streamed chat completion: iterate for text deltas; usage and route are on the stream after.

        The router fails over to a fallback model only before the first delta arrives.
        """
        request = self._request(
            model, messages, prompt, system, temperature, max_tokens, top_p, stop, extra, priority
        )
        call = self._stub.ChatStream(request, timeout=timeout or self.timeout)
        return ChatStream(call, call, self._hint)

    # -- plumbing --

    def _call(
        self,
        method: Any,
        request: Any,
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=metadata or None)
        except grpc.RpcError as exc:
            raise _error(exc, self._hint) from None

    def _admin(self, method: Any, request: Any) -> Any:
        """An admin call: the same as any other, with the bearer token."""
        return self._call(method, request, metadata=self._admin_metadata)

    def close(self) -> None:
        """Close the connection."""
        self._channel.close()

    def __enter__(self) -> ModelRouter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
