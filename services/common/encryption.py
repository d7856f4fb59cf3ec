"""Encryption at rest: AES-256-GCM under per-tenant data keys, themselves wrapped by a master key.

Envelope encryption, as KMSs do it: each tenant has data keys (DEKs) that encrypt its data; Redis keeps them only
wrapped (encrypted) by a master key that lives in the process' settings (or a KMS in front of them). Rotating the
master key re-wraps the DEKs, a few bytes each, and never touches the data; rotating a tenant's DEK makes new
writes use a new key while old data still decrypts. Every ciphertext is bound to its tenant and to where it is
stored (the associated data), so a value copied to another task or tenant fails to decrypt instead of leaking.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from redis.asyncio import Redis

from services.common.errors import OpenClawError

TEXT_PREFIX = "enc:v1:"
BLOB_MAGIC = b"OCE1"
NONCE_BYTES = 12  # 96-bit random nonces: safe for far more messages per key than a tenant writes


class DecryptionError(OpenClawError):
    """Ciphertext that does not decrypt here: tampered, moved, or under a key this deployment lacks."""

    code = "decryption_failed"


class MasterKeys:
    """The master keys by id (32 bytes each, base64 in settings) and which one wraps new data keys."""

    def __init__(self, keys: Mapping[str, str], current: str) -> None:
        self._keys: dict[str, AESGCM] = {}
        for kid, encoded in keys.items():
            try:
                raw = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise ValueError(f"master key {kid!r}: not base64") from None
            if len(raw) != 32:
                raise ValueError(f"master key {kid!r}: must be 32 bytes (AES-256), got {len(raw)}")
            self._keys[kid] = AESGCM(raw)
        if current not in self._keys:
            raise ValueError(
                f"master key id {current!r} is not among the configured keys {sorted(self._keys)}"
            )
        self.current = current

    @staticmethod
    def generate() -> str:
        """A new master key, base64, for settings (``openclaw keys generate``)."""
        return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()

    def wrap(self, dek: bytes, context: bytes) -> dict[str, str]:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.current].encrypt(nonce, dek, context)
        return {"kek": self.current, "wrapped": base64.b64encode(nonce + sealed).decode()}

    def unwrap(self, record: Mapping[str, str], context: bytes) -> bytes:
        kek = record.get("kek", "")
        key = self._keys.get(kek)
        if key is None:
            raise DecryptionError(f"data key is wrapped by master key {kek!r}, which is not configured")
        blob = base64.b64decode(record["wrapped"])
        try:
            return key.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context)
        except InvalidTag:
            raise DecryptionError("a wrapped data key failed its integrity check") from None


class Keyring:
    """Per-tenant data keys in Redis (wrapped), unwrapped once per process and kept in memory."""

    def __init__(self, redis: Redis, namespace: str, master: MasterKeys) -> None:
        self._redis = redis
        self._ns = namespace
        self._master = master
        self._deks: dict[tuple[str, str], AESGCM] = {}
        self._current: dict[str, str] = {}

    def _key(self, tenant: str) -> str:
        return f"{self._ns}:deks:{tenant}"

    def _context(self, tenant: str, dek_id: str) -> bytes:
        return f"{self._ns}:dek:{tenant}:{dek_id}".encode()

    async def current(self, tenant: str) -> tuple[str, AESGCM]:
        """The tenant's data key for new writes, created on first use (one winner across replicas)."""
        dek_id = self._current.get(tenant)
        if dek_id is None:
            dek_id = await self._redis.hget(self._key(tenant), "current")  # type: ignore[misc]
            if dek_id is None:
                dek_id = await self._create(tenant, set_current_if_absent=True)
            self._current[tenant] = str(dek_id)
        return str(dek_id), await self.data_key(tenant, str(dek_id))

    async def rotate_data_key(self, tenant: str) -> str:
        """Start using a new data key for the tenant's new writes; old data keeps its key."""
        dek_id = await self._create(tenant, set_current_if_absent=False)
        await self._redis.hset(self._key(tenant), "current", dek_id)  # type: ignore[misc]
        self._current[tenant] = dek_id
        return dek_id

    async def rewrap(self, tenant: str) -> int:
        """Re-wrap every data key of the tenant under the current master key; the data is untouched."""
        records: dict[str, str] = await self._redis.hgetall(self._key(tenant))  # type: ignore[misc]
        changed = 0
        for dek_id, raw in records.items():
            if dek_id == "current":
                continue
            record = json.loads(raw)
            if record["kek"] == self._master.current:
                continue
            context = self._context(tenant, dek_id)
            dek = self._master.unwrap(record, context)
            await self._redis.hset(self._key(tenant), dek_id, json.dumps(self._master.wrap(dek, context)))  # type: ignore[misc]
            changed += 1
        return changed

    async def _create(self, tenant: str, *, set_current_if_absent: bool) -> str:
        dek_id = secrets.token_hex(4)
        dek = AESGCM.generate_key(bit_length=256)
        record = json.dumps(self._master.wrap(dek, self._context(tenant, dek_id)))
        await self._redis.hset(self._key(tenant), dek_id, record)  # type: ignore[misc]
        if set_current_if_absent:
            # Two replicas may race to create the first key: HSETNX picks one, the loser's key is simply unused.
            await self._redis.hsetnx(self._key(tenant), "current", dek_id)  # type: ignore[misc]
            winner = await self._redis.hget(self._key(tenant), "current")  # type: ignore[misc]
            return str(winner)
        return dek_id

    async def data_key(self, tenant: str, dek_id: str) -> AESGCM:
        """One of the tenant's data keys, unwrapped (cached: unwrapping costs a Redis read)."""
        cached = self._deks.get((tenant, dek_id))
        if cached is not None:
            return cached
        raw = await self._redis.hget(self._key(tenant), dek_id)  # type: ignore[misc]
        if raw is None:
            raise DecryptionError(f"tenant {tenant!r} has no data key {dek_id!r}")
        aes = AESGCM(self._master.unwrap(json.loads(raw), self._context(tenant, dek_id)))
        self._deks[(tenant, dek_id)] = aes
        return aes


class Sealer:
    """Encrypts and decrypts a tenant's values (text for Redis fields, bytes for files)."""

    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring

    async def seal(self, tenant: str, plaintext: bytes, where: str) -> bytes:
        """``OCE1`` | dek id length | dek id | nonce | ciphertext+tag, bound to tenant and ``where``."""
        dek_id, aes = await self._keyring.current(tenant)
        nonce = os.urandom(NONCE_BYTES)
        sealed = aes.encrypt(nonce, plaintext, _aad(tenant, where))
        ident = dek_id.encode()
        return BLOB_MAGIC + bytes([len(ident)]) + ident + nonce + sealed

    async def open(self, tenant: str, blob: bytes, where: str) -> bytes:
        if not blob.startswith(BLOB_MAGIC) or len(blob) < len(BLOB_MAGIC) + 1:
            raise DecryptionError(f"{where}: not an encrypted value")
        n = blob[len(BLOB_MAGIC)]
        start = len(BLOB_MAGIC) + 1
        dek_id = blob[start : start + n].decode(errors="replace")
        body = blob[start + n :]
        aes = await self._keyring.data_key(tenant, dek_id)
        try:
            return aes.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], _aad(tenant, where))
        except InvalidTag:
            raise DecryptionError(
                f"{where}: failed its integrity check (altered, or stored elsewhere)"
            ) from None

    async def seal_text(self, tenant: str, text: str, where: str) -> str:
        """A Redis-safe string: ``enc:v1:`` + base64 of the sealed bytes."""
        return TEXT_PREFIX + base64.b64encode(await self.seal(tenant, text.encode(), where)).decode()

    async def open_text(self, tenant: str, value: str, where: str) -> str:
        if not value.startswith(TEXT_PREFIX):
            raise DecryptionError(f"{where}: not an encrypted value")
        return (await self.open(tenant, base64.b64decode(value[len(TEXT_PREFIX) :]), where)).decode()


def _aad(tenant: str, where: str) -> bytes:
    return f"{tenant}\x00{where}".encode()
