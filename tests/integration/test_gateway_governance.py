"""Governance at the gateway, wired: roles, tenant policies, the admin API, API keys, audit, limits, shedding,
JWKS keys; against the real RabbitMQ, Redis, router and simulator."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import websockets
from aio_pika.abc import AbstractRobustConnection
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import REGISTRY
from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis

from services.common.audit import AuditEvent, AuditLog
from services.common.settings import DEV_AUDIT_KEY
from services.common.tenants import TenantDirectory
from services.common.topology import Topology
from services.gateway import GatewayApp, GatewaySettings, build, mint_token
from services.gateway.access import Authenticator, Gate
from services.gateway.auth import Principal, TokenVerifier
from services.gateway.limits import RouteLimits, SlotPool
from tests.integration.test_gateway import (  # noqa: F401
    MODEL,
    SECRET,
    WORKFLOW,
    router_addr,
)

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "platform-admin-token-0123456789abcdef"
TENANTS = {
    "tenants": {
        "tenant-a": {},
        "tenant-b": {},
        "limited": {"models": ["gpt-4-mini"], "operations": ["json_transform"]},
        "chatty": {"log_prompts": True},
        "tiny": {
            "quotas": {
                "requests_per_minute": 3,
                "burst": 3,
                "max_concurrent_streams": 1,
                "max_websocket_connections": 1,
            }
        },
        "off": {"disabled": True},
    }
}
Start = Callable[..., Awaitable[GatewayApp]]


def token(tenant: str = "tenant-a", *roles: str, secret: str = SECRET) -> str:
    return mint_token(secret, tenant=tenant, subject=f"user-of-{tenant}", roles=roles or ("operator",))


def bearer(tenant: str = "tenant-a", *roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(tenant, *roles)}"}


@pytest.fixture
def tenants_file(tmp_path: Path) -> Path:
    path = tmp_path / "tenants.yaml"
    path.write_text(json.dumps(TENANTS))  # JSON is YAML
    return path


@pytest.fixture
async def start(
    namespace: str,
    rabbitmq_url: str,
    redis_url: str,
    router_addr: str,  # noqa: F811
    topology: Topology,
    amqp: AbstractRobustConnection,
    redis: Redis,
    tenants_file: Path,
) -> AsyncIterator[Start]:
    """Start gateways with the test's tenants (closed mode) and the platform admin token; stops them all."""
    apps: list[GatewayApp] = []

    async def start(**overrides: Any) -> GatewayApp:
        settings: dict[str, Any] = {
            "env": "test",
            "namespace": namespace,
            "amqp_url": rabbitmq_url,
            "redis_url": redis_url,
            "router_addr": router_addr,
            "jwt_secret": SecretStr(SECRET),
            "http_port": 0,
            "grpc_port": 0,
            "max_body_bytes": 64 * 1024,
            "drain_seconds": 2,
            "tenants_file": tenants_file,
            "tenants_mode": "closed",
            "admin_token": SecretStr(ADMIN_TOKEN),
            "mqtt_share_group": f"g{namespace}",
            "mqtt_topic_prefix": namespace,
            **overrides,
        }
        app = build(GatewaySettings(**settings), topology=topology)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        await app.stop()


@pytest.fixture
async def gateway(start: Start) -> GatewayApp:
    return await start()


@pytest.fixture
async def http(gateway: GatewayApp) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{gateway.http_port}") as session:
        yield session


async def submit(
    http: aiohttp.ClientSession, tenant: str = "tenant-a", workflow: Any = None
) -> dict[str, Any]:
    async with http.post(
        "/v1/tasks", json={"workflow": workflow or WORKFLOW}, headers=bearer(tenant)
    ) as resp:
        assert resp.status == 202, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def audit_records(app: GatewayApp, tenant: str) -> list[dict[str, Any]]:
    assert app.audit is not None
    await app.audit.flush()
    return [record async for record in app.audit.records(tenant)]


# --- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"jwt_algorithms": ["none"]}, "OPENCLAW_JWT_ALGORITHMS"),
        ({"jwt_algorithms": ["HS256", "RS256"]}, "cannot be mixed"),
        ({"jwt_algorithms": ["RS256"]}, "OPENCLAW_JWKS_URL or OPENCLAW_JWKS_FILE"),
        ({"jwks_url": "ftp://keys"}, "jwks_url"),
        ({"tenants_file": "/nonexistent/tenants.yaml"}, "tenants_file"),
        ({"tenants_mode": "ajar"}, "tenants_mode"),
        ({"auth_default_roles": ["root"]}, "auth_default_roles"),
        ({"OPENCLAW_GATEWAY_ADMIN_TOKEN": "short"}, "OPENCLAW_GATEWAY_ADMIN_TOKEN"),
        ({"OPENCLAW_GATEWAY_MAX_JSON_DEPTH": 1000}, "OPENCLAW_GATEWAY_MAX_JSON_DEPTH"),
        ({"api_key_requests_per_minute": -1}, "api_key_requests_per_minute"),
        ({"OPENCLAW_GATEWAY_SHED_QUEUE_DEPTH": -5}, "OPENCLAW_GATEWAY_SHED_QUEUE_DEPTH"),
    ],
)
def test_a_bad_governance_setting_stops_start_up_naming_it(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        GatewaySettings(env="test", jwt_secret=SecretStr(SECRET), **overrides)


def test_a_tenants_file_with_a_bad_policy_is_refused_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  acme:\n    quotas: {requests_per_minute: 0}\n")
    with pytest.raises(ValidationError, match=r"quotas\.requests_per_minute"):
        GatewaySettings(env="test", jwt_secret=SecretStr(SECRET), tenants_file=path)


# --- roles and tenants ---------------------------------------------------------------------------------


async def test_roles_grant_exactly_their_permissions(http: aiohttp.ClientSession) -> None:
    task = await submit(http)
    viewer = bearer("tenant-a", "viewer")
    async with http.get(f"/v1/tasks/{task['id']}", headers=viewer) as resp:
        assert resp.status == 200
    async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=viewer) as resp:
        assert resp.status == 403
        error = (await resp.json())["error"]
        assert error["code"] == "permission_denied" and error["details"]["permission"] == "tasks.write"
    async with http.post(f"/v1/tasks/{task['id']}/cancel", headers=viewer) as resp:
        assert resp.status == 403
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post("/v1/chat/completions", json=chat, headers=viewer) as resp:
        assert resp.status == 403
    for path in ("/v1/apikeys", "/v1/audit"):
        async with http.get(path, headers=bearer("tenant-a", "operator")) as resp:
            assert resp.status == 403, path
        async with http.get(path, headers=bearer("tenant-a", "admin")) as resp:
            assert resp.status == 200, path
    async with http.post(f"/v1/tasks/{task['id']}/cancel", headers=bearer("tenant-a", "operator")) as resp:
        assert resp.status == 200


async def test_tokens_without_roles_get_the_default_roles(start: Start) -> None:
    app = await start(auth_default_roles=["viewer"])
    no_roles = {"Authorization": f"Bearer {mint_token(SECRET, tenant='tenant-a')}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=no_roles) as resp:
            assert resp.status == 403
        async with http.get("/v1/tasks/0123456789abcdef0123456789abcdef", headers=no_roles) as resp:
            assert resp.status == 404  # viewers may read


async def test_unknown_and_disabled_tenants_are_refused_in_closed_mode(http: aiohttp.ClientSession) -> None:
    for tenant, why in (("stranger", "not registered"), ("off", "disabled")):
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=bearer(tenant)) as resp:
            assert resp.status == 403
            assert why in (await resp.json())["error"]["message"]


async def test_every_operation_of_a_workflow_must_be_allowed_nested_ones_included(
    http: aiohttp.ClientSession,
) -> None:
    pick = {"type": "json_transform", "params": {"expression": "a", "input": {"a": 1}}}
    fetch = {"type": "http_request", "params": {"url": "https://example.com"}}
    ask = {"type": "llm_call", "params": {"model": MODEL, "prompt": "hi"}}
    workflow = {
        "name": "nested",
        "steps": [
            pick,
            {"type": "foreach", "items": [1, 2], "steps": [fetch]},
            {
                "type": "parallel",
                "branches": [[pick], [{"type": "workflow", "workflow": {"name": "s", "steps": [ask]}}]],
            },
        ],
    }
    async with http.post("/v1/tasks", json={"workflow": workflow}, headers=bearer("limited")) as resp:
        assert resp.status == 403
        error = (await resp.json())["error"]
    assert error["details"]["operations"] == ["http_request", "llm_call"]
    assert "http_request, llm_call" in error["message"]
    await submit(http, "limited", {"name": "fine", "steps": [pick]})
    await submit(http, "tenant-a", workflow)  # the default policy allows every operation


async def test_chat_embeddings_and_models_follow_the_tenants_model_list(http: aiohttp.ClientSession) -> None:
    chat = {"model": "claude-3", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post("/v1/chat/completions", json=chat, headers=bearer("limited")) as resp:
        assert resp.status == 403
        assert "'claude-3' is not allowed" in (await resp.json())["error"]["message"]
    async with http.post(
        "/v1/chat/completions", json={**chat, "model": MODEL}, headers=bearer("limited")
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert int(resp.headers["RateLimit-Remaining"]) >= 0
    embed = {"model": "claude-3", "input": "hi"}
    async with http.post("/v1/embeddings", json=embed, headers=bearer("limited")) as resp:
        assert resp.status == 403
    async with http.get("/v1/models", headers=bearer("limited")) as resp:
        names = [m["id"] for m in (await resp.json())["data"]]
    assert names == [MODEL]
    async with http.get("/v1/models/claude-3", headers=bearer("limited")) as resp:
        assert resp.status == 404


# --- the platform admin API ----------------------------------------------------------------------------


async def test_platform_admin_manages_tenants_and_tenants_cannot(http: aiohttp.ClientSession) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    policy = {"models": ["gpt-4-mini"], "quotas": {"requests_per_minute": 100}}
    async with http.put("/v1/admin/tenants/newco", json=policy, headers=admin) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["policy"]["quotas"]["requests_per_minute"] == 100
    await submit(http, "newco")  # known at once on this replica
    async with http.put("/v1/admin/tenants/newco", json={"quotas": {"burst": -1}}, headers=admin) as resp:
        assert resp.status == 400
        assert "quotas.burst" in (await resp.json())["error"]["message"]
    async with http.get("/v1/admin/tenants", headers=admin) as resp:
        listed = {t["id"]: t["source"] for t in (await resp.json())["tenants"]}
    assert listed["newco"] == "admin" and listed["tenant-a"] == "config"
    async with http.get("/v1/admin/tenants/tenant-a", headers=bearer("tenant-a", "admin")) as resp:
        assert resp.status == 401  # a tenant's token is not the platform admin token
    async with http.get("/v1/admin/tenants", headers={"Authorization": "Bearer " + "x" * 40}) as resp:
        assert resp.status == 401
    async with http.delete("/v1/admin/tenants/newco", headers=admin) as resp:
        assert resp.status == 204
    async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=bearer("newco")) as resp:
        assert resp.status == 403
    async with http.delete("/v1/admin/tenants/newco", headers=admin) as resp:
        assert resp.status == 404


async def test_the_tenant_admin_api_is_off_without_an_admin_token(start: Start) -> None:
    app = await start(admin_token=None)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http,
        http.get("/v1/admin/tenants", headers=admin) as resp,
    ):
        assert resp.status == 403
        assert "OPENCLAW_GATEWAY_ADMIN_TOKEN" in (await resp.json())["error"]["message"]


# --- API keys ------------------------------------------------------------------------------------------


async def test_api_keys_are_shown_once_work_on_both_headers_and_stop_when_revoked(
    http: aiohttp.ClientSession, redis: Redis, namespace: str
) -> None:
    admin = bearer("tenant-a", "admin")
    async with http.post("/v1/apikeys", json={"name": "ci", "roles": ["operator"]}, headers=admin) as resp:
        assert resp.status == 201, await resp.text()
        created = await resp.json()
    key = created["key"]
    assert key.startswith(created["prefix"])
    async with http.get("/v1/apikeys", headers=admin) as resp:
        listed = (await resp.json())["keys"]
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    assert key not in json.dumps(listed)
    stored = [v async for v in redis.scan_iter(match=f"{namespace}:apikey*")]
    for name in stored:
        dump = await redis.hgetall(name) if await redis.type(name) == "hash" else {}  # type: ignore[misc]
        assert key not in json.dumps(dump)  # only the hash is stored
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=headers) as resp:
            assert resp.status == 202, await resp.text()
    async with http.get("/v1/apikeys", headers={"X-API-Key": key}) as resp:
        assert resp.status == 403  # an operator key cannot manage keys
    async with http.delete(f"/v1/apikeys/{created['id']}", headers=admin) as resp:
        assert resp.status == 204
    async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers={"X-API-Key": key}) as resp:
        assert resp.status == 401
        assert "unknown or revoked" in (await resp.json())["error"]["message"]


async def test_api_key_creation_refuses_bad_fields_by_name(http: aiohttp.ClientSession) -> None:
    admin = bearer("tenant-a", "admin")
    for body, field in (
        ({"name": ""}, "name"),
        ({"name": "x", "roles": ["root"]}, "roles"),
        ({"name": 5}, "name"),
    ):
        async with http.post("/v1/apikeys", json=body, headers=admin) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["details"]["field"] == field


async def test_api_keys_can_be_turned_off(start: Start) -> None:
    app = await start(api_keys_enabled=False)
    assert app.api_keys is None
    fake = "ock_0123456789abcdef_" + "a" * 43
    async with (
        aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http,
        http.get("/v1/tasks/x", headers={"X-API-Key": fake}) as resp,
    ):
        assert resp.status == 401
        assert "not accepted" in (await resp.json())["error"]["message"]


# --- audit ---------------------------------------------------------------------------------------------


async def test_every_request_is_audited_without_secrets_and_tenants_read_only_their_own(
    gateway: GatewayApp, http: aiohttp.ClientSession, redis: Redis
) -> None:
    task = await submit(http)
    async with http.get(f"/v1/tasks/{task['id']}", headers=bearer("tenant-a", "viewer")) as resp:
        assert resp.status == 200
    async with http.post(
        "/v1/tasks", json={"workflow": WORKFLOW}, headers=bearer("tenant-a", "viewer")
    ) as resp:
        assert resp.status == 403
    async with http.get(f"/v1/tasks/{task['id']}", headers=bearer("tenant-b")) as resp:
        assert resp.status == 404
    records = await audit_records(gateway, "tenant-a")
    seen = [(r["action"], r["resource"], r["outcome"], r["actor"]) for r in records]
    assert seen[:3] == [
        ("tasks.submit", f"task:{task['id']}", "ok", "user-of-tenant-a"),
        ("tasks.get", f"task:{task['id']}", "ok", "user-of-tenant-a"),
        ("tasks.submit", "", "permission_denied", "user-of-tenant-a"),
    ]
    assert all(r["details"]["protocol"] == "http" and r["service"] == "gateway" for r in records)
    dump = json.dumps(records)
    assert SECRET not in dump and "Bearer" not in dump
    b_records = await audit_records(gateway, "tenant-b")
    assert [(r["action"], r["outcome"]) for r in b_records] == [("tasks.get", "not_found")]
    # Tenants read their own chain through the API, paged, as JSON lines.
    async with http.get("/v1/audit?limit=2", headers=bearer("tenant-a", "admin")) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
        page = [json.loads(line) for line in (await resp.text()).splitlines()]
        cursor = resp.headers["OpenClaw-Next-After"]
    assert [r["seq"] for r in page] == [1, 2]
    async with http.get(f"/v1/audit?after={cursor}&limit=1000", headers=bearer("tenant-a", "admin")) as resp:
        rest = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert rest[0]["seq"] == 3 and all(r["tenant"] == "tenant-a" for r in page + rest)
    async with http.get("/v1/audit?after=../../etc", headers=bearer("tenant-a", "admin")) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["details"]["field"] == "after"
    chain = AuditLog(redis, gateway.settings.namespace, DEV_AUDIT_KEY.encode())
    assert (await chain.verify("tenant-a")).ok  # the gateway's records form a valid hash chain


async def test_prompts_are_audited_only_when_the_tenants_policy_says_so(
    gateway: GatewayApp, http: aiohttp.ClientSession
) -> None:
    for tenant in ("tenant-a", "chatty"):
        chat = {"model": MODEL, "messages": [{"role": "user", "content": f"secret plans of {tenant}"}]}
        async with http.post("/v1/chat/completions", json=chat, headers=bearer(tenant)) as resp:
            assert resp.status == 200, await resp.text()
    (quiet,) = await audit_records(gateway, "tenant-a")
    (chatty,) = await audit_records(gateway, "chatty")
    assert quiet["details"]["model"] == MODEL and "messages" not in quiet["details"]
    assert "secret plans" not in json.dumps(quiet)
    assert chatty["details"]["messages"] == [{"role": "user", "content": "secret plans of chatty"}]


async def test_audit_can_be_turned_off(start: Start) -> None:
    app = await start(audit_enabled=False)
    assert app.audit is None
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
        await submit(http)
        async with http.get("/v1/audit", headers=bearer("tenant-a", "admin")) as resp:
            assert resp.status == 404


# --- rate limits, stream and connection limits, shedding ------------------------------------------------


async def test_a_flood_past_the_tenants_rate_gets_429_with_headers_and_spares_other_tenants(
    http: aiohttp.ClientSession,
) -> None:
    task = await submit(http, "tiny")
    statuses = []
    for _ in range(3):
        async with http.get(f"/v1/tasks/{task['id']}", headers=bearer("tiny")) as resp:
            statuses.append(resp.status)
            headers = resp.headers
    assert statuses == [200, 200, 429]
    assert int(headers["Retry-After"]) >= 1 and headers["RateLimit-Remaining"] == "0"
    assert headers["RateLimit-Limit"] == "3" and headers["RateLimit-Policy"] == "3;w=60"
    async with http.get(f"/v1/tasks/{task['id']}", headers=bearer("tenant-a")) as resp:
        assert resp.status == 404  # tiny's task is not tenant-a's
    async with http.get("/v1/models", headers=bearer("tenant-a")) as resp:
        assert resp.status == 200  # and tenant-a's budget is its own
        assert int(resp.headers["RateLimit-Remaining"]) > 500


async def test_api_keys_have_their_own_budget_when_configured(start: Start) -> None:
    app = await start(api_key_requests_per_minute=2, api_key_burst=2)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
        async with http.post("/v1/apikeys", json={"name": "k"}, headers=bearer("tenant-a", "admin")) as resp:
            key = (await resp.json())["key"]
        statuses = []
        for _ in range(3):
            async with http.get("/v1/models", headers={"X-API-Key": key}) as resp:
                statuses.append(resp.status)
        assert statuses == [200, 200, 429]
        async with http.get("/v1/models", headers=bearer("tenant-a")) as resp:
            assert resp.status == 200  # the tenant's own budget is far from spent


async def test_concurrent_streams_are_limited_per_tenant(
    gateway: GatewayApp, http: aiohttp.ClientSession, redis: Redis
) -> None:
    task = await submit(http, "tiny")
    async with http.get(f"/v1/tasks/{task['id']}/events", headers=bearer("tiny")) as first:
        assert first.status == 200
        await first.content.readline()  # the stream is open
        ws_url = f"ws://127.0.0.1:{gateway.http_port}/v1/ws"
        async with websockets.connect(ws_url, additional_headers=bearer("tiny")) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "watch", "id": "w", "task_id": task["id"]}))
            frame = json.loads(await ws.recv())
    assert frame["type"] == "error" and frame["error"]["code"] == "resource_exhausted"
    assert "1 concurrent streams" in frame["error"]["message"]
    # The slot is released when the client goes away.
    await until(lambda: slot_count(redis, gateway, "streams", "tiny"), 0)


async def slot_count(redis: Redis, app: GatewayApp, kind: str, tenant: str) -> int:
    now_ms = int(time.time() * 1000)
    return int(await redis.zcount(f"{app.settings.namespace}:slots:{kind}:{tenant}", now_ms, "+inf"))


async def until(read: Callable[[], Awaitable[int]], want: int) -> None:
    """Poll until read() returns want (the test's own timeout bounds the wait)."""
    while True:
        if await read() == want:
            return
        await asyncio.sleep(0.02)


async def test_websocket_connections_are_limited_per_tenant(gateway: GatewayApp, redis: Redis) -> None:
    url = f"ws://127.0.0.1:{gateway.http_port}/v1/ws"
    async with websockets.connect(url, additional_headers=bearer("tiny")) as first:
        assert json.loads(await first.recv())["type"] == "ready"
        async with websockets.connect(url, additional_headers=bearer("tiny")) as second:
            frame = json.loads(await second.recv())
            assert frame["error"]["code"] == "resource_exhausted"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await second.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        async with websockets.connect(url, additional_headers=bearer("tenant-a")) as other:
            assert json.loads(await other.recv())["type"] == "ready"  # another tenant is unaffected
    await until(lambda: slot_count(redis, gateway, "websockets", "tiny"), 0)
    async with websockets.connect(url, additional_headers=bearer("tiny")) as again:
        assert json.loads(await again.recv())["type"] == "ready"


async def test_submits_are_shed_with_503_while_the_task_queue_is_deep(start: Start) -> None:
    app = await start(shed_queue_depth=2, shed_check_seconds=0)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
        await submit(http)
        await submit(http)  # no executor consumes: the queue is now 2 deep
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=bearer()) as resp:
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
            assert "task queue is 2 deep" in (await resp.json())["error"]["message"]
        async with http.get("/v1/models", headers=bearer()) as resp:
            assert resp.status == 200  # only submits are shed


async def test_a_route_class_at_its_concurrency_limit_refuses_at_once(start: Start) -> None:
    app = await start(max_concurrent_reads=1)
    assert app.gate is not None
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
        task = await submit(http)
        waiting = asyncio.create_task(http.get(f"/v1/tasks/{task['id']}?wait=30", headers=bearer()))
        await until(lambda: _active(app), 1)
        async with http.get(f"/v1/tasks/{task['id']}", headers=bearer()) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            assert "limit of 1 concurrent read" in (await resp.json())["error"]["message"]
        async with http.post(f"/v1/tasks/{task['id']}/cancel", headers=bearer()) as resp:
            assert resp.status == 200  # another route class is not affected
        async with await waiting as resp:
            assert (await resp.json())["status"] == "cancelled"
    assert app.gate.routes.active("read") == 0


async def _active(app: GatewayApp) -> int:
    assert app.gate is not None
    return app.gate.routes.active("read")


# --- JWKS ----------------------------------------------------------------------------------------------


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_file(path: Path, key: rsa.RSAPrivateKey, kid: str = "k1") -> Path:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    path.write_text(json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "RS256"}]}))
    return path


def rs256(key: rsa.RSAPrivateKey, tenant: str = "tenant-a", kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"iss": "openclaw", "aud": "openclaw-api", "sub": "svc", "tenant": tenant}
    body["roles"] = ["operator"]
    body |= {"iat": now, "nbf": now, "exp": now + 600, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


async def test_jwks_keys_verify_rs256_tokens_and_refuse_hs_tokens(
    start: Start, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    keys = jwks_file(tmp_path / "jwks.json", rsa_key)
    app = await start(jwt_algorithms=["RS256"], jwks_file=keys, jwt_secret=SecretStr(""))
    async with aiohttp.ClientSession(f"http://127.0.0.1:{app.http_port}") as http:
        good = {"Authorization": f"Bearer {rs256(rsa_key)}"}
        async with http.post("/v1/tasks", json={"workflow": WORKFLOW}, headers=good) as resp:
            assert resp.status == 202, await resp.text()
        async with http.get("/v1/tasks/x", headers=bearer()) as resp:  # an HS256 token
            assert resp.status == 401
            assert "algorithm 'HS256' is not accepted" in (await resp.json())["error"]["message"]
        unknown = {"Authorization": f"Bearer {rs256(rsa_key, kid='k9')}"}
        async with http.get("/v1/tasks/x", headers=unknown) as resp:
            assert resp.status == 401


async def test_a_jwks_file_that_cannot_be_read_stops_start_up(start: Start, tmp_path: Path) -> None:
    bad = tmp_path / "jwks.json"
    bad.write_text('{"keys": []}')
    with pytest.raises(ValueError, match="non-empty 'keys'"):
        await start(jwt_algorithms=["RS256"], jwks_file=bad, jwt_secret=SecretStr(""))


async def test_a_stalled_audit_writer_never_hangs_a_request(redis: Redis, namespace: str) -> None:
    log = AuditLog(redis, namespace, DEV_AUDIT_KEY.encode(), max_pending=1)  # not started: nothing drains it
    await log.record(AuditEvent("tenant-a", "someone", "tasks.get"))  # the queue is now full
    gate = Gate(
        Authenticator(TokenVerifier(SECRET)),
        TenantDirectory(None, namespace),
        limiter=None,
        audit_log=log,
        slots=SlotPool(redis, namespace),
        routes=RouteLimits({}),
    )
    call = await gate.admit(Principal("tenant-a", "user", ("viewer",)), "tasks.get", protocol="http")
    dropped = _dropped()
    await call.finish()  # returns although the record found no room
    assert _dropped() == dropped + 1


def _dropped() -> float:
    return REGISTRY.get_sample_value("openclaw_gateway_audit_dropped_total") or 0.0


async def test_connection_limits_hold_across_replicas(start: Start) -> None:
    one, two = await start(), await start()  # two gateway replicas on the same Redis
    url = "ws://127.0.0.1:{}/v1/ws"
    async with websockets.connect(url.format(one.http_port), additional_headers=bearer("tiny")) as first:
        assert json.loads(await first.recv())["type"] == "ready"
        async with websockets.connect(url.format(two.http_port), additional_headers=bearer("tiny")) as second:
            frame = json.loads(await second.recv())
    assert frame["type"] == "error" and frame["error"]["code"] == "resource_exhausted"
