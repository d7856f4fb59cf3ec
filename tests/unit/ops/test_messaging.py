"""Messaging operations without a broker: destinations refused before any connection, signing, bad params.

Publishing to RabbitMQ, Mosquitto and a webhook receiver is in tests/integration/test_infra_ops.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInputError, PermissionDeniedError, UnavailableError
from services.executor.context import OpContext
from services.executor.ops import _signing
from services.executor.settings import ExecutorSettings
from tests.unit.ops.harness import ctx_for, run_op

CREDENTIALS = {
    "events": {"exchanges": "acme.events,acme.audit.*", "tenants": "acme"},
    "anything": {"exchanges": "*"},
    "theirs": {"exchanges": "globex.events", "tenants": "globex"},
    "broker": {"url": "mqtt://127.0.0.1:1883", "topics": "acme/+/events,acme/alerts/#"},
    "nourl": {"topics": "acme/#"},
    "hooks": {"signing_secret": "s3cret", "hosts": "hooks.example.com"},
    "nosecret": {"hosts": "hooks.example.com"},
}


@pytest.fixture
def ctx(tmp_path: Path) -> OpContext:
    return ctx_for(tmp_path, credentials=CREDENTIALS, namespace="openclaw")


@pytest.mark.parametrize(
    ("auth", "exchange", "message"),
    [
        ("anything", "openclaw.tasks", "belongs to OpenClaw itself"),
        ("anything", "openclaw.dead", "belongs to OpenClaw itself"),
        ("anything", "amq.topic", "reserved by the broker"),
        ("events", "acme.other", "does not allow publishing to 'acme.other'"),
        ("events", "acme.auditor", "does not allow publishing"),
        ("theirs", "globex.events", "may not be used by tenant 'acme'"),
    ],
)
async def test_exchanges_outside_the_allow_list_are_refused_before_connecting(
    auth: str, exchange: str, message: str, ctx: OpContext
) -> None:
    with pytest.raises(PermissionDeniedError, match=message):
        await run_op("amqp_publish", {"auth": auth, "exchange": exchange, "message": {"a": 1}}, ctx)


async def test_an_allowed_exchange_needs_the_executor_connection(ctx: OpContext) -> None:
    for exchange in ("acme.events", "acme.audit.eu"):
        with pytest.raises(UnavailableError, match="no AMQP connection"):
            await run_op("amqp_publish", {"auth": "events", "exchange": exchange, "message": 1}, ctx)


@pytest.mark.parametrize(
    "params",
    [
        {"auth": "events", "exchange": ""},
        {"auth": "events", "exchange": "bad name"},
        {"auth": "events", "exchange": "x", "routing_key": "k" * 256},
        {"auth": "events", "exchange": "x", "format": "xml"},
        {"auth": "events", "exchange": "x", "expiration_s": 0},
        {"exchange": "x"},
    ],
)
async def test_amqp_params_out_of_bounds_are_refused(params: dict[str, Any], ctx: OpContext) -> None:
    with pytest.raises(ValidationError):
        await run_op("amqp_publish", params, ctx)


async def test_text_format_needs_a_string(ctx: OpContext) -> None:
    with pytest.raises(InvalidInputError, match="message: format 'text' needs a string, not dict"):
        await run_op(
            "amqp_publish",
            {"auth": "events", "exchange": "acme.events", "message": {}, "format": "text"},
            ctx,
        )


@pytest.mark.parametrize("topic", ["acme/+/x", "acme/#", "$SYS/broker", "a\x00b", "t" * 1025])
async def test_topics_with_wildcards_or_for_the_broker_are_refused(topic: str, ctx: OpContext) -> None:
    with pytest.raises(ValidationError) as info:
        await run_op("mqtt_publish", {"auth": "broker", "topic": topic, "payload": 1}, ctx)
    assert info.value.errors()[0]["loc"] == ("topic",)


async def test_topics_outside_the_sets_filters_are_refused(ctx: OpContext) -> None:
    with pytest.raises(PermissionDeniedError, match="does not allow publishing to 'globex/x/events'"):
        await run_op("mqtt_publish", {"auth": "broker", "topic": "globex/x/events", "payload": 1}, ctx)
    with pytest.raises(PermissionDeniedError, match="does not allow"):
        await run_op("mqtt_publish", {"auth": "broker", "topic": "acme/a/b/events", "payload": 1}, ctx)


async def test_an_mqtt_set_without_a_broker_url_is_named(ctx: OpContext) -> None:
    with pytest.raises(InvalidInputError, match="auth: credential set 'nourl' needs a url"):
        await run_op("mqtt_publish", {"auth": "nourl", "topic": "acme/x", "payload": 1}, ctx)


@pytest.mark.parametrize(
    "params",
    [
        {"auth": "broker", "topic": "acme/x/events", "qos": 3},
        {"auth": "broker", "topic": "acme/x/events", "user_properties": {"k": 1}},
        {"auth": "broker", "topic": "", "payload": 1},
        {"auth": "broker", "topic": "acme/x/events", "timeout_s": 0},
    ],
)
async def test_mqtt_params_out_of_bounds_are_refused(params: dict[str, Any], ctx: OpContext) -> None:
    with pytest.raises(ValidationError):
        await run_op("mqtt_publish", params, ctx)


async def test_webhook_needs_a_secret_a_permitted_host_and_an_http_client(ctx: OpContext) -> None:
    with pytest.raises(PermissionDeniedError, match=r"may not be sent to host 'evil\.example\.net'"):
        await run_op(
            "webhook_send", {"url": "https://evil.example.net/h", "auth": "hooks", "payload": 1}, ctx
        )
    with pytest.raises(UnavailableError, match="no HTTP client"):
        await run_op(
            "webhook_send", {"url": "https://hooks.example.com/h", "auth": "hooks", "payload": 1}, ctx
        )
    with pytest.raises(ValidationError, match="http:// or https://"):
        await run_op("webhook_send", {"url": "ftp://hooks.example.com/h", "auth": "hooks"}, ctx)


def test_signatures_are_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert _signing.sign("s3cret", 1700000000, body) == f"v1={expected}"


def test_verify_accepts_any_listed_signature_and_rejects_tampering_and_replays() -> None:
    now = 1_700_000_000
    body = b'{"order":7}'
    good = _signing.sign("new", now, body)
    old = _signing.sign("old", now, body)
    assert _signing.verify("new", str(now), body, f"{old}, {good}", now=now, tolerance_s=300) is None
    assert "does not match" in (
        _signing.verify("new", str(now), b'{"order":8}', good, now=now, tolerance_s=300) or ""
    )
    assert "300s from now" in (
        _signing.verify("new", str(now), body, good, now=now + 301, tolerance_s=300) or ""
    )
    assert _signing.verify("new", str(now), body, good, now=now + 10_000, tolerance_s=0) is None
    assert "no v1=" in (_signing.verify("new", str(now), body, "sha256=abc", now=now, tolerance_s=300) or "")
    assert "whole number" in (_signing.verify("new", "soon", body, good, now=now, tolerance_s=300) or "")


async def test_webhook_verify_checks_a_received_request(ctx: OpContext) -> None:
    body = json.dumps({"event": "paid", "amount": 12})
    ts = int(time.time())
    signature = _signing.sign("s3cret", ts, body.encode())
    out = await run_op(
        "webhook_verify", {"auth": "hooks", "body": body, "timestamp": ts, "signature": signature}, ctx
    )
    assert out == {"valid": True, "reason": None, "payload": {"event": "paid", "amount": 12}}
    forged = await run_op(
        "webhook_verify",
        {"auth": "hooks", "body": body.replace("12", "1200"), "timestamp": str(ts), "signature": signature},
        ctx,
    )
    assert forged["valid"] is False
    assert "does not match" in forged["reason"]
    with pytest.raises(InvalidInputError, match="auth: credential set 'nosecret' has no signing_secret"):
        await run_op(
            "webhook_verify", {"auth": "nosecret", "body": body, "timestamp": ts, "signature": signature}, ctx
        )


def test_exchange_and_topic_lists_in_settings_become_scopes() -> None:
    raw = {"events": {"exchanges": ["acme.events", "acme.audit.*"], "topics": ["acme/#"]}}
    settings = ExecutorSettings.model_validate({"credentials": raw})
    assert settings.credentials["events"] == {"exchanges": "acme.events,acme.audit.*", "topics": "acme/#"}
    with pytest.raises(ValidationError, match="exchanges must name at least one"):
        ExecutorSettings.model_validate({"credentials": {"events": {"exchanges": []}}})
