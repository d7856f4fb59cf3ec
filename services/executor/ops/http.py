"""HTTP operations, and the guarded client every outbound HTTP call of a step goes through.

SSRF protection: a target that is (or resolves to) a loopback, private, link-local, multicast or
otherwise non-global address is refused unless the executor's settings allow private networks.
Names are checked inside the connector's resolver, so the address checked is the address connected
to (no DNS-rebinding gap), and each redirect is checked again. IPv6 addresses that embed an IPv4
address (mapped, compatible, NAT64, 6to4) are judged by that IPv4 address; Teredo, site-local and
local-use NAT64 addresses are refused outright.

Tenant network policy: inside ``tenant_network(policy)`` (the executor's governance wraps every operation in
it) the tenant's NetworkPolicy applies on top: private ranges only if the tenant lists them (or the executor
allows private networks), and only ``allowed_hosts`` when it names some; checked at the same places, redirects
included. Each distinct policy gets its own connection pool and DNS cache, so a connection or a cached address
one tenant may use is never handed to another tenant's request. The client keeps the sessions of the
``max_sessions`` policies used most recently; an evicted session is closed once no request is using it.

Credentials: headers from a credential set, and any Authorization, Proxy-Authorization or Cookie header,
are sent to the first URL's origin only; a redirect to another scheme, host or port drops them.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import functools
import ipaddress
import json
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TypeVar

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver
from pydantic import Field, field_validator, model_validator
from yarl import URL

from services.common.breaker import AsyncBreaker
from services.common.errors import (
    CallerTimeoutError,
    InvalidInputError,
    NotFoundError,
    OpenClawError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TimeoutError_,
    UnavailableError,
)
from services.common.hop import Hop
from services.common.tenants import NetworkPolicy
from services.executor.context import OpContext
from services.executor.expressions import OPEN
from services.executor.ops.base import Params, operation, scoped_credential

HOP_NAME = "executor.http"
# Headers that carry a caller's identity: never forwarded when a redirect leaves the origin.
_IDENTITY_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
T = TypeVar("T")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TEXTUAL = (
    "text/",
    "application/json",
    "application/xml",
    "application/yaml",
    "application/csv",
    "+json",
    "+xml",
)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_UNRESTRICTED = NetworkPolicy()
# The network policy of the tenant whose operation is running (None: the executor's SSRF guard alone).
_NETWORK: ContextVar[NetworkPolicy | None] = ContextVar("openclaw_tenant_network", default=None)


@contextmanager
def tenant_network(policy: NetworkPolicy | None) -> Iterator[None]:
    """HTTP calls made inside the block (and tasks it starts) honour this tenant network policy."""
    token = _NETWORK.set(None if policy is None or policy == _UNRESTRICTED else policy)
    try:
        yield
    finally:
        _NETWORK.reset(token)


class BlockedAddressError(OSError):
    """The target resolves only to addresses this executor may not reach."""


# IPv6 prefixes that carry an IPv4 address in their last 32 bits: IPv4-compatible (::a.b.c.d, deprecated),
# IPv4-translated (SIIT) and NAT64 (well-known prefix). The target is really that IPv4 address.
_EMBEDS_V4_LOW32 = (
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
    ipaddress.IPv6Network("64:ff9b::/96"),
)
# Local-use NAT64 (RFC 8215) may embed IPv4 at several offsets and is never a public target.
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, translated, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:  # 2002::/16: the IPv4 address is bits 16-48
        return ip.sixtofour
    if any(ip in net for net in _EMBEDS_V4_LOW32):  # also :: and ::1, which become 0.0.0.0 and 0.0.0.1
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Whether an address is globally routable unicast; an IPv6 address that embeds an IPv4 address is
    judged as that IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # Teredo (2001::/32) tunnels to the client it embeds through a relay: never a target.
        if ip.is_site_local or ip in _NAT64_LOCAL or ip.teredo is not None:
            return False
        ip = _embedded_ipv4(ip) or ip
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_url(url: URL, *, allow_private_network: bool, network: NetworkPolicy | None = None) -> None:
    """Refuse non-HTTP schemes and literal addresses the guard (and the tenant's ``network``) refuse before any
    connection is made."""
    if url.scheme not in ("http", "https"):
        raise InvalidInputError(f"url: only http and https are supported, not {url.scheme or 'none'!r}")
    if not url.host:
        raise InvalidInputError(f"url: {url} has no host")
    ip = _literal_ip(url.host)
    if ip is None:
        if network is not None and network.allowed_hosts and not _may_match(network, url.host):
            raise PermissionDeniedError(
                f"url: {url.host} is not among this tenant's allowed hosts", host=url.host
            )
        return
    if network is not None:
        if not network.allows(url.host, str(ip), public=allow_private_network or is_public(ip)):
            raise PermissionDeniedError(
                f"url: {url.host} is not allowed by this tenant's network policy", host=url.host
            )
    elif not allow_private_network and not is_public(ip):
        raise PermissionDeniedError(
            f"url: {url.host} is a loopback, private or link-local address; this executor does not "
            "allow private network targets",
            host=url.host,
        )


def _may_match(network: NetworkPolicy, host: str) -> bool:
    """Whether a host name can pass ``allowed_hosts`` (a CIDR entry is judged on the resolved address)."""
    name = host.lower().rstrip(".")
    return any("/" in p or fnmatch.fnmatchcase(name, p.lower()) for p in network.allowed_hosts)


class _GuardedResolver(ThreadedResolver):
    """Resolves names, then keeps only addresses the guard and the tenant's network policy allow."""

    def __init__(self, allow_private_network: bool, network: NetworkPolicy | None = None) -> None:
        super().__init__()
        self._allow = allow_private_network
        self._network = network

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await super().resolve(host, port, family)
        network = self._network
        if network is None and self._allow:
            return results
        allowed = []
        for result in results:
            ip = _literal_ip(str(result["host"]))
            if ip is None:
                continue
            if network is None:
                ok = is_public(ip)
            else:
                ok = network.allows(host, str(ip), public=self._allow or is_public(ip))
            if ok:
                allowed.append(result)
        if not allowed:
            if network is not None:
                raise BlockedAddressError(
                    f"{host} resolves to no address this tenant's network policy allows"
                )
            raise BlockedAddressError(
                f"{host} resolves to loopback, private or link-local addresses only; this executor does "
                "not allow private network targets"
            )
        return allowed


def status_error(status: int, url: str, snippet: str = "") -> OpenClawError:
    """The error for an HTTP error status: 429 and 5xx are worth a retry, other 4xx are not."""
    message = f"{url} answered HTTP {status}" + (f": {snippet}" if snippet else "")
    if status == 429:
        return ResourceExhaustedError(message, http_status=status)
    if status == 408 or status >= 500:
        return UnavailableError(message, http_status=status)
    if status in (404, 410):
        return NotFoundError(message, http_status=status)
    if status in (401, 403):
        return PermissionDeniedError(message, http_status=status)
    return InvalidInputError(message, http_status=status)


def auth_headers(credential: Mapping[str, str]) -> dict[str, str]:
    """Headers for a named credential set: ``bearer_token``, or ``username`` and ``password``."""
    if "bearer_token" in credential:
        return {"Authorization": f"Bearer {credential['bearer_token']}"}
    if "username" in credential:
        basic = aiohttp.BasicAuth(credential["username"], credential.get("password", ""))
        return {"Authorization": basic.encode()}
    raise InvalidInputError("auth: this credential set has no bearer_token or username for HTTP")


class _PolicySession:
    """One network policy's session and how many requests are using it."""

    __slots__ = ("evicted", "session", "users")

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.users = 0
        self.evicted = False


class HttpClient:
    """Pooled aiohttp sessions (one per tenant network policy) with the SSRF guard, size limits and a breaker
    per target host."""

    def __init__(
        self,
        *,
        allow_private_network: bool = False,
        max_bytes: int = 10 * 1024 * 1024,
        timeout_s: float = 30.0,
        max_redirects: int = 5,
        max_hosts: int = 256,
        s3_max_threads: int = 8,
        max_sessions: int = 64,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions}")
        self.allow_private_network = allow_private_network
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self.s3_max_threads = s3_max_threads
        self._max_hosts = max_hosts
        self.max_sessions = max_sessions
        # One session per tenant network policy in use (None: the guard alone), each with its own pool and DNS
        # cache: a connection or cached address checked for one policy is never reused under another. Least
        # recently used first; past max_sessions the oldest is evicted, so policies that come and go (many
        # tenants, edited policies) do not keep connectors and DNS caches open for ever.
        self._sessions: OrderedDict[NetworkPolicy | None, _PolicySession] = OrderedDict()
        # Evicted sessions still serving a request: closed by the last one out (or by close()).
        self._retiring: set[_PolicySession] = set()
        # boto3 blocks for a whole transfer; its own bounded pool keeps the loop's default executor
        # (DNS lookups, file operations) free however many S3 downloads run.
        self._s3_pool: ThreadPoolExecutor | None = None
        # A failing site must not open the breaker for every other site; the cache bounds the breakers.
        self._hops: OrderedDict[str, Hop] = OrderedDict()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _lease(self, network: NetworkPolicy | None) -> _PolicySession:
        """The policy's session, counted as in use until ``_release``; evicts (and closes, if idle) the least
        recently used sessions past max_sessions."""
        entry = self._sessions.get(network)
        if entry is not None and not entry.session.closed:
            self._sessions.move_to_end(network)
        else:
            connector = aiohttp.TCPConnector(
                resolver=_GuardedResolver(self.allow_private_network, network), limit=200, ttl_dns_cache=30
            )
            entry = self._sessions[network] = _PolicySession(
                aiohttp.ClientSession(
                    connector=connector,
                    headers={"User-Agent": "openclaw-executor"},
                    auto_decompress=True,
                    trust_env=False,
                    # Sessions outlive one tenant's request: a cookie received must never ride along later.
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
            )
        entry.users += 1
        idle: list[aiohttp.ClientSession] = []
        while len(self._sessions) > self.max_sessions:
            _, evicted = self._sessions.popitem(last=False)
            evicted.evicted = True
            if evicted.users:  # a request is still reading through it: the last one out closes it
                self._retiring.add(evicted)
            else:
                idle.append(evicted.session)
        try:
            for session in idle:
                await _close_session(session)
        except BaseException:  # cancelled: the caller never gets the lease to release
            await self._release(entry)
            raise
        return entry

    async def _release(self, entry: _PolicySession) -> None:
        entry.users -= 1
        if entry.evicted and entry.users == 0 and entry in self._retiring:
            self._retiring.discard(entry)
            await _close_session(entry.session)

    async def run_s3(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking S3 call in the client's S3 thread pool (at most s3_max_threads at once)."""
        if self._s3_pool is None:
            self._s3_pool = ThreadPoolExecutor(self.s3_max_threads, thread_name_prefix="openclaw-s3")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._s3_pool, functools.partial(fn, *args))

    def hop(self, host: str) -> Hop:
        """The hop (metrics and spans as "executor.http", breaker per host) for a target."""
        hop = self._hops.get(host)
        if hop is None:
            hop = Hop(HOP_NAME, breaker=AsyncBreaker(f"{HOP_NAME}:{host}", fail_max=5, reset_timeout=30.0))
            self._hops[host] = hop
            while len(self._hops) > self._max_hosts:
                _, evicted = self._hops.popitem(last=False)
                evicted.breaker.release()
        else:
            self._hops.move_to_end(host)
        return hop

    @asynccontextmanager
    async def open(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        credential_headers: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
        json_body: Any = None,
        data: bytes | str | None = None,
        timeout_s: float | None = None,
        follow_redirects: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request (following checked redirects) and yield the response; errors become ours.

        ``credential_headers`` (and identity headers in ``headers``) go to the first URL's origin only.
        """
        current = URL(url)
        network = _NETWORK.get()
        check_url(current, allow_private_network=self.allow_private_network, network=network)
        assert current.host is not None
        origin = _origin(current)
        from_credential = {k.lower() for k in credential_headers or {}}
        private = from_credential | _IDENTITY_HEADERS
        sent = {k: v for k, v in (headers or {}).items() if k.lower() not in from_credential}
        sent.update(credential_headers or {})
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        attrs = {
            "http.request.method": method,
            "url.full": str(current.with_query(None).with_user(None)),
            "server.address": current.host,
        }
        # One session for the whole redirect chain, held until the response is released: an eviction
        # meanwhile must not close it under this request.
        lease = await self._lease(network)
        try:
            async with self.hop(current.host).guard(f"HTTP {method}", **attrs) as span:
                try:
                    response = None
                    for hop_no in range(self.max_redirects + 1):
                        check_url(current, allow_private_network=self.allow_private_network, network=network)
                        if _origin(current) != origin:  # once the chain leaves the origin, for good
                            sent = {k: v for k, v in sent.items() if k.lower() not in private}
                        response = await lease.session.request(
                            method,
                            current,
                            headers=sent,
                            # The query belongs to the first URL; a redirect's Location carries its own.
                            params=dict(query) if query and hop_no == 0 else None,
                            json=json_body,
                            data=data,
                            timeout=timeout,
                            allow_redirects=False,
                        )
                        location = response.headers.get("Location")
                        if not (follow_redirects and response.status in _REDIRECTS and location):
                            break
                        response.release()
                        current = response.url.join(URL(location))
                        if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                            method, json_body, data = "GET", None, None
                    else:
                        raise InvalidInputError(f"{url}: more than {self.max_redirects} redirects")
                    assert response is not None
                    span.set_attribute("http.response.status_code", response.status)
                    try:
                        yield response
                    finally:
                        response.release()
                except aiohttp.ClientConnectorError as exc:
                    if isinstance(exc.os_error, BlockedAddressError):
                        raise PermissionDeniedError(f"url: {exc.os_error}", host=current.host) from exc
                    raise UnavailableError(f"cannot connect to {current.host}: {exc.os_error}") from exc
                except TimeoutError as exc:
                    # A timeout the step chose below the default must not open the host's breaker for everyone.
                    cls = CallerTimeoutError if timeout_s and timeout_s < self.timeout_s else TimeoutError_
                    raise cls(
                        f"{current.host} did not answer within {timeout.total}s", host=current.host
                    ) from exc
                except aiohttp.ClientError as exc:
                    raise UnavailableError(f"HTTP request to {current.host} failed: {exc}") from exc
        finally:
            await self._release(lease)

    async def read(self, response: aiohttp.ClientResponse, max_bytes: int | None = None) -> bytes:
        """The body, refusing more than max_bytes (or the client's limit)."""
        limit = min(max_bytes or self.max_bytes, self.max_bytes)
        if response.content_length is not None and response.content_length > limit:
            raise PayloadTooLargeError(f"response is {response.content_length} bytes; the limit is {limit}")
        buf = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            buf += chunk
            if len(buf) > limit:
                raise PayloadTooLargeError(f"response is over the limit of {limit} bytes")
        return bytes(buf)

    async def close(self) -> None:
        """Close every session (requests still running on one fail) and the S3 thread pool."""
        entries = [*self._sessions.values(), *self._retiring]
        self._sessions, self._retiring = OrderedDict(), set()
        for entry in entries:
            entry.evicted = True  # a request still holding it must not close it again
            await _close_session(entry.session)
        if self._s3_pool is not None:
            # Transfers still running finish on their own threads; nothing new is started.
            self._s3_pool.shutdown(wait=False, cancel_futures=True)
            self._s3_pool = None
        # Let the connector's transports finish closing before the loop moves on.
        await asyncio.sleep(0)


async def _close_session(session: aiohttp.ClientSession) -> None:
    """Close a session even if the task closing it is cancelled meanwhile (a half-closed connector leaks)."""
    await asyncio.shield(session.close())


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme, (url.host or "").lower().rstrip("."), url.port


def is_textual(content_type: str) -> bool:
    ct = content_type.lower()
    return any(t in ct for t in _TEXTUAL)


class HttpRequestParams(Params):
    url: str = Field(description="http:// or https:// URL.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str | int | float | bool] = Field(default_factory=dict)
    json_body: Any = Field(None, alias="json", description="A JSON body (sets Content-Type).")
    body: str | None = Field(None, description="A text body.")
    auth: str | None = Field(None, description="Name of a credential set from the executor's settings.")
    timeout_s: float | None = Field(None, gt=0, le=600)
    max_bytes: int | None = Field(None, gt=0)
    response: Literal["auto", "json", "text", "base64"] = "auto"
    raise_for_status: bool = Field(True, description="Fail the step on HTTP 4xx/5xx (429/5xx are retryable).")
    follow_redirects: bool = True

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if OPEN not in value and not value.lower().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> HttpRequestParams:
        if self.json_body is not None and self.body is not None:
            raise ValueError("give json or body, not both")
        return self


@operation("http_request", category="http", params=HttpRequestParams)
async def http_request(p: HttpRequestParams, ctx: OpContext) -> dict[str, Any]:
    """Send an HTTP request; returns status, final url, headers, content_type, size and body (JSON when the
    response is JSON, else text, or base64 for binary bodies)."""
    client = ctx.services.require_http()
    credential_headers = auth_headers(scoped_credential(ctx, p.auth, host=URL(p.url).host)) if p.auth else {}
    query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in p.query.items()}
    async with client.open(
        p.method,
        p.url,
        headers=p.headers,
        credential_headers=credential_headers,
        query=query,
        json_body=p.json_body,
        data=p.body,
        timeout_s=p.timeout_s,
        follow_redirects=p.follow_redirects,
    ) as response:
        raw = await client.read(response, p.max_bytes)
        if p.raise_for_status and response.status >= 400:
            raise status_error(response.status, str(response.url), raw[:200].decode("utf-8", "replace"))
        content_type = response.headers.get("Content-Type", "")
        return {
            "status": response.status,
            "url": str(response.url),
            "headers": {k.lower(): v for k, v in response.headers.items()},
            "content_type": content_type,
            "size": len(raw),
            "body": _decode_body(raw, content_type, p.response, response.charset or "utf-8"),
        }


def _decode_body(raw: bytes, content_type: str, mode: str, charset: str) -> Any:
    if mode == "base64":
        return base64.b64encode(raw).decode()
    if mode == "json" or (mode == "auto" and "json" in content_type.lower()):
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            if mode == "json":
                raise InvalidInputError(f"response is not valid JSON: {exc}") from exc
    if mode == "text" or is_textual(content_type) or not content_type:
        try:
            return raw.decode(charset)
        except (UnicodeDecodeError, LookupError):
            if mode == "text":
                return raw.decode("utf-8", "replace")
    return base64.b64encode(raw).decode()


OPERATIONS = (http_request,)
