"""The HTTP transport: task routes, Server-Sent Events, probes and metrics, as one server-agnostic ASGI app.

Handlers decode the request, call the task service with the tenant from the verified token, and encode the
answer; errors become ``{"error": {"code", "message", "details"?}}`` with the error's HTTP status.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import anyio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import (
    InProgressError,
    InvalidInputError,
    OpenClawError,
    PayloadTooLargeError,
    ResourceExhaustedError,
    UnavailableError,
)
from services.common.taskstore import TERMINAL, TaskEventRecord, TaskRecord
from services.gateway.access import Call, Credentials, Gate
from services.gateway.auth import AuthError
from services.gateway.jsonbody import MAX_DEPTH, parse_json
from services.gateway.limits import Slot
from services.gateway.metrics import HTTP_DURATION, HTTP_REQUESTS, UNMATCHED_ROUTE
from services.gateway.ratelimit import RateLimitedError
from services.gateway.tasks import MAX_WAIT_S, SubmitRequest, TaskService

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]

_tracer = trace.get_tracer("openclaw.gateway.http")
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})
_TRUE = frozenset({"1", "true", "yes"})
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def error_response(err: OpenClawError) -> JSONResponse:
    """Our error shape with the error's status and the headers its kind calls for."""
    body: dict[str, Any] = {"code": err.code, "message": err.message}
    details = {k: v for k, v in err.details.items() if k != "reason"}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=err.http_status, headers=error_headers(err))


def error_headers(err: OpenClawError) -> dict[str, str]:
    """WWW-Authenticate on 401, RateLimit-* and Retry-After on 429, Retry-After on retryable refusals,
    Connection: close when the body was not read."""
    if isinstance(err, AuthError):
        return {"WWW-Authenticate": err.www_authenticate()}
    if isinstance(err, RateLimitedError):
        return err.decision.headers()
    if isinstance(err, UnavailableError | InProgressError | ResourceExhaustedError):
        retry_after = err.details.get("retry_after", 1)
        return {"Retry-After": str(max(1, math.ceil(float(retry_after))))}
    if isinstance(err, PayloadTooLargeError):
        return {"Connection": "close"}
    return {}


async def read_json(request: Request, limit: int, max_depth: int = MAX_DEPTH) -> Any:
    """The body parsed as JSON; 413 as soon as it passes limit bytes (Content-Length is not trusted)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the request body is over the {limit}-byte limit", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"the request body is over the {limit}-byte limit", limit=limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InvalidInputError("the request body is empty; a JSON object is required")
    return parse_json(raw, max_depth=max_depth)


def credentials(request: Request) -> Credentials:
    """What the request presented: ``Authorization`` and ``X-API-Key``."""
    return Credentials(request.headers.get("authorization"), request.headers.get("x-api-key"))


async def admit(gate: Gate, request: Request, action: str, resource: str = "") -> Call:
    """Authenticate the request and admit it for the action (401/403/429/503 otherwise)."""
    principal = await gate.authenticate(credentials(request))
    return await gate.admit(principal, action, protocol="http", resource=resource)


async def finish_quietly(call: Call, *slots: Slot | None, error: BaseException | None = None) -> None:
    """Release a stream's slots and audit its call, even while the stream is being cancelled."""
    with anyio.CancelScope(shield=True):
        for slot in slots:
            if slot is not None:
                await slot.release()
        await call.finish(error)


class TaskRoutes:
    """POST/GET/DELETE /v1/tasks... over the task service."""

    def __init__(
        self,
        tasks: TaskService,
        gate: Gate,
        *,
        max_body_bytes: int,
        heartbeat_s: float,
        max_json_depth: int = MAX_DEPTH,
    ) -> None:
        self._tasks = tasks
        self._gate = gate
        self._limit = max_body_bytes
        self._depth = max_json_depth
        self._heartbeat_s = heartbeat_s

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/tasks", self.submit, methods=["POST"]),
            Route("/v1/tasks/{task_id}", self.get, methods=["GET"]),
            Route("/v1/tasks/{task_id}", self.delete, methods=["DELETE"]),
            Route("/v1/tasks/{task_id}/cancel", self.cancel, methods=["POST"]),
            Route("/v1/tasks/{task_id}/events", self.events, methods=["GET"]),
            Route("/v1/tasks/{task_id}/signals/{name}", self.signal, methods=["POST"]),
        ]

    async def submit(self, request: Request) -> Response:
        async with await admit(self._gate, request, "tasks.submit") as call:
            wait_s = _wait_param(request.query_params.get("wait"))  # before anything is created
            doc = await read_json(request, self._limit, self._depth)
            key = request.headers.get("idempotency-key", "")
            submit = SubmitRequest.from_document(doc, idempotency_key=key)
            result = await self._tasks.submit(
                call.principal.tenant, submit, policy=call.policy, submitted_by=call.principal.subject
            )
            call.resource = f"task:{result.task.id}"
            headers = {"Location": f"/v1/tasks/{result.task.id}", **call.headers()}
            if not result.created:
                headers["Idempotent-Replayed"] = "true"
            # ?wait=N: submit and long-poll in one request (a synchronous call costs one round trip, not two);
            # 200 with the ended task, or 202 with its state so far when it is still running after N seconds.
            if wait_s:
                record = await self._tasks.wait(result.task, wait_s)
                ended = record.status in TERMINAL
                return JSONResponse(task_body(record), status_code=200 if ended else 202, headers=headers)
            return JSONResponse(
                task_body(result.task), status_code=202 if result.created else 200, headers=headers
            )

    async def get(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        async with await admit(self._gate, request, "tasks.get", f"task:{task_id}") as call:
            wait_s = _wait_param(request.query_params.get("wait"))
            steps = request.query_params.get("steps", "").lower() in _TRUE
            record = await self._tasks.get(call.principal.tenant, task_id, steps=steps, wait_s=wait_s)
            return JSONResponse(task_body(record), headers=call.headers())

    async def cancel(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        async with await admit(self._gate, request, "tasks.cancel", f"task:{task_id}") as call:
            record = await self._tasks.cancel(call.principal.tenant, task_id)
            return JSONResponse(task_body(record), headers=call.headers())

    async def signal(self, request: Request) -> Response:
        task_id, name = request.path_params["task_id"], request.path_params["name"]
        async with await admit(self._gate, request, "tasks.signal", f"task:{task_id}") as call:
            call.details["signal"] = name
            payload = await read_json(request, self._limit, self._depth)
            record = await self._tasks.signal(call.principal.tenant, task_id, name, payload)
            return JSONResponse(task_body(record), status_code=202, headers=call.headers())

    async def delete(self, request: Request) -> Response:
        return await self.cancel(request)

    async def events(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        call = await admit(self._gate, request, "tasks.watch", f"task:{task_id}")
        slot: Slot | None = None
        try:
            after = request.headers.get("last-event-id") or request.query_params.get("after", "")
            slot = await call.stream_slot()
            stream = await self._tasks.watch(
                call.principal.tenant, task_id, after=after.strip(), heartbeat_s=self._heartbeat_s
            )
        except BaseException as exc:
            await finish_quietly(call, slot, error=exc)
            raise
        return StreamingResponse(
            _sse(stream, call, slot),
            media_type="text/event-stream",
            headers={**SSE_HEADERS, **call.headers()},
        )


def task_body(record: TaskRecord) -> dict[str, Any]:
    """A task as the HTTP API shows it, with links to what can be done with it."""
    body = record.to_api()
    base = f"/v1/tasks/{record.id}"
    body["links"] = {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}
    return body


def sse_event(event: TaskEventRecord) -> bytes:
    """One Server-Sent Event: id = stream position, event = type, data = the event as JSON."""
    data = json.dumps(event.to_api(), separators=(",", ":"), ensure_ascii=False, default=str)
    return f"id: {event.event_id}\nevent: {event.type}\ndata: {data}\n\n".encode()


async def _sse(
    stream: AsyncGenerator[TaskEventRecord | None, None], call: Call, slot: Slot
) -> AsyncGenerator[bytes, None]:
    error: BaseException | None = None
    try:
        yield b"retry: 2000\n\n"
        async for event in stream:
            yield b": heartbeat\n\n" if event is None else sse_event(event)
    except BaseException as exc:
        error = exc
        raise
    finally:
        await stream.aclose()
        await finish_quietly(call, slot, error=error)


def _wait_param(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        raise InvalidInputError(f"wait must be a number of seconds, got {raw!r}", field="wait") from None
    if not 0 <= wait <= MAX_WAIT_S or math.isnan(wait):
        raise InvalidInputError(f"wait must be between 0 and {MAX_WAIT_S:g} seconds", field="wait")
    return wait


class ProbeRoutes:
    """/healthz (the process is alive), /readyz (dependencies reachable, not draining), /metrics."""

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _: Request) -> Response:
        ready, checks = await self._readiness()
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def metrics(self, _: Request) -> Response:
        return Response(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _openclaw_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenClawError)
    return error_response(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, method not allowed) in our error shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": exc.detail}}, status_code=exc.status_code, headers=exc.headers
    )


async def _internal_error(_: Request, exc: Exception) -> Response:
    # Starlette logs the exception after this answer; the body says nothing about the internals.
    return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, status_code=500)


def create_app(route_groups: Sequence[Sequence[BaseRoute]]) -> ASGIApp:
    """The gateway's ASGI app: the given routes behind tracing and request metrics."""
    routes = [route for group in route_groups for route in group]
    app = Starlette(
        routes=routes,
        exception_handlers={
            OpenClawError: _openclaw_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    return Observability(app, routes)


class Observability:
    """Pure ASGI middleware: a SERVER span per request (continuing ``traceparent``) and request metrics.

    Labels use the route template, never the raw path; responses carry ``traceparent`` and ``x-trace-id``.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self._app = app
        self._templates: dict[Any, str] = {
            route.endpoint: route.path for route in routes if isinstance(route, Route)
        }
        self._durations: dict[tuple[str, str], Any] = {}
        self._counts: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        start = time.perf_counter()
        method: str = scope["method"]
        carrier = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _TRACE_HEADERS
        }
        parent = propagate.extract(carrier) if carrier else otel_context.Context()
        status = 500
        with _tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            span_ctx = span.get_span_context()
            extra: list[tuple[bytes, bytes]] = []
            if span_ctx.is_valid:
                trace_id = format(span_ctx.trace_id, "032x")
                traceparent = f"00-{trace_id}-{span_ctx.span_id:016x}-{int(span_ctx.trace_flags):02x}"
                extra = [(b"traceparent", traceparent.encode()), (b"x-trace-id", trace_id.encode())]

            async def send_with_trace(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if extra:
                        message = {**message, "headers": [*message.get("headers", ()), *extra]}
                await send(message)

            try:
                await self._app(scope, receive, send_with_trace)
            except Exception as exc:
                span.record_exception(exc)
                raise
            finally:
                route = self._templates.get(scope.get("endpoint"), UNMATCHED_ROUTE)
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                self._observe(route, method, status, time.perf_counter() - start)

    def _observe(self, route: str, method: str, status: int, seconds: float) -> None:
        count = self._counts.get((route, method, status))
        if count is None:
            count = self._counts[(route, method, status)] = HTTP_REQUESTS.labels(route, method, str(status))
        count.inc()
        duration = self._durations.get((route, method))
        if duration is None:
            duration = self._durations[(route, method)] = HTTP_DURATION.labels(route, method)
        duration.observe(seconds)
