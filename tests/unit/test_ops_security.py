"""Operations' security limits: credential scopes and redirects, the S3 thread pool, file_read's ceiling,
IPv6 forms that embed an IPv4 address in the SSRF guard, and the bounded set of per-policy HTTP sessions."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import ValidationError

from services.common.errors import (
    PayloadTooLargeError,
    PermissionDeniedError,
    TimeoutError_,
    UnavailableError,
)
from services.common.tenants import NetworkPolicy
from services.executor.context import OpContext, OpServices
from services.executor.ops import catalogue, files
from services.executor.ops.http import HttpClient, is_public, tenant_network
from services.executor.settings import ExecutorSettings

TENANT = "acme"
SECRET = "ghp_OPERATOR_SECRET"


def ctx_for(root: Path, services: OpServices, tenant: str = TENANT) -> OpContext:
    return OpContext(tenant=tenant, task_id="t1", step_id="s1", services=services)


async def run(op: str, params: dict[str, Any], ctx: OpContext) -> Any:
    operation = catalogue()[op]
    return await operation.run(operation.params.model_validate(params), ctx)


def scoped(**scopes: str) -> dict[str, str]:
    """A bearer credential set with scopes, as the executor's settings store them (comma-separated)."""
    return {"bearer_token": SECRET, **scopes}


class Site:
    """A loopback site that records what it was sent; /redir/<target> redirects to <target>."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, str | None]] = []
        self.port = 0
        self.redirect_to: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            (request.host, request.path, request.headers.get("Authorization"), request.headers.get("X-Trace"))
        )
        if request.path == "/redir":
            raise web.HTTPFound(self.redirect_to)
        return web.json_response({"ok": True})


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    s = Site()
    app = web.Application()
    app.router.add_get("/{p}", s.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    s.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield s
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient(allow_private_network=True) as client:  # the site is on loopback
        yield client


def no_secret_anywhere(err: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    assert SECRET not in str(err) and SECRET not in repr(getattr(err, "details", ""))
    assert all(SECRET not in r.getMessage() and SECRET not in str(r.__dict__) for r in caplog.records)


# -- credential scopes ------------------------------------------------------------------------------------


def test_settings_accept_scope_lists_and_never_echo_secrets() -> None:
    settings = ExecutorSettings.model_validate(
        {
            "credentials": {
                "api": {"bearer_token": SECRET, "tenants": ["acme", "beta"], "hosts": ["API.Example.com."]},
                "s3": {"aws_access_key_id": "k", "aws_secret_access_key": SECRET, "buckets": ["reports"]},
            }
        }
    )
    assert settings.credentials["api"]["tenants"] == "acme,beta"
    assert settings.credentials["api"]["hosts"] == "api.example.com"
    assert settings.credentials["s3"]["buckets"] == "reports"
    for bad in ([], [""], ["a,b"], "", [1]):
        with pytest.raises(ValidationError, match="credential set 'api': tenants") as err:
            ExecutorSettings.model_validate(
                {"credentials": {"api": {"bearer_token": SECRET, "tenants": bad}}}
            )
        assert SECRET not in str(err.value)
    assert ExecutorSettings().s3_max_threads == 8


@pytest.mark.parametrize("op", ["http_request", "file_download"])
async def test_a_credential_set_is_refused_to_tenants_it_does_not_name(
    tmp_path: Path, site: Site, http: HttpClient, op: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    services = OpServices(
        storage_root=tmp_path, credentials={"github": scoped(tenants="beta,gamma")}, http=http
    )
    url = f"http://127.0.0.1:{site.port}/steal"
    with pytest.raises(PermissionDeniedError) as err:
        await run(op, {"url": url, "auth": "github"}, ctx_for(tmp_path, services))
    assert not err.value.retryable
    assert "credential set 'github'" in err.value.message and "tenant 'acme'" in err.value.message
    assert site.seen == []
    no_secret_anywhere(err.value, caplog)
    # A tenant it names may use it.
    await run(op, {"url": url, "auth": "github"}, ctx_for(tmp_path, services, tenant="beta"))
    assert site.seen[-1][2] == f"Bearer {SECRET}"


@pytest.mark.parametrize("op", ["http_request", "file_download"])
async def test_a_credential_set_is_sent_only_to_its_hosts(
    tmp_path: Path, site: Site, http: HttpClient, op: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    services = OpServices(
        storage_root=tmp_path, credentials={"github": scoped(hosts="api.example.test,LocalHost")}, http=http
    )
    ctx = ctx_for(tmp_path, services)
    with pytest.raises(PermissionDeniedError) as err:
        await run(op, {"url": f"http://127.0.0.1:{site.port}/x", "auth": "github"}, ctx)
    assert not err.value.retryable
    assert "credential set 'github'" in err.value.message and "host '127.0.0.1'" in err.value.message
    assert site.seen == []
    no_secret_anywhere(err.value, caplog)
    await run(op, {"url": f"http://LOCALHOST:{site.port}/x", "auth": "github"}, ctx)
    assert site.seen[-1][2] == f"Bearer {SECRET}"


@pytest.mark.parametrize("op", ["http_request", "file_download"])
async def test_credentials_are_dropped_when_a_redirect_leaves_the_origin(
    tmp_path: Path, site: Site, http: HttpClient, op: str
) -> None:
    services = OpServices(storage_root=tmp_path, credentials={"github": {"bearer_token": SECRET}}, http=http)
    ctx = ctx_for(tmp_path, services)
    params: dict[str, Any] = {"url": f"http://127.0.0.1:{site.port}/redir", "auth": "github"}
    site.redirect_to = f"http://localhost:{site.port}/landing"  # another host, same port
    await run(op, params, ctx)
    assert [(host.split(":")[0], path, auth) for host, path, auth, _ in site.seen] == [
        ("127.0.0.1", "/redir", f"Bearer {SECRET}"),
        ("localhost", "/landing", None),
    ]
    site.seen.clear()
    site.redirect_to = "/landing"  # same origin: still the credential's target
    await run(op, params, ctx)
    assert [auth for _, _, auth, _ in site.seen] == [f"Bearer {SECRET}"] * 2


async def test_a_callers_own_authorization_header_is_dropped_across_origins(
    tmp_path: Path, site: Site, http: HttpClient
) -> None:
    ctx = ctx_for(tmp_path, OpServices(storage_root=tmp_path, http=http))
    site.redirect_to = f"http://localhost:{site.port}/landing"
    headers = {"authorization": "Bearer mine", "X-Trace": "t-1"}
    await run("http_request", {"url": f"http://127.0.0.1:{site.port}/redir", "headers": headers}, ctx)
    assert [(auth, trace) for _, _, auth, trace in site.seen] == [("Bearer mine", "t-1"), (None, "t-1")]


async def test_s3_credentials_are_limited_to_their_buckets_and_tenants(
    tmp_path: Path, http: HttpClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fetched: list[str] = []

    def fake_get(credential: Mapping[str, str], bucket: str, key: str, sink: Any, timeout_s: float) -> str:
        fetched.append(f"{bucket}/{key}")
        sink.write(b"a,b\n")
        return "text/csv"

    monkeypatch.setattr(files, "_s3_get", fake_get)
    aws = {"aws_access_key_id": "AKIA", "aws_secret_access_key": SECRET}
    credentials = {"aws": {**aws, "buckets": "reports"}, "aws_beta": {**aws, "tenants": "beta"}}
    services = OpServices(storage_root=tmp_path, credentials=credentials, http=http)
    ctx = ctx_for(tmp_path, services)
    with pytest.raises(
        PermissionDeniedError, match="credential set 'aws' may not be used for bucket 'other'"
    ):
        await run("file_download", {"url": "s3://other/data.csv", "auth": "aws"}, ctx)
    with pytest.raises(PermissionDeniedError, match="'aws_beta' may not be used by tenant 'acme'") as err:
        await run("file_download", {"url": "s3://reports/data.csv", "auth": "aws_beta"}, ctx)
    assert fetched == []
    no_secret_anywhere(err.value, caplog)
    out = await run("file_download", {"url": "s3://reports/data.csv", "auth": "aws"}, ctx)
    assert fetched == ["reports/data.csv"] and out["size"] == 4


# -- S3 has its own bounded thread pool --------------------------------------------------------------------


async def test_s3_downloads_do_not_starve_the_default_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    running: set[str] = set()
    most = 0
    lock = threading.Lock()

    def slow_get(credential: Mapping[str, str], bucket: str, key: str, sink: Any, timeout_s: float) -> str:
        nonlocal most
        name = threading.current_thread().name
        with lock:
            running.add(name)
            most = max(most, len(running))
        time.sleep(0.4)  # a slow GetObject stream
        with lock:
            running.discard(name)
        assert name.startswith("openclaw-s3")
        sink.write(b"x")
        return "text/plain"

    monkeypatch.setattr(files, "_s3_get", slow_get)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(2))  # a small default pool, so two downloads could fill it
    http = HttpClient(s3_max_threads=2)
    services = OpServices(storage_root=tmp_path, credentials={"aws": {"aws_access_key_id": "k"}}, http=http)
    ctx = ctx_for(tmp_path, services)
    downloads = [
        asyncio.create_task(run("file_download", {"url": f"s3://b/{i}.txt", "auth": "aws"}, ctx))
        for i in range(4)
    ]
    await asyncio.sleep(0.1)
    # What DNS lookups and file operations use is still free while the downloads run.
    start = time.perf_counter()
    await asyncio.wait_for(asyncio.to_thread(lambda: None), timeout=0.3)
    assert time.perf_counter() - start < 0.3
    assert all(d["size"] == 1 for d in await asyncio.gather(*downloads))
    assert most == 2  # bounded by s3_max_threads

    pool = http._s3_pool
    assert pool is not None
    await http.close()
    assert http._s3_pool is None
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(lambda: None)


# -- file_read: bounded, and off the event loop ------------------------------------------------------------


async def test_file_read_is_capped_at_the_output_limit(tmp_path: Path) -> None:
    cap = 4096  # the executor's max_output_bytes, as the bootstrap passes it
    ctx = ctx_for(tmp_path, OpServices(storage_root=tmp_path, max_output_bytes=cap))
    (tmp_path / TENANT).mkdir()
    (tmp_path / TENANT / "big.txt").write_bytes(b"x" * (cap + 1))
    (tmp_path / TENANT / "ok.txt").write_bytes(b"x" * cap)
    with pytest.raises(PayloadTooLargeError, match=f"larger than {cap} bytes"):
        await run("file_read", {"path": "big.txt", "max_bytes": 100 * 1024 * 1024}, ctx)
    with pytest.raises(PayloadTooLargeError, match="larger than 10 bytes"):
        await run("file_read", {"path": "ok.txt", "max_bytes": 10}, ctx)
    assert (await run("file_read", {"path": "ok.txt"}, ctx))["size"] == cap


@pytest.mark.parametrize("fmt", ["json", "text", "base64"])
async def test_file_read_decodes_hashes_and_parses_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    loop_thread = threading.current_thread()
    threads: list[threading.Thread] = []

    def spy(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            threads.append(threading.current_thread())
            return fn(*args, **kwargs)

        return wrapper

    # files uses these modules' functions; patching the modules is how the spies see its calls.
    monkeypatch.setattr(json, "loads", spy(json.loads))
    monkeypatch.setattr(hashlib, "sha256", spy(hashlib.sha256))
    monkeypatch.setattr(base64, "b64encode", spy(base64.b64encode))
    (tmp_path / TENANT).mkdir()
    (tmp_path / TENANT / "d.json").write_text('{"a": [1, 2]}')
    ctx = ctx_for(tmp_path, OpServices(storage_root=tmp_path))
    out = await run("file_read", {"path": "d.json", "format": fmt}, ctx)
    assert out["size"] == 13
    assert threads and loop_thread not in threads


# -- SSRF guard: IPv6 forms that embed IPv4, and non-unicast ranges ----------------------------------------


def _teredo(client: str) -> str:
    """A Teredo address (server 65.54.227.120) whose obfuscated client is the given IPv4 address."""
    obfuscated = int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    return str(ipaddress.IPv6Address((0x2001_0000_4136_E378_8000_63BF << 32) | obfuscated))


@pytest.mark.parametrize(
    "address",
    [
        "::127.0.0.1",  # IPv4-compatible
        "::10.0.0.1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:169.254.169.254",
        "::ffff:0:127.0.0.1",  # IPv4-translated (SIIT)
        "64:ff9b::127.0.0.1",  # NAT64
        "64:ff9b::169.254.169.254",
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2002:c0a8:1::1",  # 6to4 of 192.168.0.1
        _teredo("127.0.0.1"),
        _teredo("10.0.0.1"),
        _teredo("93.184.216.34"),  # Teredo is refused whatever its client
        "fec0::1",  # site-local
        "::",
        "::1",
        "ff02::1",
        "ff0e::1",  # global-scope multicast
        "4000::1",  # reserved
        "240.0.0.1",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "2606:4700:4700::1111",
        "::ffff:93.184.216.34",
        "64:ff9b::93.184.216.34",
        "2002:5db8:d822::1",
    ],
)
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("host", ["[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::1]", "[fec0::1]"])
async def test_http_request_refuses_embedded_private_targets(tmp_path: Path, host: str) -> None:
    async with HttpClient(allow_private_network=False) as client:
        ctx = ctx_for(tmp_path, OpServices(storage_root=tmp_path, http=client))
        with pytest.raises(PermissionDeniedError, match="private"):
            await run("http_request", {"url": f"http://{host}:9/"}, ctx)


# -- sessions per network policy ---------------------------------------------------------------------------


class SlowSite:
    """A loopback site: /fast answers at once; /slow sends its headers and first bytes, then waits for ``go``."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.go = asyncio.Event()
        self.base = ""

    async def fast(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="fast")

    async def slow(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first,")
        self.arrived.set()
        await self.go.wait()
        await response.write(b"last")
        await response.write_eof()
        return response


@pytest.fixture
async def slow_site() -> AsyncIterator[SlowSite]:
    s = SlowSite()
    app = web.Application()
    app.router.add_get("/fast", s.fast)
    app.router.add_get("/slow", s.slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    s.base = f"http://127.0.0.1:{tcp._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield s
    s.go.set()
    await runner.cleanup()


def policies(n: int) -> list[NetworkPolicy]:
    """n distinct tenant network policies that all reach loopback (the client allows private networks)."""
    return [NetworkPolicy(allow_private=(f"10.{i}.0.0/16",)) for i in range(n)]


async def fetch(client: HttpClient, policy: NetworkPolicy, url: str) -> bytes:
    with tenant_network(policy):
        async with client.open("GET", url) as response:
            return await client.read(response)


async def test_sessions_past_max_sessions_are_evicted_and_closed(slow_site: SlowSite) -> None:
    a, b, c = policies(3)
    async with HttpClient(allow_private_network=True, max_sessions=2) as client:
        assert await fetch(client, a, f"{slow_site.base}/fast") == b"fast"
        first = client._sessions[a].session
        await fetch(client, b, f"{slow_site.base}/fast")
        assert await fetch(client, a, f"{slow_site.base}/fast") == b"fast"  # a is reused, now the most recent
        assert client._sessions[a].session is first
        await fetch(client, c, f"{slow_site.base}/fast")
        assert list(client._sessions) == [a, c]  # b, least recently used, was evicted
        assert not first.closed
        sessions = [entry.session for entry in client._sessions.values()]
    assert all(session.closed for session in sessions)


async def test_an_evicted_session_serves_its_request_to_the_end_then_closes(slow_site: SlowSite) -> None:
    a, b, c = policies(3)
    async with HttpClient(allow_private_network=True, max_sessions=2) as client:
        slow = asyncio.create_task(fetch(client, a, f"{slow_site.base}/slow"))
        await slow_site.arrived.wait()
        evicted = client._sessions[a].session
        await fetch(client, b, f"{slow_site.base}/fast")
        await fetch(client, c, f"{slow_site.base}/fast")
        assert a not in client._sessions
        assert not evicted.closed  # the slow request is still reading through it
        slow_site.go.set()
        assert await slow == b"first,last"
        assert evicted.closed
        # The policy comes back: a new session for it, and the least recently used one goes.
        assert await fetch(client, a, f"{slow_site.base}/fast") == b"fast"
        assert list(client._sessions) == [c, a]


async def test_closing_the_client_closes_evicted_sessions_still_in_use(slow_site: SlowSite) -> None:
    a, b = policies(2)
    client = HttpClient(allow_private_network=True, max_sessions=1, timeout_s=1.0)
    slow = asyncio.create_task(fetch(client, a, f"{slow_site.base}/slow"))
    await slow_site.arrived.wait()
    evicted = client._sessions[a].session
    await fetch(client, b, f"{slow_site.base}/fast")
    current = client._sessions[b].session
    assert not evicted.closed
    await client.close()
    assert evicted.closed and current.closed
    # Shutdown comes after the worker's drain; a request still running then fails (after its timeout:
    # aiohttp does not wake a reader whose session is closed) rather than finishing on a closed session.
    with pytest.raises((UnavailableError, TimeoutError_)):
        await slow


def test_max_sessions_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_sessions must be at least 1"):
        HttpClient(max_sessions=0)
