"""API keys: shown once, stored hashed, verified to their tenant, listed and revoked per tenant only."""

from __future__ import annotations

import hashlib

import pytest
from redis.asyncio import Redis

from services.common.errors import InvalidInputError, NotFoundError
from services.gateway.apikeys import ApiKeyStore, looks_like_api_key
from services.gateway.auth import AuthError

pytestmark = pytest.mark.integration


async def test_a_created_key_verifies_to_its_tenant_and_only_its_hash_is_stored(
    redis: Redis, namespace: str
) -> None:
    store = ApiKeyStore(redis, namespace, cache_s=0)
    info, plaintext = await store.create("acme", "ci bot", roles=["operator"])
    assert looks_like_api_key(plaintext) and plaintext.startswith(f"ock_{info.key_id}_")
    principal = await store.verify(plaintext)
    assert (principal.tenant, principal.subject, principal.roles) == (
        "acme",
        f"apikey:{info.key_id}",
        ("operator",),
    )
    stored = await redis.hgetall(f"{namespace}:apikey:{info.key_id}")
    assert stored["hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    everything = ""
    for key in await redis.keys(f"{namespace}:*"):
        kind = await redis.type(key)
        values = (await redis.hgetall(key)).values() if kind == "hash" else await redis.smembers(key)
        everything += key + "".join(values)
    # The secret is nowhere (it may itself hold "_": take all of it after the id, not the last "_" piece).
    secret = plaintext.removeprefix(f"ock_{info.key_id}_")
    assert len(secret) >= 20 and info.key_id in everything and secret not in everything


async def test_wrong_malformed_and_revoked_keys_are_refused(redis: Redis, namespace: str) -> None:
    store = ApiKeyStore(redis, namespace, cache_s=0)
    info, plaintext = await store.create("acme", "k")
    forged = plaintext[:-4] + ("AAAA" if not plaintext.endswith("AAAA") else "BBBB")
    with pytest.raises(AuthError) as wrong:
        await store.verify(forged)
    assert wrong.value.reason == "invalid_api_key"
    with pytest.raises(AuthError) as bad:
        await store.verify("ock_nothex_x")
    assert bad.value.reason == "malformed"
    await store.revoke("acme", info.key_id)
    with pytest.raises(AuthError, match="unknown or revoked"):
        await store.verify(plaintext)


async def test_tenants_see_and_revoke_only_their_own_keys(redis: Redis, namespace: str) -> None:
    store = ApiKeyStore(redis, namespace)
    mine, _ = await store.create("acme", "first", roles=["admin"])
    theirs, theirs_plain = await store.create("globex", "other")
    assert [k.key_id for k in await store.list_keys("acme")] == [mine.key_id]
    listed = (await store.list_keys("acme"))[0].to_dict()
    assert set(listed) == {"id", "name", "roles", "created_ms", "prefix"}  # no hash, no secret
    with pytest.raises(NotFoundError):
        await store.revoke("acme", theirs.key_id)
    assert (await store.verify(theirs_plain)).tenant == "globex"  # still valid: acme could not revoke it


async def test_revocation_clears_this_replicas_cache(redis: Redis, namespace: str) -> None:
    store = ApiKeyStore(redis, namespace, cache_s=3600)
    info, plaintext = await store.create("acme", "cached")
    assert (await store.verify(plaintext)).tenant == "acme"
    await store.revoke("acme", info.key_id)
    with pytest.raises(AuthError):
        await store.verify(plaintext)


@pytest.mark.parametrize(
    ("name", "roles"), [("", ["admin"]), ("x" * 101, ["admin"]), ("ok", ["root"]), ("ok", [])]
)
async def test_bad_create_requests_name_the_field(
    redis: Redis, namespace: str, name: str, roles: list[str]
) -> None:
    with pytest.raises(InvalidInputError, match=r"name|roles"):
        await ApiKeyStore(redis, namespace).create("acme", name, roles)
