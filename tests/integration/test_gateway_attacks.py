"""The attacks a hostile client would try, over HTTP, WebSocket, MQTT and gRPC alike (issue 6, "Bad input"):
bad tokens, revoked keys, another tenant's tasks, keys and audit, oversized and deeply nested JSON, floods.

Each protocol is driven by a small client that reduces every answer to an outcome code ("ok" or the error's
code), so one parametrized suite holds every protocol to the same verdicts; after each attack the gateway must
still serve a valid request on the same protocol.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiomqtt
import grpc
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed

from openclaw.v1 import gateway_pb2, gateway_pb2_grpc
from services.common import rpc
from services.gateway import GatewayApp, mint_token
from tests.integration.test_gateway import SECRET, WORKFLOW, router_addr  # noqa: F401
from tests.integration.test_gateway_governance import (  # noqa: F401
    Start,
    bearer,
    jwks_file,
    rsa_key,
    slot_count,
    start,
    tenants_file,
    token,
    until,
)

pytestmark = pytest.mark.integration

PROTOCOLS = ["http", "websocket", "mqtt", "grpc"]
MISSING_TASK = "0123456789abcdef0123456789abcdef"


@dataclass
class Outcome:
    """What a protocol answered: "ok" or the error's code, the answer's body, and HTTP headers if any."""

    code: str
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return json.dumps(self.body, default=str)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(tenant: str = "tenant-a", **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "openclaw",
        "aud": "openclaw-api",
        "sub": "mallory",
        "tenant": tenant,
        "roles": ["admin"],
    }
    return {**claims, "iat": now, "nbf": now, "exp": now + 600, **over}


def _hs256(claims: dict[str, Any], key: bytes = SECRET.encode(), alg: str = "HS256") -> str:
    """A token signed by hand (PyJWT refuses to HMAC with a PEM key, which is the point of one attack)."""
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


def bad_tokens(rsa_private: rsa.RSAPrivateKey) -> dict[str, str | None]:
    """Every forged or invalid credential, by name (None: no credential at all)."""
    now = int(time.time())
    valid = token("tenant-a", "admin")
    head, body, sig = valid.split(".")
    swapped = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    swapped["tenant"] = "tenant-b"
    public_pem = rsa_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "missing": None,
        "garbage": "not-a-jwt",
        "forged": mint_token("another-secret-nobody-configured-0123456789", tenant="tenant-a"),
        "tampered": f"{head}.{_b64(json.dumps(swapped).encode())}.{sig}",
        "expired": _hs256(_claims(iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
        "not_yet_valid": _hs256(_claims(nbf=now + 3600, exp=now + 7200)),
        "wrong_audience": _hs256(_claims(aud="another-api")),
        "wrong_issuer": _hs256(_claims(iss="evil-idp")),
        "no_tenant": _hs256({k: v for k, v in _claims().items() if k != "tenant"}),
        "alg_none": f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(_claims()).encode())}.",
        "rs256_on_an_hs_gateway": jwt.encode(_claims(), rsa_private, algorithm="RS256"),
        "hs256_keyed_with_a_public_key": _hs256(_claims(), key=public_pem),
        "unknown_api_key": "ock_0123456789abcdef_" + "A" * 43,
    }


class Client:
    """One protocol's view of the task API; every answer reduced to an Outcome."""

    name = ""

    async def call(self, op: str, auth: str | None, **args: Any) -> Outcome:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class HttpClient(Client):
    name = "http"

    def __init__(self, app: GatewayApp) -> None:
        self.session = aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}")

    async def call(self, op: str, auth: str | None, **args: Any) -> Outcome:
        headers = _headers(auth)
        task_id = args.get("task_id", "")
        if op == "submit":
            raw = args.get("raw")
            data = raw if raw is not None else json.dumps({"workflow": args.get("workflow", WORKFLOW)})
            request = self.session.post(
                "/v1/tasks", data=data, headers={**headers, "Content-Type": "application/json"}
            )
        elif op == "get":
            request = self.session.get(f"/v1/tasks/{task_id}", headers=headers)
        elif op == "cancel":
            request = self.session.post(f"/v1/tasks/{task_id}/cancel", headers=headers)
        elif op == "watch":
            request = self.session.get(f"/v1/tasks/{task_id}/events", headers=headers)
        else:
            request = self.session.post(f"/v1/tasks/{task_id}/signals/go", json={"x": 1}, headers=headers)
        async with request as resp:
            out_headers = {k.lower(): v for k, v in resp.headers.items()}
            if resp.status < 300:
                body = await resp.json() if op != "watch" else (await resp.content.readline()).decode()
                return Outcome("ok", body, out_headers)
            body = await resp.json()
            return Outcome(body["error"]["code"], body, out_headers)

    async def close(self) -> None:
        await self.session.close()


class WebSocketClient(Client):
    name = "websocket"

    def __init__(self, app: GatewayApp) -> None:
        self.url = f"ws://127.0.0.1:{app.http_port}/v1/ws"

    async def call(self, op: str, auth: str | None, **args: Any) -> Outcome:
        try:
            async with websockets.connect(self.url, additional_headers=_headers(auth), max_size=None) as ws:
                if auth is None:  # no credentials: send the request as if authentication were optional
                    await ws.send(json.dumps({"type": "get", "id": "r1", "task_id": MISSING_TASK}))
                first = json.loads(await ws.recv())
                if first["type"] == "error":
                    return Outcome(first["error"]["code"], first)
                raw = args.get("raw")
                if op == "signal":
                    op = "get"  # WebSocket has no signal frame: reading is the closest attack
                if raw is None:
                    frame: dict[str, Any] = {"type": op, "id": "r1"}
                    if op == "submit":
                        frame["task"] = {"workflow": args.get("workflow", WORKFLOW)}
                    else:
                        frame["task_id"] = args["task_id"]
                    raw = json.dumps(frame)
                await ws.send(raw)
                reply = json.loads(await ws.recv())
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 0
            return Outcome({1009: "payload_too_large"}.get(code, f"closed_{code}"))
        if reply["type"] == "error":
            return Outcome(reply["error"]["code"], reply)
        return Outcome("ok", reply)


class MqttClient(Client):
    name = "mqtt"

    def __init__(self, app: GatewayApp) -> None:
        self.prefix = app.settings.mqtt_topic_prefix
        self.reply_to = f"{self.prefix}-replies/{uuid.uuid4().hex}"
        self.client = aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5)

    async def open(self) -> None:
        await self.client.__aenter__()
        await self.client.subscribe(self.reply_to, qos=1)

    async def call(self, op: str, auth: str | None, **args: Any) -> Outcome:
        if op not in ("submit", "get", "cancel"):
            op = "get"  # MQTT has no watch or signal: reading is the closest attack
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_to
        correlation = uuid.uuid4().bytes
        props.CorrelationData = correlation
        if auth is not None:
            props.UserProperty = [(key.lower(), value) for key, value in _headers(auth).items()]
        raw = args.get("raw")
        if raw is None:
            doc = (
                {"task": {"workflow": args.get("workflow", WORKFLOW)}}
                if op == "submit"
                else {"task_id": args["task_id"]}
            )
            raw = json.dumps(doc)
        tenant = args.get("topic_tenant") or _token_tenant(auth)
        await self.client.publish(f"{self.prefix}/{tenant}/tasks/{op}", raw, qos=1, properties=props)
        async for message in self.client.messages:
            if getattr(message.properties, "CorrelationData", None) != correlation:
                continue
            body = json.loads(bytes(message.payload))  # type: ignore[arg-type,unused-ignore]
            if "error" in body:
                return Outcome(body["error"]["code"], body)
            return Outcome("ok", body)
        raise AssertionError("the MQTT client's message stream ended")

    async def close(self) -> None:
        await self.client.__aexit__(None, None, None)


class GrpcClient(Client):
    name = "grpc"

    def __init__(self, app: GatewayApp) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        self.stub = gateway_pb2_grpc.TaskServiceStub(self.channel)

    async def call(self, op: str, auth: str | None, **args: Any) -> Outcome:
        metadata = [(k.lower(), v) for k, v in _headers(auth).items()]
        task_id = args.get("task_id", "")
        try:
            if op == "submit":
                raw = args.get("raw")
                workflow_json = raw if raw is not None else json.dumps(args.get("workflow", WORKFLOW))
                request = gateway_pb2.SubmitTaskRequest(workflow_json=workflow_json)
                task = await self.stub.Submit(request, metadata=metadata, timeout=10)
            elif op == "cancel":
                task = await self.stub.Cancel(
                    gateway_pb2.CancelTaskRequest(task_id=task_id), metadata=metadata, timeout=10
                )
            elif op == "watch":
                call = self.stub.Watch(
                    gateway_pb2.WatchTaskRequest(task_id=task_id), metadata=metadata, timeout=10
                )
                event = await call.read()
                call.cancel()
                return Outcome("ok", str(event))
            else:  # get; gRPC has no signal call: reading is the closest attack
                task = await self.stub.Get(
                    gateway_pb2.GetTaskRequest(task_id=task_id), metadata=metadata, timeout=10
                )
        except grpc.aio.AioRpcError as exc:
            wire = _wire_error(exc)  # the gateway's own error code, as every protocol reports it
            err = rpc.error_from_rpc(exc)
            code = wire.get("code", err.code)
            return Outcome(code, {"message": err.message, "status": exc.code().name, "details": err.details})
        return Outcome("ok", {"id": task.id, "tenant": task.tenant, "status": task.status})

    async def close(self) -> None:
        await self.channel.close(None)


def _wire_error(exc: grpc.aio.AioRpcError) -> dict[str, Any]:
    for item in exc.trailing_metadata() or ():
        key, value = str(item[0]), item[1]  # type: ignore[index]
        if key == rpc._ERROR_KEY:
            data: dict[str, Any] = json.loads(value if isinstance(value, str) else bytes(value).decode())
            return data
    return {}


def _token_tenant(auth: str | None) -> str:
    """The tenant a JWT names (unverified: it only picks the MQTT topic), else tenant-a."""
    if auth is None or auth.startswith("key:") or auth.startswith("ock_"):
        return "tenant-a"
    try:
        return str(jwt.decode(auth, options={"verify_signature": False}).get("tenant", "tenant-a"))
    except jwt.PyJWTError:
        return "tenant-a"


def _headers(auth: str | None) -> dict[str, str]:
    if auth is None:
        return {}
    if auth.startswith("key:"):
        return {"X-API-Key": auth.removeprefix("key:")}
    return {"Authorization": f"Bearer {auth}"}


@pytest.fixture
async def app(start: Start) -> GatewayApp:  # noqa: F811
    return await start(mqtt_url="mqtt://127.0.0.1:1883")


@pytest.fixture(params=PROTOCOLS)
async def client(request: pytest.FixtureRequest, app: GatewayApp) -> AsyncIterator[Client]:
    kind: str = request.param
    made: Client
    if kind == "http":
        made = HttpClient(app)
    elif kind == "websocket":
        made = WebSocketClient(app)
    elif kind == "mqtt":
        made = MqttClient(app)
        await made.open()
    else:
        made = GrpcClient(app)
    yield made
    await made.close()


@pytest.fixture
async def http(app: GatewayApp) -> AsyncIterator[HttpClient]:
    made = HttpClient(app)
    yield made
    await made.close()


async def _still_serves(client: Client) -> None:
    """The attack left the gateway able to serve a valid request on the same protocol."""
    outcome = await client.call("submit", token("tenant-a"))
    assert outcome.code == "ok", outcome.text


# --- authentication ------------------------------------------------------------------------------------


async def test_bad_credentials_are_refused_as_unauthenticated(
    client: Client,
    http: HttpClient,
    rsa_key: rsa.RSAPrivateKey,  # noqa: F811
) -> None:
    revoked = await _api_key(http, "tenant-a")
    await _revoke(http, "tenant-a", revoked)
    cases = {**bad_tokens(rsa_key), "revoked_api_key": f"key:{revoked['key']}"}
    for name, auth in cases.items():
        for op in ("submit", "get"):
            outcome = await client.call(op, auth, task_id=MISSING_TASK)
            assert outcome.code == "unauthenticated", f"{client.name} {op} with {name}: {outcome.text}"
            assert SECRET not in outcome.text
    await _still_serves(client)


async def test_an_algorithm_confused_token_is_refused_by_a_jwks_gateway(
    start: Start,  # noqa: F811
    rsa_key: rsa.RSAPrivateKey,  # noqa: F811
    tmp_path: Any,
) -> None:
    keys = jwks_file(tmp_path / "jwks.json", rsa_key)
    app = await start(jwt_algorithms=["RS256"], jwks_file=keys, jwt_secret=SecretStr(""))
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confused = _hs256(_claims(), key=public_pem)  # the public key used as an HMAC secret
    for made in (HttpClient(app), GrpcClient(app)):
        try:
            outcome = await made.call("get", confused, task_id=MISSING_TASK)
            assert outcome.code == "unauthenticated", outcome.text
            assert "algorithm" in outcome.text
        finally:
            await made.close()


# --- isolation -----------------------------------------------------------------------------------------


async def test_a_tenant_cannot_read_cancel_watch_or_signal_another_tenants_task(
    client: Client, http: HttpClient
) -> None:
    victim = await http.call("submit", token("tenant-b"))
    assert victim.code == "ok", victim.text
    task_id = victim.body["id"]
    attacker = token("tenant-a", "admin")
    for op in ("get", "cancel", "watch", "signal"):
        outcome = await client.call(op, attacker, task_id=task_id)
        assert outcome.code == "not_found", f"{client.name} {op}: {outcome.text}"
        assert "tenant-b" not in outcome.text
    after = await http.call("get", token("tenant-b"), task_id=task_id)
    assert after.body["status"] == "queued" and after.body["cancel_requested"] is False
    await _still_serves(client)


async def test_an_mqtt_topic_naming_another_tenant_is_refused(app: GatewayApp) -> None:
    made = MqttClient(app)
    await made.open()
    try:
        outcome = await made.call("submit", token("tenant-a"), topic_tenant="tenant-b")
        assert outcome.code == "permission_denied", outcome.text
    finally:
        await made.close()


async def test_a_tenant_cannot_list_or_revoke_another_tenants_keys_or_read_its_audit(
    http: HttpClient, app: GatewayApp
) -> None:
    b_key = await _api_key(http, "tenant-b")
    await _api_key(http, "tenant-a")
    a_admin = bearer("tenant-a", "admin")
    async with http.session.get("/v1/apikeys", headers=a_admin) as resp:
        listed = await resp.json()
    assert b_key["id"] not in json.dumps(listed) and len(listed["keys"]) == 1
    async with http.session.delete(f"/v1/apikeys/{b_key['id']}", headers=a_admin) as resp:
        assert resp.status == 404  # the same answer as for a key that does not exist
        assert "tenant-b" not in await resp.text()
    assert (await http.call("submit", f"key:{b_key['key']}")).code == "ok"  # B's key still works
    async with http.session.get("/v1/audit?limit=1000", headers=a_admin) as resp:
        records = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert records and all(r["tenant"] == "tenant-a" for r in records)
    assert "tenant-b" not in json.dumps(records)
    # B's key id appears only where A named it, in A's own refused revoke.
    naming = [r for r in records if b_key["id"] in json.dumps(r)]
    assert [(r["action"], r["outcome"]) for r in naming] == [("apikeys.revoke", "not_found")]


# --- bad JSON ------------------------------------------------------------------------------------------


def _deep(levels: int) -> str:
    return '{"name": "deep", "steps": [], "x": ' + "[" * levels + "]" * levels + "}"


async def test_deeply_nested_json_is_refused_naming_the_depth(client: Client) -> None:
    doc = _deep(200)
    raw = {
        "http": '{"workflow": ' + doc + "}",
        "websocket": '{"type": "submit", "id": "r1", "task": {"workflow": ' + doc + "}}",
        "mqtt": '{"task": {"workflow": ' + doc + "}}",
        "grpc": doc,
    }[client.name]
    outcome = await client.call("submit", token("tenant-a"), raw=raw)
    assert outcome.code == "invalid_input", outcome.text
    assert "nested too deeply" in outcome.text
    await _still_serves(client)


async def test_an_oversized_request_is_refused(client: Client) -> None:
    padding = "x" * (
        2 * 1024 * 1024 if client.name == "websocket" else 100 * 1024
    )  # over each protocol's limit
    doc = json.dumps({"name": "big", "steps": [], "description": padding})
    raw = {
        "http": '{"workflow": ' + doc + "}",
        "websocket": '{"type": "submit", "id": "r1", "task": {"workflow": ' + doc + "}}",
        "mqtt": '{"task": {"workflow": ' + doc + "}}",
        "grpc": doc,
    }[client.name]
    outcome = await client.call("submit", token("tenant-a"), raw=raw)
    expected = "resource_exhausted" if client.name == "grpc" else "payload_too_large"
    assert outcome.code == expected, outcome.text
    await _still_serves(client)


# --- floods --------------------------------------------------------------------------------------------


async def test_a_flood_past_the_rate_limit_gets_a_typed_refusal(client: Client) -> None:
    flood = token("tiny")  # 3 requests a minute, 3 at once
    outcomes = [await client.call("get", flood, task_id=MISSING_TASK) for _ in range(4)]
    assert [o.code for o in outcomes] == ["not_found"] * 3 + ["rate_limited"], [o.text for o in outcomes]
    refused = outcomes[-1]
    if client.name == "http":
        assert int(refused.headers["retry-after"]) >= 1 and refused.headers["ratelimit-remaining"] == "0"
    elif client.name == "grpc":
        assert refused.body["status"] == "RESOURCE_EXHAUSTED"
    else:
        assert refused.body["error"]["details"]["retry_after"] >= 1
    await _still_serves(client)  # other tenants are not held back by tiny's flood


# --- helpers -------------------------------------------------------------------------------------------


async def _api_key(http: HttpClient, tenant: str) -> dict[str, Any]:
    async with http.session.post("/v1/apikeys", json={"name": "k"}, headers=bearer(tenant, "admin")) as resp:
        assert resp.status == 201, await resp.text()
        created: dict[str, Any] = await resp.json()
        return created


async def _revoke(http: HttpClient, tenant: str, key: dict[str, Any]) -> None:
    async with http.session.delete(f"/v1/apikeys/{key['id']}", headers=bearer(tenant, "admin")) as resp:
        assert resp.status == 204


# --- the same governance on every protocol -------------------------------------------------------------


async def test_api_keys_work_and_requests_are_audited_on_every_protocol(
    client: Client, http: HttpClient, app: GatewayApp
) -> None:
    key = await _api_key(http, "tenant-a")
    submitted = await client.call("submit", f"key:{key['key']}")
    assert submitted.code == "ok", submitted.text
    denied = await client.call("submit", token("tenant-a", "viewer"))
    assert denied.code == "permission_denied", denied.text
    assert app.audit is not None
    await app.audit.flush()
    records = [r async for r in app.audit.records("tenant-a")]
    mine = [r for r in records if r["details"]["protocol"] == client.name and r["action"] == "tasks.submit"]
    assert [(r["action"], r["outcome"], r["actor"]) for r in mine] == [
        ("tasks.submit", "ok", f"apikey:{key['id']}"),
        ("tasks.submit", "permission_denied", "user-of-tenant-a"),
    ]
    assert mine[0]["resource"].startswith("task:") and key["key"] not in json.dumps(records)


async def test_a_grpc_watch_holds_one_of_the_tenants_stream_slots(
    app: GatewayApp, http: HttpClient, redis: Redis
) -> None:
    task = await http.call("submit", token("tiny"))
    assert task.code == "ok", task.text
    made = GrpcClient(app)
    md = [("authorization", f"Bearer {token('tiny')}")]
    request = gateway_pb2.WatchTaskRequest(task_id=task.body["id"])
    first = made.stub.Watch(request, metadata=md, timeout=30)
    try:
        await until(lambda: slot_count(redis, app, "streams", "tiny"), 1)  # the first watch holds its slot
        second = made.stub.Watch(request, metadata=md, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await second.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1 concurrent streams" in _wire_error(refused.value)["message"]
    finally:
        first.cancel()
        await made.close()
    await until(lambda: slot_count(redis, app, "streams", "tiny"), 0)  # released when the client goes
