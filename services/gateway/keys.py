"""Token signing keys from a JWKS document (URL or file), refreshed in the background so lookups never block.

Identity providers publish a new key before they sign with it, so a periodic refresh follows rotation; a token
naming a key id we do not know yet triggers one early refresh (at most every ``min_refresh_s``) and is refused
meanwhile with a reason, never by fetching on the request path (FACTS.md: PyJWKClient blocks the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from jwt import PyJWK

log = logging.getLogger(__name__)

# Which JWK key types may verify which algorithms: a key never verifies another family's signatures.
FAMILIES: dict[str, frozenset[str]] = {
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC": frozenset({"ES256", "ES384", "ES512"}),
    "OKP": frozenset({"EdDSA"}),
}
ASYMMETRIC = frozenset().union(*FAMILIES.values())
MAX_DOCUMENT_BYTES = 1 << 20

Fetch = Callable[[str], Awaitable[bytes]]


class KeyLookupError(Exception):
    """No key can verify this token; ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class JwksKeys:
    """The current key set by key id; ``start`` loads it (start-up fails if it cannot), then it refreshes."""

    def __init__(
        self,
        source: str,
        *,
        refresh_s: float = 300.0,
        min_refresh_s: float = 30.0,
        timeout_s: float = 5.0,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._refresh_s = refresh_s
        self._min_refresh_s = min_refresh_s
        self._timeout_s = timeout_s
        self._fetch = fetch or self._default_fetch
        self._clock = clock
        self._keys: dict[str, dict[str, Any]] = {}
        self._last_refresh = float("-inf")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def start(self) -> None:
        """Load the key set once (raising if it cannot be read or is invalid), then keep it fresh."""
        await self.refresh()
        self._task = asyncio.create_task(self._refresher(), name="jwks-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def refresh(self) -> None:
        """Fetch and parse the document; the old set keeps serving unless the new one is valid."""
        self._last_refresh = self._clock()
        raw = await asyncio.wait_for(self._fetch(self._source), self._timeout_s)
        self._keys = parse_jwks(raw, self._source)

    def key(self, kid: str | None, alg: str) -> PyJWK:
        """The key that verifies a token with this header; a KeyLookupError saying why none does."""
        if kid is None:
            usable = [k for k in self._keys.values() if alg in FAMILIES.get(k.get("kty", ""), ())]
            if len(usable) != 1:
                raise KeyLookupError(
                    "unknown_key", "the token has no 'kid' header and the key set has several keys"
                )
            data = usable[0]
        else:
            found = self._keys.get(kid)
            if found is None:
                self._request_refresh()
                raise KeyLookupError("unknown_key", f"the token's signing key {kid!r} is not in the key set")
            data = found
        if alg not in FAMILIES.get(data.get("kty", ""), ()):
            raise KeyLookupError("invalid_algorithm", f"key {kid!r} ({data.get('kty')}) cannot verify {alg}")
        if data.get("alg") not in (None, alg):
            raise KeyLookupError(
                "invalid_algorithm", f"key {kid!r} is for {data['alg']}, the token says {alg}"
            )
        return PyJWK(data, algorithm=alg)

    def _request_refresh(self) -> None:
        if self._clock() - self._last_refresh >= self._min_refresh_s:
            self._wake.set()

    async def _refresher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._refresh_s)
            self._wake.clear()
            try:
                await self.refresh()
            except Exception as exc:  # a failed refresh keeps the old keys; log and try again later
                log.warning("JWKS refresh failed; keeping the current keys", extra={"error": str(exc)})

    async def _default_fetch(self, source: str) -> bytes:
        if not source.startswith(("https://", "http://")):
            path = Path(source.removeprefix("file://"))
            return await asyncio.to_thread(path.read_bytes)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.get(source) as response:
            if response.status != 200:
                raise ValueError(f"JWKS {source}: HTTP {response.status}")
            return await response.content.read(MAX_DOCUMENT_BYTES)


def parse_jwks(raw: bytes, source: str) -> dict[str, dict[str, Any]]:
    """Signature keys by kid; an invalid document is refused whole, with the reason."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"JWKS {source}: not JSON: {exc}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError(f"JWKS {source}: expected an object with a non-empty 'keys' list")
    out: dict[str, dict[str, Any]] = {}
    for i, key in enumerate(keys):
        if not isinstance(key, dict) or key.get("use", "sig") != "sig" or key.get("kty") not in FAMILIES:
            continue  # encryption keys and symmetric keys never verify our tokens
        if "d" in key:
            raise ValueError(f"JWKS {source}: keys[{i}] contains a private key; publish public keys only")
        kid = key.get("kid") or f"#{i}"
        try:
            PyJWK(key)
        except jwt.PyJWTError as exc:
            raise ValueError(f"JWKS {source}: keys[{i}] ({kid}) is not a usable key: {exc}") from None
        out[str(kid)] = key
    if not out:
        raise ValueError(f"JWKS {source}: no RSA, EC or OKP signature keys")
    return out
