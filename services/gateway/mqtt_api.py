"""MQTT 5 ingress: task commands published to ``{prefix}/{tenant}/tasks/{command}``, answered by request/response.

The gateway subscribes through a shared subscription (``$share/{group}/{prefix}/+/tasks/#``), so the broker
hands each request to one gateway replica only. A request carries its JWT or API key in the ``authorization``
user property (``Bearer <JWT>``, as in HTTP) or an API key in ``x-api-key``, a Response Topic and usually Correlation Data; the reply (the task,
or an error) goes to the Response Topic with the same Correlation Data and ``status`` and ``traceparent``
user properties. The tenant in the topic must be the token's. The connection is re-established with
exponential backoff whenever the broker goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    OpenClawError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from services.gateway.access import Credentials, Gate
from services.gateway.commands import (
    COMMAND_ACTIONS,
    TASK_COMMANDS,
    command_resource,
    error_body,
    run_task_command,
)
from services.gateway.jsonbody import parse_json
from services.gateway.metrics import MQTT_MESSAGES, REQUESTS
from services.gateway.settings import GatewaySettings
from services.gateway.tasks import TaskService

_log = logging.getLogger(__name__)
_tracer = trace.get_tracer("openclaw.gateway.mqtt")
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
AUTH_PROPERTY = "authorization"
API_KEY_PROPERTY = "x-api-key"
_TRACE_KEYS = frozenset({"traceparent", "tracestate", "baggage"})
_MAX_CONCURRENT = 64
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.5, 30.0


class MqttIngress:
    """Consumes task commands from the broker and publishes their replies; start() returns once subscribed."""

    def __init__(self, tasks: TaskService, gate: Gate, settings: GatewaySettings) -> None:
        url = urlsplit(settings.mqtt_url)
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (8883 if url.scheme == "mqtts" else 1883)
        self._tls = url.scheme == "mqtts"
        self._username, self._password = url.username, url.password
        self._tasks = tasks
        self._gate = gate
        self._max_depth = settings.max_json_depth
        self._max_bytes = settings.max_body_bytes
        self._prefix = settings.mqtt_topic_prefix
        self.subscription = f"$share/{settings.mqtt_share_group}/{self._prefix}/+/tasks/#"
        self._client_id = f"{settings.service}-{uuid.uuid4().hex[:12]}"
        self._slots = asyncio.Semaphore(_MAX_CONCURRENT)
        self._handlers: set[asyncio.Task[None]] = set()
        self._client: aiomqtt.Client | None = None
        self._subscribed = asyncio.Event()
        self._run: asyncio.Task[None] | None = None
        self._received = MQTT_MESSAGES.labels("in", "ok")
        self._requests = REQUESTS.labels("mqtt")

    async def start(self, timeout_s: float = 10.0) -> None:
        """Connect and subscribe; keeps retrying in the background if the broker is not there yet."""
        self._run = asyncio.create_task(self._serve(), name="mqtt-ingress")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        if not self._subscribed.is_set():
            _log.warning(
                "MQTT broker not reachable yet; retrying in the background", extra={"host": self._host}
            )

    async def stop(self, grace_s: float) -> None:
        """Stop taking requests (unsubscribe), let in-flight ones reply within grace_s, then disconnect."""
        client = self._client
        if client is not None and self._subscribed.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.unsubscribe(self.subscription), 2.0)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=grace_s or None)
        for handler in self._handlers:
            handler.cancel()
        if self._run is not None:
            self._run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._run
            self._run = None

    async def _serve(self) -> None:
        backoff = _BACKOFF_MIN_S
        while True:
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    identifier=self._client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    username=self._username,
                    password=self._password,
                    tls_params=aiomqtt.TLSParameters() if self._tls else None,
                    clean_start=True,
                ) as client:
                    self._client = client
                    await client.subscribe(self.subscription, qos=1)
                    self._subscribed.set()
                    backoff = _BACKOFF_MIN_S
                    _log.info("MQTT ingress subscribed", extra={"subscription": self.subscription})
                    async for message in client.messages:
                        await self._slots.acquire()
                        handler = asyncio.create_task(self._handle(client, message))
                        self._handlers.add(handler)
                        handler.add_done_callback(self._done)
            except aiomqtt.MqttError as exc:
                self._client = None
                self._subscribed.clear()
                delay = backoff * random.uniform(0.5, 1.0)  # jitter: replicas do not reconnect in step
                _log.warning(
                    "MQTT connection lost; reconnecting",
                    extra={"error": str(exc), "retry_in_s": round(delay, 2)},
                )
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        self._slots.release()

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        props = message.properties
        user = dict(getattr(props, "UserProperty", None) or [])
        reply_to = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        carrier = {k: v for k, v in user.items() if k in _TRACE_KEYS}
        parent = propagate.extract(carrier) if carrier else otel_context.Context()
        self._requests.inc()
        command = ""
        with _tracer.start_as_current_span(
            "mqtt request", context=parent, kind=SpanKind.SERVER, attributes={"messaging.system": "mqtt"}
        ) as span:
            try:
                tenant, command = self._route(message.topic.value)
                span.update_name(f"mqtt {command}")
                creds = Credentials(user.get(AUTH_PROPERTY), user.get(API_KEY_PROPERTY))
                principal = await self._gate.authenticate(creds)
                if principal.tenant != tenant:
                    raise PermissionDeniedError(
                        "the tenant in the topic is not the token's tenant", field="topic"
                    )
                payload = bytes(message.payload) if message.payload else b""
                if len(payload) > self._max_bytes:
                    raise PayloadTooLargeError(
                        f"payload: over the {self._max_bytes}-byte limit", limit=self._max_bytes
                    )
                doc = parse_json(payload, field="payload", max_depth=self._max_depth)
                if not isinstance(doc, dict):
                    raise InvalidInputError("payload: must be a JSON object", field="payload")
                call = await self._gate.admit(
                    principal,
                    COMMAND_ACTIONS[command],
                    protocol="mqtt",
                    resource=command_resource(command, doc),
                )
                async with call:
                    task = await run_task_command(
                        self._tasks,
                        tenant,
                        command,
                        doc,
                        policy=call.policy,
                        submitted_by=call.principal.subject,
                    )
                    if command == "submit":
                        call.resource = f"task:{task['id']}"
                reply: dict[str, Any] = {"task": task}
                status = "ok"
            except OpenClawError as exc:
                reply, status = {"error": error_body(exc)}, "error"
            except Exception:
                _log.exception("MQTT request failed", extra={"command": command})
                reply = {"error": {"code": "internal", "message": "internal error", "retryable": False}}
                status = "error"
            if status == "ok":
                self._received.inc()
            else:
                MQTT_MESSAGES.labels("in", "error").inc()
            if not reply_to:
                _log.warning("MQTT request without a Response Topic; no reply sent", extra={"status": status})
                return
            out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if correlation is not None:
                out.CorrelationData = correlation
            headers: dict[str, str] = {}
            propagate.inject(headers)
            out.UserProperty = [("status", status), *headers.items()]
            try:
                await client.publish(reply_to, _encode(reply).encode(), qos=1, properties=out)
                MQTT_MESSAGES.labels("out", "ok").inc()
            except aiomqtt.MqttError as exc:
                MQTT_MESSAGES.labels("out", "error").inc()
                _log.warning("MQTT reply not published", extra={"error": str(exc)})

    def _route(self, topic: str) -> tuple[str, str]:
        """(tenant, command) from ``{prefix}/{tenant}/tasks/{command}``."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self._prefix or parts[2] != "tasks":
            raise NotFoundError(
                f"topic {topic!r}: expected {self._prefix}/<tenant>/tasks/<command>", field="topic"
            )
        if parts[3] not in TASK_COMMANDS:
            raise NotFoundError(
                f"topic {topic!r}: unknown command {parts[3]!r}; known: {', '.join(TASK_COMMANDS)}",
                field="topic",
            )
        return parts[1], parts[3]
