"""WebSocket ``/v1/ws``: tasks (submit, get, watch, cancel) and streamed chat on one connection.

Frames are JSON objects with a ``type``; each request carries a client-chosen ``id`` that every answer to
it repeats, so requests run side by side on one connection. A bad frame gets an ``error`` frame naming the
problem and the connection stays open; a flood (more frames per second than allowed) is closed with 1008
(policy violation). Credentials are watched for the connection's whole life (websocket_auth.py): when its JWT
expires or its API key is found revoked the connection is closed with 4401, unless an ``auth`` frame replaced them
first. Frame size and ping/pong are enforced by the HTTP server (see httpserver.py). The schema is documented in
docs/gateway.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from openclaw.v1 import router_pb2
from services.common.errors import (
    InvalidInputError,
    OpenClawError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
)
from services.gateway.access import Call, Credentials, Gate
from services.gateway.auth import AuthError, Principal
from services.gateway.commands import (
    COMMAND_ACTIONS,
    TASK_COMMANDS,
    command_resource,
    error_body,
    run_task_command,
    string_field,
)
from services.gateway.jsonbody import MAX_DEPTH, parse_json
from services.gateway.limits import Slot
from services.gateway.metrics import REQUESTS, WEBSOCKET_CONNECTIONS
from services.gateway.openai_api import ChatBackend, describe_chat
from services.gateway.openai_wire import OpenAIError, route_info, to_chat_request
from services.gateway.tasks import TaskService
from services.gateway.websocket_auth import CLOSE_CREDENTIALS, CLOSE_TENANT, Grant, grant

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("openclaw.gateway.websocket")
_TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
_MAX_ID = 128
POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1
_KNOWN = (*TASK_COMMANDS, "watch", "chat", "stop", "auth")


@dataclass(frozen=True, slots=True)
class WebSocketPolicy:
    """Per-connection limits of /v1/ws."""

    auth_timeout_s: float = 10.0
    max_in_flight: int = 32
    max_messages_per_second: float = 100.0
    heartbeat_s: float = 15.0
    max_json_depth: int = MAX_DEPTH
    credential_check_s: float = 30.0  # how often an API key is re-checked for revocation
    token_leeway_s: float = 30.0  # the verifier's leeway: a JWT is closed on at exp + leeway


class WebSocketRoutes:
    """The /v1/ws endpoint over the task service and the router."""

    def __init__(self, tasks: TaskService, chat: ChatBackend, gate: Gate, policy: WebSocketPolicy) -> None:
        self.tasks = tasks
        self.chat = chat
        self.gate = gate
        self.policy = policy

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute("/v1/ws", self.endpoint)]

    async def endpoint(self, ws: WebSocket) -> None:
        await ws.accept()
        WEBSOCKET_CONNECTIONS.inc()
        try:
            await _Connection(self, ws).run()
        except WebSocketDisconnect:
            pass
        finally:
            WEBSOCKET_CONNECTIONS.dec()


class _Connection:
    """One client connection: authenticate, then read frames and run each request in its own task.

    A guard task closes the connection when its credentials lapse; the frame loop checks them too before each
    frame, so no frame read after a JWT's expiry is served even if the guard has not run yet.
    """

    def __init__(self, routes: WebSocketRoutes, ws: WebSocket) -> None:
        self._r = routes
        self._ws = ws
        self._send_lock = asyncio.Lock()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._allowance = routes.policy.max_messages_per_second
        self._last = time.monotonic()
        self._grant: Grant | None = None
        self._guard: asyncio.Task[None] | None = None
        self._lapsed = False
        # Each request is a SERVER span, continuing the upgrade request's traceparent if it had one.
        carrier = {k: v for k, v in ws.headers.items() if k in _TRACE_HEADERS}
        self._trace_parent = propagate.extract(carrier) if carrier else otel_context.Context()

    async def run(self) -> None:
        granted = await self._authenticate()
        if granted is None:
            return
        self._grant = granted
        principal = granted.principal
        try:
            policy = self._r.gate.policy(principal.tenant)
            connection = await self._r.gate.slot(
                "websockets", principal.tenant, policy.quotas.max_websocket_connections
            )
        except OpenClawError as exc:
            await self._send({"type": "error", "id": None, "error": error_body(exc)})
            await self._ws.close(POLICY_VIOLATION, exc.code)
            return
        try:
            await self._send({"type": "ready", "tenant": principal.tenant, "expires_at": granted.expires_at})
            self._watch_credentials(granted)
            await self._serve_frames()
        finally:
            await connection.release()

    async def _serve_frames(self) -> None:
        try:
            while True:
                raw = await self._receive()
                if self._lapsed:
                    continue  # closing: frames sent before the peer saw the close are read, never served
                if not self._admit():
                    rate = self._r.policy.max_messages_per_second
                    await self._ws.close(POLICY_VIOLATION, f"more than {rate:g} frames per second")
                    return
                if self._current().expired():  # the guard may not have woken yet
                    await self._lapse("the token has expired", "token expired")
                    continue
                await self._dispatch(raw)
        finally:
            if self._guard is not None:
                self._guard.cancel()
            for task in self._running.values():
                task.cancel()
            if self._running:
                await asyncio.gather(*self._running.values(), return_exceptions=True)

    def _current(self) -> Grant:
        assert self._grant is not None  # set before any frame is served
        return self._grant

    def _watch_credentials(self, granted: Grant) -> None:
        """(Re)start the guard for these credentials; the previous one's deadline no longer applies."""
        if self._guard is not None:
            self._guard.cancel()
        if granted.expires_at is not None or granted.api_key:
            self._guard = asyncio.create_task(self._guard_credentials(granted))

    async def _guard_credentials(self, granted: Grant) -> None:
        """Close the connection at the JWT's expiry, or when a periodic check finds the API key revoked."""
        interval = self._r.policy.credential_check_s
        while True:
            delay = interval if granted.api_key else float("inf")
            if granted.expires_at is not None:
                delay = min(delay, granted.expires_at - time.time())
            if delay > 0:
                await asyncio.sleep(delay)
            if granted.expired():
                await self._lapse("the token has expired", "token expired")
                return
            if not granted.api_key:
                continue  # woke a little early: sleep the rest
            try:
                await self._r.gate.authenticate(granted.credentials)
            except AuthError:
                await self._lapse("the API key is no longer valid (revoked)", "api key revoked")
                return
            except OpenClawError as exc:
                # The key store is unreachable: keep the connection (the key was valid at the last check) and
                # try again next interval rather than drop every API-key connection on a Redis blip.
                _log.warning("could not re-check a WebSocket's API key: %s", exc.message)
            except Exception:  # a dead guard would leave a revoked key working: log and keep checking
                _log.exception("WebSocket API key re-check failed")

    async def _lapse(self, message: str, reason: str) -> None:
        """The credentials are no longer valid: say why, stop every running request and close with 4401."""
        if not self._lapsed:
            await self._close(CLOSE_CREDENTIALS, UnauthenticatedError(message), reason)

    async def _close(self, code: int, err: OpenClawError, reason: str) -> None:
        """Stop serving at once, stop the running requests, then send the error frame and close."""
        self._lapsed = True
        for task in self._running.values():
            task.cancel()
        with contextlib.suppress(Exception):  # the peer may be gone already
            await self._send({"type": "error", "id": None, "error": error_body(err)})
        if self._ws.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self._ws.close(code, reason)

    async def _reauthenticate(self, request_id: str | None, doc: dict[str, Any]) -> None:
        """Replace the connection's credentials with the ``auth`` frame's: same tenant, their own expiry."""
        token = doc.get("token")
        if not isinstance(token, str) or not token:
            raise InvalidInputError("token: required, the JWT or API key as a string", field="token")
        current = self._current()
        try:
            granted = await grant(
                self._r.gate, Credentials(f"Bearer {token}"), leeway_s=self._r.policy.token_leeway_s
            )
        except AuthError as exc:
            await self._close(CLOSE_CREDENTIALS, exc, "re-authentication refused")
            return
        tenant = current.principal.tenant
        if granted.principal.tenant != tenant:
            err = PermissionDeniedError(
                f"the token names tenant {granted.principal.tenant!r} but this connection is {tenant!r}'s; "
                "open another connection for another tenant"
            )
            await self._close(CLOSE_TENANT, err, "re-authentication names another tenant")
            return
        self._grant = granted
        self._watch_credentials(granted)
        await self._send(
            {"type": "auth.ok", "id": request_id, "tenant": tenant, "expires_at": granted.expires_at}
        )

    async def _authenticate(self) -> Grant | None:
        """The Authorization or X-API-Key header if sent, else a first ``auth`` frame within the auth timeout."""
        header = self._ws.headers.get("authorization")
        api_key = self._ws.headers.get("x-api-key")
        leeway = self._r.policy.token_leeway_s
        try:
            if header is not None or api_key is not None:
                return await grant(self._r.gate, Credentials(header, api_key), leeway_s=leeway)
            try:
                raw = await asyncio.wait_for(self._receive(), self._r.policy.auth_timeout_s)
            except TimeoutError:
                raise UnauthenticatedError("no auth frame within the auth timeout") from None
            doc = parse_json(raw, field="frame", max_depth=self._r.policy.max_json_depth)
            if not isinstance(doc, dict) or doc.get("type") != "auth":
                raise UnauthenticatedError('the first frame must be {"type": "auth", "token": "<JWT>"}')
            token = doc.get("token")
            if not isinstance(token, str) or not token:
                raise UnauthenticatedError("token: required, the JWT or API key as a string")
            return await grant(self._r.gate, Credentials(f"Bearer {token}"), leeway_s=leeway)
        except OpenClawError as exc:
            err = exc if isinstance(exc, UnauthenticatedError) else UnauthenticatedError(exc.message)
            await self._send({"type": "error", "id": None, "error": error_body(err)})
            await self._ws.close(POLICY_VIOLATION, "unauthenticated")
            return None

    def _admit(self) -> bool:
        """A token bucket holding one second of frames."""
        rate = self._r.policy.max_messages_per_second
        now = time.monotonic()
        self._allowance = min(rate, self._allowance + (now - self._last) * rate)
        self._last = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

    async def _receive(self) -> str | bytes:
        """The next message; a binary one is read as UTF-8 JSON too, so it never breaks the connection."""
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        text: str | None = message.get("text")
        if text is not None:
            return text
        data: bytes = message.get("bytes") or b""
        return data

    async def _dispatch(self, raw: str | bytes) -> None:
        request_id: str | None = None
        try:
            doc = parse_json(raw, field="frame", max_depth=self._r.policy.max_json_depth)
            if not isinstance(doc, dict):
                raise InvalidInputError("frame: must be a JSON object with a type", field="frame")
            raw_id = doc.get("id")
            if isinstance(raw_id, str) and 0 < len(raw_id) <= _MAX_ID:
                request_id = raw_id
            kind = doc.get("type")
            if kind not in _KNOWN:
                raise InvalidInputError(
                    f"type: unknown frame type {kind!r}; known: {', '.join(_KNOWN)}", field="type"
                )
            if kind == "auth":  # served in line, so every later frame runs on the new credentials
                await self._reauthenticate(request_id, doc)
                return
            if request_id is None:
                raise InvalidInputError(f"id: required, a string of 1 to {_MAX_ID} characters", field="id")
            if kind == "stop":
                task = self._running.get(request_id)
                if task is not None:
                    task.cancel()
                return
            if request_id in self._running:
                raise InvalidInputError(f"id: request {request_id!r} is still running", field="id")
            if len(self._running) >= self._r.policy.max_in_flight:
                raise ResourceExhaustedError(
                    f"more than {self._r.policy.max_in_flight} requests in flight on this connection"
                )
        except OpenClawError as exc:
            self._spawn(None, self._send({"type": "error", "id": request_id, "error": error_body(exc)}))
            return
        REQUESTS.labels("websocket").inc()
        principal = self._current().principal
        self._running[request_id] = self._spawn(request_id, self._serve(principal, request_id, kind, doc))

    def _spawn(self, request_id: str | None, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        if request_id is not None:
            task.add_done_callback(lambda _: self._running.pop(request_id, None))
        return task

    async def _serve(self, principal: Principal, rid: str, kind: str, doc: dict[str, Any]) -> None:
        with _tracer.start_as_current_span(
            f"ws {kind}",
            context=self._trace_parent,
            kind=SpanKind.SERVER,
            attributes={"network.protocol.name": "websocket", "openclaw.request_id": rid},
        ):
            await self._serve_traced(principal, rid, kind, doc)

    async def _serve_traced(self, principal: Principal, rid: str, kind: str, doc: dict[str, Any]) -> None:
        try:
            action = COMMAND_ACTIONS.get(kind) or ("tasks.watch" if kind == "watch" else "chat.completions")
            resource = command_resource(kind if kind != "watch" else "get", doc)
            call = await self._r.gate.admit(principal, action, protocol="websocket", resource=resource)
            async with call:
                if kind in TASK_COMMANDS:
                    task = await run_task_command(
                        self._r.tasks,
                        principal.tenant,
                        kind,
                        doc,
                        policy=call.policy,
                        submitted_by=principal.subject,
                    )
                    if kind == "submit":
                        call.resource = f"task:{task['id']}"
                    await self._send({"type": "task", "id": rid, "task": task})
                elif kind == "watch":
                    await self._watch(call, rid, doc)
                else:
                    await self._chat_stream(call, rid, doc)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._send({"type": "end", "id": rid, "reason": "stopped"})
            raise
        except OpenClawError as exc:
            await self._send({"type": "error", "id": rid, "error": error_body(exc)})
        except OpenAIError as exc:  # audited as the call's outcome already
            body = {"code": "invalid_input", "message": exc.message, "retryable": False}
            if exc.param:
                body["details"] = {"param": exc.param}
            await self._send({"type": "error", "id": rid, "error": body})
        except WebSocketDisconnect:
            pass
        except Exception:
            _log.exception("websocket request failed", extra={"request_type": kind})
            body = {"code": "internal", "message": "internal error", "retryable": False}
            with contextlib.suppress(Exception):
                await self._send({"type": "error", "id": rid, "error": body})

    async def _watch(self, call: Call, rid: str, doc: dict[str, Any]) -> None:
        task_id = string_field(doc, "task_id")
        after = string_field(doc, "after", required=False)
        slot = await call.stream_slot()
        try:
            stream = await self._r.tasks.watch(
                call.principal.tenant, task_id, after=after, heartbeat_s=self._r.policy.heartbeat_s
            )
            try:
                async for event in stream:
                    if event is not None:
                        await self._send({"type": "event", "id": rid, "event": event.to_api()})
            finally:
                await stream.aclose()
        finally:
            await _release(slot)
        await self._send({"type": "end", "id": rid})

    async def _chat_stream(self, call: Call, rid: str, doc: dict[str, Any]) -> None:
        body = doc.get("request")
        if not isinstance(body, dict):
            raise InvalidInputError("request: required, an OpenAI chat completion body", field="request")
        tenant = call.principal.tenant
        request = to_chat_request(body, tenant=tenant, request_id=f"chatcmpl-{uuid.uuid4().hex}")
        call.resource = f"model:{request.model}"
        describe_chat(call, request, stream=True)
        assert call.policy is not None
        call.policy.check_model(request.model)
        slot = await call.stream_slot()
        try:
            await self._relay_chat(rid, request)
        finally:
            await _release(slot)

    async def _relay_chat(self, rid: str, request: router_pb2.ChatRequest) -> None:
        stream = aiter(self._r.chat.chat_stream(request))
        model, finish, usage, route = request.model, "", None, None
        try:
            async for chunk in stream:
                model = chunk.model or model
                finish = chunk.finish_reason or finish
                if chunk.HasField("usage"):
                    usage = _usage(chunk.usage)
                if chunk.HasField("route"):
                    route = route_info(chunk.route)
                if chunk.delta:
                    await self._send({"type": "chat.delta", "id": rid, "delta": chunk.delta})
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        done: dict[str, Any] = {
            "type": "chat.done",
            "id": rid,
            "model": model,
            "finish_reason": finish or "stop",
        }
        if usage is not None:
            done["usage"] = usage
        if route is not None:
            done["route"] = route
        await self._send(done)

    async def _send(self, frame: dict[str, Any]) -> None:
        if self._ws.application_state is not WebSocketState.CONNECTED:
            return
        async with self._send_lock:
            await self._ws.send_text(_encode(frame))


async def _release(slot: Slot) -> None:
    """Release a stream slot even when the request is being cancelled (a ``stop`` frame)."""
    await asyncio.shield(slot.release())


def _usage(usage: router_pb2.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
