"""A JWKS key set served over real HTTP: loaded at start, rotated keys picked up in the background."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from services.gateway.auth import AuthError, TokenVerifier
from services.gateway.keys import JwksKeys
from tests.unit.test_jwks import RSA_KEY, RSA_OTHER, document, jwk, token

pytestmark = pytest.mark.integration


class Idp:
    """A loopback identity provider publishing a JWKS document the test can change."""

    def __init__(self) -> None:
        self.body = document(jwk(RSA_KEY, "old"))
        self.status = 200
        self.hits = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=self.body, status=self.status, content_type="application/json")


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    server = Idp()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    yield server
    await runner.cleanup()


async def wait_for(condition: object, what: str) -> None:
    for _ in range(200):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def test_rotation_is_picked_up_without_a_restart(idp: Idp) -> None:
    keys = JwksKeys(idp.url, refresh_s=3600, min_refresh_s=0)
    await keys.start()
    try:
        verifier = TokenVerifier(jwks=keys, algorithms=("RS256",), leeway_s=0)
        assert verifier.verify(token(RSA_KEY, "RS256", "old")).tenant == "acme"
        idp.body = document(jwk(RSA_KEY, "old"), jwk(RSA_OTHER, "new"))
        fresh = token(RSA_OTHER, "RS256", "new")
        with pytest.raises(AuthError, match="'new' is not in the key set"):
            verifier.verify(fresh)  # refused at once, never fetched on the request path ...
        await wait_for(
            lambda: "new" in keys.key_ids, "the background refresh"
        )  # ... but it wakes the refresher
        assert verifier.verify(fresh).subject == "bob"
    finally:
        await keys.stop()


async def test_a_failed_refresh_keeps_the_old_keys_and_start_up_fails_loudly(idp: Idp) -> None:
    keys = JwksKeys(idp.url, refresh_s=3600, min_refresh_s=0)
    await keys.start()
    try:
        idp.status = 503
        hits = idp.hits
        with pytest.raises(Exception, match="not in the key set"):
            keys.key("nope", "RS256")
        await wait_for(lambda: idp.hits > hits, "the refresh attempt")
        assert keys.key_ids == {"old"}  # still serving
    finally:
        await keys.stop()
    idp.body = json.dumps({"keys": []}).encode()
    idp.status = 200
    broken = JwksKeys(idp.url)
    with pytest.raises(ValueError, match="non-empty 'keys'"):
        await broken.start()
    await broken.stop()
