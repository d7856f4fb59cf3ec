"""What every provider adapter shares: the adapter protocol, error classification and the HTTP pool."""

from __future__ import annotations

import email.utils
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import aiohttp
import grpc

from services.common.errors import OpenClawError

if TYPE_CHECKING:
    from services.router.chat import ChatDelta, ChatRequest, ChatResult, EmbedRequest, EmbedResult
    from services.router.registry import ModelSpec

ErrorKind = Literal[
    "rate_limited",
    "server_error",
    "timeout",
    "connection_error",
    "misconfigured",
    "client_error",
    "context_window_exceeded",
    "content_policy",
]

# The provider (or the way to it) is at fault: count against its breaker, try the next model.
_PROVIDER_FAULTS: frozenset[str] = frozenset(
    {"rate_limited", "server_error", "timeout", "connection_error", "misconfigured"}
)
# The request is at fault, but a model with a larger context window may still take it.
_FALLBACK_ONLY: frozenset[str] = frozenset({"context_window_exceeded"})


class ProviderError(OpenClawError):
    """A failed provider call, classified by ``kind``; ``status`` is the HTTP status (0 if none).

    Constructing ``ProviderError(kind, ...)`` yields the subclass for the kind, so whether the error is
    retryable, worth a fallback, or counted by the circuit breaker is a property of the error itself.
    """

    code: ClassVar[str] = "provider_error"
    http_status: ClassVar[int] = 502
    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNAVAILABLE
    retryable: ClassVar[bool] = True
    fallback: ClassVar[bool] = True
    """Whether the next model in the fallback chain should be tried."""

    def __new__(
        cls, kind: ErrorKind, status: int = 0, message: str = "", retry_after: float | None = None
    ) -> ProviderError:
        if cls is ProviderError:
            if kind in _PROVIDER_FAULTS:
                cls = ProviderUnavailableError
            elif kind in _FALLBACK_ONLY:
                cls = ContextWindowError
            else:
                cls = ProviderRejectedError
        return super().__new__(cls)

    def __init__(
        self, kind: ErrorKind, status: int = 0, message: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message or kind, kind=kind, status=status)
        self.kind: ErrorKind = kind
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, self.status, self.message, self.retry_after))


class ProviderUnavailableError(ProviderError):
    """The provider failed or is out of reach (rate limit, 5xx, timeout, refused, rejected our key)."""


class ProviderRejectedError(ProviderError):
    """The provider refused the request itself (bad request, content policy): another model would too."""

    code = "invalid_input"
    http_status = 400
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    retryable = False
    fallback = False


class ContextWindowError(ProviderRejectedError):
    """The prompt does not fit this model; a fallback with a larger window may take it."""

    fallback = True


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "prompt is too long",
    "exceeds the maximum number of tokens",  # Gemini
    "too many tokens",  # Cohere
    "exceeds the context length",  # Ollama
)
_POLICY_MARKERS = (
    "content_policy",
    "content_filter",
    "content management policy",
    "safety system",
    "blocked by safety",  # Cohere
    "content filtering policy",  # Anthropic
)


def classify(status: int, message: str, *, code: str = "", retry_after: float | None = None) -> ProviderError:
    """The error for an HTTP error answer of a provider (any wire format)."""
    if status == 429:
        return ProviderError("rate_limited", status, message, retry_after)
    if status in (408, 504):
        return ProviderError("timeout", status, message, retry_after)
    if status >= 500:
        return ProviderError("server_error", status, message, retry_after)
    if status in (401, 403, 404):
        return ProviderError("misconfigured", status, message)
    probe = f"{code} {message}".lower()
    if any(marker in probe for marker in _CONTEXT_MARKERS):
        return ProviderError("context_window_exceeded", status, message)
    if any(marker in probe for marker in _POLICY_MARKERS):
        return ProviderError("content_policy", status, message)
    return ProviderError("client_error", status, message)


def transport_error(exc: BaseException, timeout_s: float) -> ProviderError:
    """The error for a call that got no (complete) HTTP answer."""
    if isinstance(exc, TimeoutError):
        return ProviderError("timeout", 0, f"no answer within {timeout_s:g}s")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ProviderError("connection_error", 0, f"cannot connect: {exc.os_error or exc}")
    return ProviderError("connection_error", 0, f"{type(exc).__name__}: {exc}")


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if present."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ProviderAdapter(Protocol):
    """One provider wire format: a plain call and a stream of deltas, both raising ProviderError."""

    name: str

    async def chat(self, spec: ModelSpec, request: ChatRequest) -> ChatResult:
        """One completion."""
        ...

    def stream(self, spec: ModelSpec, request: ChatRequest) -> AsyncGenerator[ChatDelta, None]:
        """A streamed completion; deltas with no text, tool calls or finish are not yielded."""
        ...


class EmbeddingAdapter(Protocol):
    """A provider that also serves embeddings."""

    name: str

    async def embed(self, spec: ModelSpec, request: EmbedRequest) -> EmbedResult:
        """One vector per input, in input order."""
        ...


class StreamParser(Protocol):
    """Turns the ``data:`` payloads of one stream into ChatDeltas."""

    done: bool

    def feed(self, payload: bytes) -> ChatDelta | None:
        """One payload; returns a delta when it carries text."""
        ...

    def end(self) -> ChatDelta:
        """The last delta (tool calls, finish reason, usage); raises if the stream stopped short."""
        ...


class HttpPool:
    """The process's one aiohttp session: pooled keep-alive connections to every provider."""

    def __init__(self, *, limit: int = 0, session: aiohttp.ClientSession | None = None) -> None:
        self._limit = limit
        self._session = session
        self._owned = session is None

    async def start(self) -> None:
        """Open the session (must run inside the event loop)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, raise_for_status=False, trust_env=False
            )
            self._owned = True

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session."""
        if self._session is None:
            raise RuntimeError("HttpPool.start() has not been awaited")
        return self._session

    async def close(self) -> None:
        """Close pooled connections."""
        if self._session is not None and self._owned:
            await self._session.close()
        self._session = None


def as_dict(value: Any) -> dict[str, Any]:
    """value if it is a JSON object, else an empty one (provider answers are untrusted)."""
    return value if isinstance(value, dict) else {}


def error_text(body: Any, fallback: str) -> tuple[str, str]:
    """(message, code) from an error body of any supported format (OpenAI, Anthropic, Gemini, Ollama...)."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            # Gemini's ``code`` is the HTTP status again; its ``status`` names the error.
            code = error.get("status") or error.get("code") or error.get("type") or ""
            if isinstance(message, str) and message:
                return message, str(code)
        elif isinstance(error, str) and error:
            return error, ""
        message = body.get("message")
        if isinstance(message, str) and message:
            return message, ""
    return fallback, ""


encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_timeouts: dict[tuple[float, bool], aiohttp.ClientTimeout] = {}


def client_timeout(seconds: float, *, stream: bool) -> aiohttp.ClientTimeout:
    """A whole-call timeout for plain calls; for streams, a limit on each wait for the next bytes."""
    key = (seconds, stream)
    timeout = _timeouts.get(key)
    if timeout is None:
        timeout = (
            aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
            if stream
            else aiohttp.ClientTimeout(total=seconds)
        )
        _timeouts[key] = timeout
    return timeout


async def error_from_response(response: aiohttp.ClientResponse) -> ProviderError:
    """Read an error answer and classify it."""
    raw = await response.read()
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = None
    fallback = raw[:300].decode("utf-8", "replace").strip() or (response.reason or "")
    message, code = error_text(body, fallback)
    retry_after = parse_retry_after(response.headers)
    return classify(
        response.status,
        f"HTTP {response.status}: {message}",
        code=code,
        retry_after=retry_after if retry_after is not None else retry_info(body),
    )


def retry_info(body: Any) -> float | None:
    """Seconds from a google.rpc.RetryInfo ``retryDelay`` ("37s") in an error's details (Gemini)."""
    details = as_dict(as_dict(body).get("error")).get("details")
    for detail in details if isinstance(details, list) else ():
        delay = as_dict(detail).get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def parse_arguments(text: str) -> Any:
    """Tool-call arguments as a JSON value for formats that want an object, not text."""
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"_raw": text}


def arguments_text(value: Any) -> str:
    """Tool-call arguments as JSON text, whatever form the provider gave them in."""
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {}, separators=(",", ":"), ensure_ascii=False)


def pick(extra: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """The pass-through fields a provider understands (others would get the whole request refused)."""
    return {key: value for key, value in extra.items() if key in allowed}


@asynccontextmanager
async def _post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    timeout_s: float,
    *,
    stream: bool,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """POST a JSON body and hold its successful answer; every failure, reading included, is a ProviderError."""
    try:
        async with session.post(
            url,
            data=encode_json(body).encode(),
            headers=headers,
            timeout=client_timeout(timeout_s, stream=stream),
        ) as response:
            if response.status >= 400:
                raise await error_from_response(response)
            yield response
    except ProviderError:
        raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(exc, timeout_s) from exc


async def post_json(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float
) -> Any:
    """POST a JSON body and return the decoded JSON answer; every failure is a ProviderError."""
    async with _post(session, url, body, headers, timeout_s, stream=False) as response:
        raw = await response.read()
    try:
        return json.loads(raw)
    except ValueError:
        raise ProviderError("server_error", 200, f"answer is not JSON: {raw[:200]!r}") from None


async def line_stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str], timeout_s: float
) -> AsyncGenerator[bytes, None]:
    """POST a JSON body and yield each line of the answer as it arrives; every failure is a ProviderError.

    Use under ``contextlib.aclosing`` so an abandoned stream releases its connection at once.
    """
    async with _post(session, url, body, headers, timeout_s, stream=True) as response:
        buffer = b""
        async for piece in response.content.iter_any():
            buffer = buffer + piece if buffer else piece
            start = 0
            while (end := buffer.find(b"\n", start)) >= 0:
                yield buffer[start:end].rstrip(b"\r")
                start = end + 1
            buffer = buffer[start:]
        if buffer:
            yield buffer


def sse_payload(line: bytes) -> bytes | None:
    """The payload of an SSE ``data:`` line; None for any other line (events, comments, blanks)."""
    return line[5:].strip() if line.startswith(b"data:") else None


def ndjson_payload(line: bytes) -> bytes | None:
    """A non-blank line of newline-delimited JSON."""
    line = line.strip()
    return line or None


def embedding_list(values: Any, where: str) -> list[float]:
    """A list of numbers from a provider's answer; ProviderError if it is anything else."""
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise ProviderError("server_error", 200, f"{where} is not a list of numbers")
    return [float(v) for v in values]


class HttpAdapter(ABC):
    """A JSON-over-HTTP adapter, plain and streamed; a subclass names its URL, body, headers and parsers."""

    name: str
    framing: ClassVar[Literal["sse", "ndjson"]] = "sse"
    """How a streamed answer is framed: Server-Sent Events or newline-delimited JSON."""

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool

    @abstractmethod
    def url(self, spec: ModelSpec, *, stream: bool) -> str:
        """The request URL of a plain or a streamed call."""

    @abstractmethod
    def body(self, spec: ModelSpec, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        """The provider's JSON request body."""

    @abstractmethod
    def headers(self, spec: ModelSpec) -> dict[str, str]:
        """Auth and version headers."""

    @abstractmethod
    def parse(self, data: Any) -> ChatResult:
        """A plain answer's JSON, as our result."""

    @abstractmethod
    def parser(self) -> StreamParser:
        """A fresh parser for one stream."""

    async def chat(self, spec: ModelSpec, request: ChatRequest) -> ChatResult:
        """One completion."""
        data = await post_json(
            self._pool.session,
            self.url(spec, stream=False),
            self.body(spec, request, stream=False),
            self.headers(spec),
            spec.timeout_seconds,
        )
        return self.parse(data)

    async def stream(self, spec: ModelSpec, request: ChatRequest) -> AsyncGenerator[ChatDelta, None]:
        """Text deltas as they arrive; tool calls, finish reason and usage on the last delta."""
        lines = line_stream(
            self._pool.session,
            self.url(spec, stream=True),
            self.body(spec, request, stream=True),
            self.headers(spec),
            spec.timeout_seconds,
        )
        payload_of = sse_payload if self.framing == "sse" else ndjson_payload
        parser = self.parser()
        async with aclosing(lines):
            async for line in lines:
                payload = payload_of(line)
                if payload is None:
                    continue
                delta = parser.feed(payload)
                if delta is not None:
                    yield delta
                if parser.done:
                    break
        yield parser.end()
