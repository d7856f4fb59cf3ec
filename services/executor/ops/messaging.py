"""Messaging operations: publish to a RabbitMQ exchange, an MQTT topic or a signed webhook.

Each names a credential set (``auth``) that says where the tenant may publish: ``exchanges`` for RabbitMQ
(through the executor's own connection, which is why OpenClaw's exchanges, ``amq.*`` and the default
exchange are refused whatever a set says), ``url`` and ``topics`` for an MQTT broker, ``signing_secret`` and
``hosts`` for webhooks (sent through the HTTP client and its SSRF guard; signatures are described in
services.executor.ops._signing).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import aio_pika
import aiomqtt
from aio_pika import exceptions as amqp_errors
from aiormq.exceptions import ChannelAccessRefused
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import AfterValidator, Field, field_validator
from yarl import URL

from services.common.errors import (
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    TimeoutError_,
    UnavailableError,
)
from services.executor.context import OpContext
from services.executor.expressions import OPEN
from services.executor.ops import _signing
from services.executor.ops.base import Params, input_or_prev, operation, scoped_credential
from services.executor.ops.http import status_error

CATEGORY = "messaging"
_EXCHANGE = re.compile(r"^[A-Za-z0-9_.:-]{1,255}$")
_MQTT_CONNECT_REFUSED = {4, 5, 134, 135}  # bad user name or password / not authorized (3.1.1 and 5)
AUTH_DOC = "Name of the credential set that allows this destination."
Timeout = Annotated[float, Field(gt=0, le=120, description="Longest the whole publish may take.")]
HeaderValue = str | int | float | bool


def _body(value: Any, fmt: str, ctx: OpContext, param: str) -> bytes:
    """The message bytes: compact JSON, or the text itself with format "text"."""
    if fmt == "text":
        if not isinstance(value, str):
            raise InvalidInputError(
                f"{param}: format 'text' needs a string, not {type(value).__name__}", param=param
            )
        data = value.encode()
    else:
        try:
            data = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{param}: not encodable as JSON: {exc}", param=param) from None
    limit = ctx.services.max_output_bytes
    if len(data) > limit:
        raise PayloadTooLargeError(f"{param}: {len(data)} bytes is over the limit of {limit}", param=param)
    return data


def _delivery_id(ctx: OpContext, body: bytes) -> str:
    """The same for every attempt of a step sending the same body, so a receiver can drop redeliveries."""
    seed = f"{ctx.tenant}/{ctx.task_id}/{ctx.step_id}/{hashlib.sha256(body).hexdigest()}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, seed))


def _listed(credential: Mapping[str, str], key: str) -> list[str]:
    return [item.strip() for item in credential.get(key, "").split(",") if item.strip()]


# -- amqp_publish ---------------------------------------------------------------------------------------


class AmqpPublishParams(Params):
    auth: str = Field(min_length=1, max_length=64, description=AUTH_DOC + " (its `exchanges`).")
    exchange: str = Field(min_length=1, max_length=255, description="An existing exchange the set allows.")
    routing_key: str = Field("", max_length=255, description="Routing key (topic and direct exchanges).")
    message: Any = Field(
        None, description="The message (JSON, or text); the previous step's output if omitted."
    )
    format: Literal["json", "text"] = Field("json", description="Send the message as JSON or as plain text.")
    headers: dict[Annotated[str, Field(min_length=1, max_length=128)], HeaderValue] = Field(
        default_factory=dict, max_length=64, description="AMQP headers (openclaw-* are set by the executor)."
    )
    persistent: bool = Field(True, description="Ask the broker to write the message to disk.")
    message_id: str | None = Field(
        None, max_length=255, description="Message id; omitted: the same UUID on every retry of the step."
    )
    correlation_id: str | None = Field(None, max_length=255, description="Correlation id for replies.")
    expiration_s: float | None = Field(None, gt=0, le=7 * 86400, description="Drop the message if unread.")
    mandatory: bool = Field(True, description="Fail if no queue is bound for the routing key.")
    timeout_s: Timeout = 10.0

    @field_validator("exchange")
    @classmethod
    def _name(cls, value: str) -> str:
        if OPEN not in value and not _EXCHANGE.match(value):
            raise ValueError("an exchange name is letters, digits and - _ . : only")
        return value


def _check_exchange(ctx: OpContext, auth: str, exchange: str) -> None:
    """Refuse OpenClaw's own and the broker's exchanges, then anything the credential set does not list."""
    ns = ctx.services.namespace
    if exchange == ns or exchange.startswith(f"{ns}."):
        raise PermissionDeniedError(f"exchange: {exchange!r} belongs to OpenClaw itself", param="exchange")
    if exchange.startswith("amq."):
        raise PermissionDeniedError(f"exchange: {exchange!r} is reserved by the broker", param="exchange")
    allowed = _listed(scoped_credential(ctx, auth), "exchanges")
    for entry in allowed:
        if exchange == entry or (entry.endswith("*") and exchange.startswith(entry[:-1])):
            return
    raise PermissionDeniedError(
        f"exchange: credential set {auth!r} does not allow publishing to {exchange!r}", param="exchange"
    )


@operation("amqp_publish", category=CATEGORY, params=AmqpPublishParams)
async def amqp_publish(p: AmqpPublishParams, ctx: OpContext) -> dict[str, Any]:
    """Publish a message to a RabbitMQ exchange the credential set allows, waiting for the broker's confirm;
    returns exchange, routing_key and message_id."""
    _check_exchange(ctx, p.auth, p.exchange)
    body = _body(input_or_prev(p, "message", ctx), p.format, ctx, "message")
    connection = ctx.services.require_amqp()
    message_id = p.message_id or _delivery_id(ctx, body)
    headers: dict[str, Any] = {k: v for k, v in p.headers.items() if not k.lower().startswith("openclaw-")}
    headers.update(
        {"openclaw-tenant": ctx.tenant, "openclaw-task": ctx.task_id, "openclaw-step": ctx.step_id}
    )
    message = aio_pika.Message(
        body,
        headers=headers,
        content_type="application/json" if p.format == "json" else "text/plain; charset=utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT
        if p.persistent
        else aio_pika.DeliveryMode.NOT_PERSISTENT,
        message_id=message_id,
        correlation_id=p.correlation_id,
        expiration=p.expiration_s,
        app_id="openclaw-executor",
    )
    try:
        # A channel per publish: a refused exchange closes its channel, which must not be a shared one.
        async with asyncio.timeout(p.timeout_s):
            async with connection.channel(publisher_confirms=True, on_return_raises=p.mandatory) as channel:
                exchange = await channel.get_exchange(p.exchange, ensure=True)
                await exchange.publish(message, p.routing_key, mandatory=p.mandatory)
    except amqp_errors.ChannelNotFoundEntity as exc:
        raise NotFoundError(f"exchange: {p.exchange!r} does not exist", param="exchange") from exc
    except amqp_errors.PublishError as exc:
        raise NotFoundError(
            f"routing_key: no queue is bound to {p.exchange!r} for {p.routing_key!r} (mandatory)",
            param="routing_key",
        ) from exc
    except amqp_errors.DeliveryError as exc:
        raise UnavailableError(f"exchange: the broker did not accept the message for {p.exchange!r}") from exc
    except ChannelAccessRefused as exc:
        raise PermissionDeniedError(f"exchange: the broker refused access to {p.exchange!r}") from exc
    except TimeoutError as exc:
        raise TimeoutError_(f"exchange: the broker did not confirm within {p.timeout_s}s") from exc
    except (amqp_errors.AMQPError, ConnectionError) as exc:
        raise UnavailableError(f"RabbitMQ publish to {p.exchange!r} failed: {exc!r}") from exc
    return {"exchange": p.exchange, "routing_key": p.routing_key, "message_id": message_id}


# -- mqtt_publish ---------------------------------------------------------------------------------------


def check_topic(value: str) -> str:
    """A topic to publish to: no wildcards, no NUL, not a $SYS-style broker topic."""
    if OPEN in value:
        return value
    if any(c in value for c in "+#\x00"):
        raise ValueError("a topic to publish to has no + or # wildcards and no NUL")
    if value.startswith("$"):
        raise ValueError("topics starting with $ belong to the broker")
    if len(value.encode()) > 1024:
        raise ValueError("at most 1024 bytes")
    return value


class MqttPublishParams(Params):
    auth: str = Field(min_length=1, max_length=64, description=AUTH_DOC + " (its `url` and `topics`).")
    topic: Annotated[str, AfterValidator(check_topic)] = Field(
        min_length=1, description="Topic to publish to."
    )
    payload: Any = Field(
        None, description="The payload (JSON, or text); the previous step's output if omitted."
    )
    format: Literal["json", "text"] = Field("json", description="Send the payload as JSON or as plain text.")
    qos: Literal[0, 1, 2] = Field(1, description="0 at most once, 1 at least once, 2 exactly once.")
    retain: bool = Field(False, description="Keep as the topic's last value for new subscribers.")
    user_properties: dict[Annotated[str, Field(min_length=1, max_length=128)], str] = Field(
        default_factory=dict, max_length=32, description="MQTT 5 user properties."
    )
    content_type: str | None = Field(
        None, max_length=255, description="MQTT 5 content type (default by format)."
    )
    message_expiry_s: int | None = Field(None, ge=1, le=7 * 86400, description="Drop the message if unread.")
    timeout_s: Timeout = 10.0


def _broker(credential: Mapping[str, str], auth: str) -> tuple[str, int, str | None, str | None, bool]:
    url = credential.get("url", "")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise InvalidInputError(
            f"auth: credential set {auth!r} needs a url like mqtt://host:1883 or mqtts://host"
        )
    tls = parts.scheme == "mqtts"
    user = credential.get("username") or (unquote(parts.username) if parts.username else None)
    password = credential.get("password") or (unquote(parts.password) if parts.password else None)
    return parts.hostname, parts.port or (8883 if tls else 1883), user, password, tls


@operation("mqtt_publish", category=CATEGORY, params=MqttPublishParams)
async def mqtt_publish(p: MqttPublishParams, ctx: OpContext) -> dict[str, Any]:
    """Publish to an MQTT topic (MQTT 5: QoS, retain, user properties) on the credential set's broker, waiting
    for the broker's acknowledgement at QoS 1 and 2; returns topic, qos and bytes."""
    credential = scoped_credential(ctx, p.auth)
    filters = _listed(credential, "topics")
    if filters and not any(topic_matches_sub(f, p.topic) for f in filters):
        raise PermissionDeniedError(
            f"topic: credential set {p.auth!r} does not allow publishing to {p.topic!r}", param="topic"
        )
    payload = _body(input_or_prev(p, "payload", ctx), p.format, ctx, "payload")
    host, port, user, password, tls = _broker(credential, p.auth)
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.PayloadFormatIndicator = 1  # UTF-8 text (JSON is text too)
    props.ContentType = p.content_type or ("application/json" if p.format == "json" else "text/plain")
    if p.user_properties:
        props.UserProperty = list(p.user_properties.items())
    if p.message_expiry_s is not None:
        props.MessageExpiryInterval = p.message_expiry_s
    client = aiomqtt.Client(
        host,
        port,
        username=user,
        password=password,
        identifier=f"openclaw-{uuid.uuid4().hex[:16]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=p.timeout_s,
        tls_context=ssl.create_default_context() if tls else None,
    )
    try:
        async with asyncio.timeout(p.timeout_s):
            async with client:
                await client.publish(p.topic, payload, qos=p.qos, retain=p.retain, properties=props)
    except TimeoutError as exc:
        raise TimeoutError_(f"topic: the broker did not acknowledge within {p.timeout_s}s") from exc
    except aiomqtt.MqttCodeError as exc:
        if exc.rc in _MQTT_CONNECT_REFUSED:
            raise PermissionDeniedError(
                f"auth: the MQTT broker refused credential set {p.auth!r}: {exc}"
            ) from exc
        raise UnavailableError(f"MQTT publish to {p.topic!r} failed: {exc}") from exc
    except aiomqtt.MqttError as exc:
        raise UnavailableError(f"MQTT publish to {p.topic!r} failed: {exc}") from exc
    return {"topic": p.topic, "qos": p.qos, "retain": p.retain, "bytes": len(payload)}


# -- webhooks -------------------------------------------------------------------------------------------


def _secret(ctx: OpContext, auth: str, host: str | None = None) -> str:
    secret = scoped_credential(ctx, auth, host=host).get("signing_secret")
    if not secret:
        raise InvalidInputError(f"auth: credential set {auth!r} has no signing_secret", auth=auth)
    return secret


class WebhookSendParams(Params):
    url: str = Field(min_length=1, max_length=4096, description="http:// or https:// URL of the receiver.")
    auth: str = Field(min_length=1, max_length=64, description=AUTH_DOC + " (its `signing_secret`).")
    payload: Any = Field(None, description="The JSON body; the previous step's output if omitted.")
    event: str | None = Field(None, max_length=128, description="Sent as X-OpenClaw-Event.")
    headers: dict[Annotated[str, Field(min_length=1, max_length=128)], str] = Field(
        default_factory=dict, max_length=32, description="Extra headers (the X-OpenClaw-* ones are reserved)."
    )
    timeout_s: Timeout = 10.0
    raise_for_status: bool = Field(True, description="Fail the step on HTTP 4xx/5xx (429/5xx are retryable).")

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if OPEN not in value and not value.lower().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


@operation("webhook_send", category=CATEGORY, params=WebhookSendParams)
async def webhook_send(p: WebhookSendParams, ctx: OpContext) -> dict[str, Any]:
    """POST a JSON payload to a webhook, signed with HMAC-SHA256 over timestamp and body (X-OpenClaw-Signature);
    returns status, delivery_id and the response body."""
    secret = _secret(ctx, p.auth, host=URL(p.url).host)
    client = ctx.services.require_http()
    body = _body(input_or_prev(p, "payload", ctx), "json", ctx, "payload")
    timestamp = int(time.time())
    delivery = _delivery_id(ctx, body)
    headers = {k: v for k, v in p.headers.items() if not k.lower().startswith("x-openclaw-")}
    headers.update(
        {
            "Content-Type": "application/json",
            _signing.TIMESTAMP_HEADER: str(timestamp),
            _signing.SIGNATURE_HEADER: _signing.sign(secret, timestamp, body),
            _signing.DELIVERY_HEADER: delivery,
        }
    )
    if p.event:
        headers[_signing.EVENT_HEADER] = p.event
    async with client.open(
        "POST", p.url, headers=headers, data=body, timeout_s=p.timeout_s, follow_redirects=False
    ) as response:
        raw = await client.read(response, 256 * 1024)
        if p.raise_for_status and response.status >= 400:
            raise status_error(response.status, p.url, raw[:200].decode("utf-8", "replace"))
        text = raw.decode(response.charset or "utf-8", "replace")
        try:
            reply: Any = json.loads(text) if "json" in response.headers.get("Content-Type", "") else text
        except ValueError:
            reply = text
        return {"status": response.status, "delivery_id": delivery, "body": reply}


class WebhookVerifyParams(Params):
    auth: str = Field(min_length=1, max_length=64, description=AUTH_DOC + " (its `signing_secret`).")
    body: str = Field(max_length=10 * 1024 * 1024, description="The raw request body exactly as received.")
    timestamp: str = Field(max_length=32, description="The X-OpenClaw-Timestamp header.")
    signature: str = Field(max_length=2048, description="The X-OpenClaw-Signature header.")
    tolerance_s: int = Field(
        _signing.DEFAULT_TOLERANCE_S,
        ge=0,
        le=86400,
        description="Largest clock difference accepted (0: any).",
    )

    @field_validator("timestamp", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


@operation("webhook_verify", category=CATEGORY, params=WebhookVerifyParams)
async def webhook_verify(p: WebhookVerifyParams, ctx: OpContext) -> dict[str, Any]:
    """Check an incoming webhook's X-OpenClaw signature and timestamp against a credential set's secret;
    returns valid, the reason if not, and the parsed JSON payload if valid."""
    secret = _secret(ctx, p.auth)
    body = p.body.encode()
    reason = _signing.verify(
        secret, p.timestamp, body, p.signature, now=time.time(), tolerance_s=p.tolerance_s
    )
    if reason is not None:
        return {"valid": False, "reason": reason, "payload": None}
    try:
        payload: Any = json.loads(body)
    except ValueError:
        payload = p.body
    return {"valid": True, "reason": None, "payload": payload}


OPERATIONS = (amqp_publish, mqtt_publish, webhook_send, webhook_verify)
